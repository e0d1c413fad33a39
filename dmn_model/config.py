"""The DMN model configuration: one frozen dataclass, two presets.

The trainer maps its CLI flags onto these fields, stores ``dataclasses.asdict(config)`` in every
checkpoint and rebuilds the model from it with :meth:`DMNConfig.from_dict`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

#: ``backbone`` value that selects our small CNN (see ``backbone.TinyCNN``) instead of a timm model.
TINY_CNN = "tiny_cnn"
UPSAMP_MODES = ("bilinear", "nearest")
UPSAMP_ACTIVATIONS = ("none", "relu", "prelu")


@dataclass(frozen=True)
class DMNConfig:
    """Every architectural knob of the DMN. Defaults are the ``paper`` preset.

    Names follow the original code's flags where there was one (``--num-filters`` →
    ``num_filters``, ``--upsamp-amplification`` → ``upsamp_amplification``, ``--dmn-freeze`` →
    ``freeze``).
    """

    # Visual module: any timm model name (created with ``features_only=True``), or ``tiny_cnn``.
    backbone: str = "dpn92"
    # Widths of the five stages of ``tiny_cnn``; ignored for timm backbones.
    tiny_cnn_channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    # Stride of ``tiny_cnn``'s last stage (8, 16 or 32): stages halve the resolution until it is
    # reached, later ones keep it. The multimodal grid is input_size / this per side.
    tiny_cnn_output_stride: int = 32
    # Apply the backbone's final norm + activation to the top feature where timm's features_only
    # model leaves it out (dpn92's conv5_bn_ac, as the original DMN; see
    # backbone.FINAL_NORM_MODULES). False in configs written before this field existed.
    # Where the backbone's starting weights come from is not architecture: it is the trainer's
    # ``--pretrained`` (TrainConfig.pretrained), recorded in checkpoints as ``backbone_weights``.
    backbone_final_norm: bool = True
    # The 8 coordinate maps span each image's own region of the padded batch (as the original's
    # unpadded batch of one), not the padded square, so a cell's coordinates do not depend on the
    # image's aspect ratio. False in configs written before this field existed.
    coords_over_image: bool = True
    # Language module: word embedding size, recurrent hidden size and depth.
    emb_size: int = 1000
    hid_size: int = 1000
    lang_layers: int = 3
    # Synthesis module: K dynamic filters per word, computed from [h_t, e_t] (mix_we) or h_t alone.
    num_filters: int = 10
    mix_we: bool = True
    # 1x1 fusion conv width, then the multimodal recurrent net over words at every pixel.
    mixed_size: int = 1000
    hid_mixed_size: int = 1005
    mixed_layers: int = 3
    # nn.LSTM instead of SRU for both recurrent nets (original ``--lstm``).
    lstm: bool = False
    # False: output the low-res map (at the top feature's stride, 32 for timm backbones);
    # True: the upsampling module up to full resolution.
    high_res: bool = False
    # Upsampling module: one stage per factor 2 of ``upsamp_amplification`` (32 = 5 stages to
    # stride 1); stage i has ``upsamp_channels[i]`` output channels. Output is resized
    # bilinearly to the input size when the stages stop short of stride 1.
    upsamp_channels: tuple[int, ...] = (512, 256, 128, 64, 32)
    upsamp_amplification: int = 32
    upsamp_kernel: int = 3
    upsamp_mode: str = "bilinear"
    # The original stacks the upsampling convs with no non-linearity (its PReLU was optional).
    upsamp_activation: str = "none"
    # Train only the upsampling module; everything else frozen and kept in eval mode.
    freeze: bool = False

    def __post_init__(self) -> None:
        positive = ("emb_size", "hid_size", "lang_layers", "num_filters", "mixed_size",
                    "hid_mixed_size", "mixed_layers", "upsamp_kernel")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DMNConfig.{name} must be a positive int, got {value!r}")
        for name in ("mix_we", "lstm", "high_res", "freeze", "backbone_final_norm",
                     "coords_over_image"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DMNConfig.{name} must be true or false, "
                                 f"got {getattr(self, name)!r}")
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"DMNConfig.backbone must be a timm model name or {TINY_CNN!r}, "
                             f"got {self.backbone!r}")
        for name in ("tiny_cnn_channels", "upsamp_channels"):
            value = getattr(self, name)
            if not value or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0
                                    for c in value):
                raise ValueError(f"DMNConfig.{name} must be a non-empty list of positive ints, "
                                 f"got {value!r}")
        if len(self.tiny_cnn_channels) != 5:
            raise ValueError("DMNConfig.tiny_cnn_channels must have 5 entries (one per stage), "
                             f"got {self.tiny_cnn_channels!r}")
        if self.tiny_cnn_output_stride not in (8, 16, 32):
            raise ValueError("DMNConfig.tiny_cnn_output_stride must be 8, 16 or 32, "
                             f"got {self.tiny_cnn_output_stride!r}")
        amp = self.upsamp_amplification
        if not isinstance(amp, int) or amp < 2 or 2 ** round(math.log2(amp)) != amp:
            raise ValueError("DMNConfig.upsamp_amplification must be a power of two >= 2 "
                             f"(2, 4, 8, 16, 32), got {amp!r}")
        if self.upsamp_stages > len(self.upsamp_channels):
            raise ValueError(f"DMNConfig.upsamp_amplification={amp} needs "
                             f"{self.upsamp_stages} upsamp_channels, got {self.upsamp_channels!r}")
        if self.upsamp_kernel % 2 == 0:
            raise ValueError(f"DMNConfig.upsamp_kernel must be odd, got {self.upsamp_kernel}")
        if self.upsamp_mode not in UPSAMP_MODES:
            raise ValueError(f"DMNConfig.upsamp_mode must be one of {UPSAMP_MODES}, "
                             f"got {self.upsamp_mode!r}")
        if self.upsamp_activation not in UPSAMP_ACTIVATIONS:
            raise ValueError(f"DMNConfig.upsamp_activation must be one of {UPSAMP_ACTIVATIONS}, "
                             f"got {self.upsamp_activation!r}")
        if self.freeze and not self.high_res:
            raise ValueError("DMNConfig.freeze=True trains only the upsampling module, which "
                             "exists only with high_res=True: set high_res=True or freeze=False")

    @property
    def upsamp_stages(self) -> int:
        """Number of ×2 upsampling stages: log2(upsamp_amplification)."""
        return int(math.log2(self.upsamp_amplification))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DMNConfig:
        """Rebuild from ``dataclasses.asdict(config)`` (e.g. after a JSON round trip).

        A config stored before a field existed describes the model of that time: such fields
        take their :data:`_ABSENT_MEANS` value, not the default, so old checkpoints load
        (strictly) into the model they were trained as. ``pretrained_path``, a field of older
        versions, is dropped: a stored model's backbone weights are all in its state dict.

        Raises:
            ValueError: on keys that are not fields, or on invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        data = {**_ABSENT_MEANS, **{k: v for k, v in data.items() if k not in _RETIRED}}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown DMNConfig field(s) {unknown}; valid fields: {sorted(names)}")
        # JSON turns tuples into lists; the dataclass is frozen and hashable with tuples.
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fixed)

    def replace(self, **changes: Any) -> DMNConfig:
        """A copy with some fields changed (validated like a fresh config)."""
        return self.from_dict({**dataclasses.asdict(self), **changes})


