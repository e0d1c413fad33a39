"""Visual module: a feature-pyramid backbone and the 8 spatial coordinate maps.

Any backbone here follows timm's ``features_only`` contract: ``backbone(images)`` returns a list
of feature maps, finest first, and ``backbone.feature_info.channels()`` / ``.reduction()`` give
their channel counts and strides. The DMN reads every shape from there.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import TINY_CNN, DMNConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StageInfo:
    """The part of timm's ``FeatureInfo`` the DMN uses: per-stage channels and reductions."""

    def __init__(self, channels: list[int], reductions: list[int]) -> None:
        self._channels = list(channels)
        self._reductions = list(reductions)

    def channels(self) -> list[int]:
        return list(self._channels)

    def reduction(self) -> list[int]:
        return list(self._reductions)


class _ResidualStage(nn.Module):
    """ReLU(conv3×3(stride)-BN-ReLU-conv3×3-BN  +  shortcut), the shortcut being identity, or
    average pooling then a 1×1 conv + BN where the stride or width changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        short: list[nn.Module] = []
        if stride > 1:
            short.append(nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False))
        if in_ch != out_ch:
            short += [nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
        self.short = nn.Sequential(*short)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.main(x) + self.short(x))


class TinyCNN(nn.Module):
    """Five residual stages (see :class:`_ResidualStage`). A stage halves the resolution until
    ``output_stride`` is reached, later ones keep it: strides 2, 4, …, 32 by default;
    2, 4, 8, 16, 16 with ``output_stride=16``.

    A from-scratch backbone that learns the toy task on CPU in minutes (a resnet18 from scratch
    was ~5× slower per step and stalled there). The shortcuts matter: without them the top
    features lose the objects' colour (a linear probe on mask-pooled stride-16 features read the
    colour at chance level, 0.17 for 6 colours, after training; 0.86 with them at
    initialisation), and the DMN never learned colour words (docs/model.md).

    Args:
        channels: widths of the five stages.
        output_stride: stride of the last stage (8, 16 or 32).
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128, 128),
                 output_stride: int = 32) -> None:
        super().__init__()
        stages = []
        reductions = []
        in_ch, reduction = 3, 1
        for out_ch in channels:
            stride = 2 if reduction < output_stride else 1
            reduction *= stride
            reductions.append(reduction)
            stages.append(_ResidualStage(in_ch, out_ch, stride))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.feature_info = StageInfo(list(channels), reductions)
        # Same attribute timm models carry, so normalisation constants are read the same way.
        self.pretrained_cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}

    def forward(self, images: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` float32 → list of ``(B, C_i, ⌈H/r_i⌉, ⌈W/r_i⌉)``, one per stage, with
        ``r_i = feature_info.reduction()[i]``."""
        features = []
        x = images
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


#: timm families whose ``features_only`` model stops before the final norm + activation that
#: the full network's features pass through (module name in the full model). dpn: the original
#: DMN fed the post-``conv5_bn_ac`` map to the dynamic filters; resnetv2 (pre-activation, incl.
#: BiT): the last stage's sum is un-normalised. resnet / densenet / cspnet / regnet already end
#: activated; efficientnet's and mobilenetv3's ``conv_head`` is a 1×1 conv head and convnext's
#: norm acts on the pooled vector, so those are left as timm gives them (docs/model.md).
FINAL_NORM_MODULES = {"dpn": "features.conv5_bn_ac", "resnetv2": "norm"}


def final_norm_module(name: str) -> str | None:
    """The module :data:`FINAL_NORM_MODULES` adds for timm model ``name`` (tags allowed), or None."""
    import timm

    family = timm.models.model_entrypoint(timm.models.split_model_name_tag(name)[0]).__module__
    return FINAL_NORM_MODULES.get(family.rsplit(".", 1)[-1])


def _final_norm_features(final_module: str):
    """A timm ``FeatureListNet`` whose last feature is taken after ``final_module``.

    Handed to ``timm.create_model(feature_cls=...)`` so that everything else - weight loading
    into the full model, ``pretrained_cfg``, module naming - stays timm's own; the state dict is
    timm's ``features_only`` one plus the final module's tensors (which the pretrained file has).
    """
    from timm.models import FeatureListNet

    class FinalNormFeatureListNet(FeatureListNet):
        def __init__(self, model: nn.Module, **kwargs) -> None:
            info = [dict(stage) for stage in model.feature_info]
            info[-1]["module"] = final_module
            model.feature_info = info
            super().__init__(model, **kwargs)
            if final_module == "features.conv5_bn_ac":
                # timm's DPN ends in BN + ELU; the DMN's dpn (and the MXNet original) in BN + ReLU.
                self["features_conv5_bn_ac"].bn.act = nn.ReLU(inplace=True)

    return FinalNormFeatureListNet


def timm_features(name: str, final_norm: bool, **create_kwargs) -> nn.Module:
    """``timm.create_model(name, features_only=True, **create_kwargs)``, with the family's final
    norm + activation (:data:`FINAL_NORM_MODULES`) applied to the last feature when
    ``final_norm``."""
    import timm

    module = final_norm_module(name) if final_norm else None
    if module is not None:
        create_kwargs["feature_cls"] = _final_norm_features(module)
    return timm.create_model(name, features_only=True, **create_kwargs)


def create_backbone(config: DMNConfig) -> nn.Module:
    """The visual module of ``config``, randomly initialised: :class:`TinyCNN` or a timm
    ``features_only`` model. Pretrained weights are the trainer's business
    (:func:`dmn_model.pretrained.load_backbone_weights`): a loaded model gets every weight from
    its state dict, so building one never reads or downloads anything.

    Raises:
        ValueError: unknown timm model name.
    """
    if config.backbone == TINY_CNN:
        return TinyCNN(config.tiny_cnn_channels, config.tiny_cnn_output_stride)
    import timm  # imported here: it takes seconds, and tiny_cnn runs (and every --help) need none of it

    if not timm.is_model(config.backbone):
        raise ValueError(f"DMNConfig.backbone: {config.backbone!r} is neither {TINY_CNN!r} nor a "
                         "timm model name (see timm.list_models())")
    return timm_features(config.backbone, config.backbone_final_norm, pretrained=False)


def normalization(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel, for inputs scaled to [0, 1], that the backbone expects.

    timm models carry them in ``pretrained_cfg`` (dpn92 uses its own, not ImageNet's); anything
    else gets the ImageNet constants.
    """
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def spatial_coords(height: int, width: int, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32, extent: Tensor | None = None) -> Tensor:
    """The 8 coordinate maps of text_objseg / DMN for a ``height × width`` grid.

    Returns ``(1, 8, height, width)``: per cell xmin, ymin, xmax, ymax, xctr, yctr (cell edges and
    centre in [-1, 1]), 1/width, 1/height.

    With ``extent`` (``(N, 2)`` int: rows, columns of the grid each of ``N`` images covers, the
    rest being padding), returns ``(N, 8, height, width)``: the maps span each image's own cells
    ([-1, 1] across them, as the original DMN's unpadded batch of one) and go on past 1 into the
    padding; the last two maps are 1/columns and 1/rows of the image.
    """
    if extent is None:
        extent = torch.tensor([[height, width]], device=device)
    rows = extent[:, 0].to(device=device, dtype=torch.float64).view(-1, 1, 1)
    cols = extent[:, 1].to(device=device, dtype=torch.float64).view(-1, 1, 1)
    y, x = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float64),
                          torch.arange(width, device=device, dtype=torch.float64), indexing="ij")
    xmin, xmax = x / cols * 2 - 1, (x + 1) / cols * 2 - 1
    ymin, ymax = y / rows * 2 - 1, (y + 1) / rows * 2 - 1
    shape = xmin.shape[:1] + (height, width)
    xmin, xmax, ymin, ymax = (m.expand(shape) for m in (xmin, xmax, ymin, ymax))
    maps = [xmin, ymin, xmax, ymax, (xmin + xmax) / 2, (ymin + ymax) / 2,
            (1 / cols).expand(shape), (1 / rows).expand(shape)]
    return torch.stack(maps, dim=1).to(dtype)