#: Fields added after configs were first stored, and the value their absence means.
_ABSENT_MEANS: dict[str, Any] = {"backbone_final_norm": False, "coords_over_image": False}
#: Fields of older versions that no longer exist (ignored when read).
_RETIRED = frozenset({"pretrained_path"})

#: The original README command (low-res training): dpn92, K=10, 3 language layers, --mix-we.
#: Its high-res stage is the same config with ``high_res=True``, started from the low-res weights.
_PAPER = DMNConfig()

#: Trains on 2 CPU cores in minutes on the toy dataset (96–128 px); see docs/model.md.
_TINY = DMNConfig(
    backbone=TINY_CNN,
    tiny_cnn_channels=(16, 32, 64, 128, 128),
    emb_size=64,
    hid_size=64,
    lang_layers=1,
    num_filters=10,
    mix_we=True,
    mixed_size=64,
    hid_mixed_size=64,
    mixed_layers=1,
    high_res=True,
    tiny_cnn_output_stride=16,
    upsamp_channels=(64, 32),
    upsamp_amplification=4,
    upsamp_activation="relu",
)

PRESETS: dict[str, DMNConfig] = {"paper": _PAPER, "tiny": _TINY}


def preset(name: str, **overrides: Any) -> DMNConfig:
    """The named preset (``paper`` or ``tiny``) with optional field overrides.

    Raises:
        ValueError: for an unknown preset name, an unknown field or an invalid value.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown DMN preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


__all__ = ["DMNConfig", "PRESETS", "TINY_CNN", "preset"]
