"""The Dynamic Multimodal Network, batched: visual, language, synthesis and upsampling modules."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import create_backbone, normalization, spatial_coords
from .config import DMNConfig
from .sru import make_rnn
from .synthesis import Synthesis
from .upsampling import Upsampling


@dataclass(frozen=True)
class ImageFeatures:
    """What :meth:`DMN.encode_image` computes once per image: the backbone's feature maps, finest
    first (``(N, C_i, ⌈H/r_i⌉, ⌈W/r_i⌉)``), the ``(H, W)`` of the (padded) images, and
    ``image_size``, ``(N, 2)`` int64 ``(h', w')`` of each image inside its padding (top-left), or
    None when the images fill their ``H × W``."""

    maps: list[Tensor]
    size: tuple[int, int]
    image_size: Tensor | None = None


class DMN(nn.Module):
    """Referring image segmentation: image + expression → mask logits.

    Args:
        config: the architecture (see :class:`DMNConfig`).
        vocab_size: number of token ids (``<pad>`` = 0 included).

    Submodules: ``backbone`` (visual), ``embedding`` + ``language`` (language), ``synthesis``,
    ``collapse`` (1×1 conv to the low-res logits, at the top feature's stride) and, with ``high_res``, ``upsampling``. A
    low-res model's state dict is the high-res one minus ``upsampling.*``, so high-res training
    starts from low-res weights with ``load_state_dict(state, strict=False)``.
    """

    def __init__(self, config: DMNConfig, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (<pad> and <unk>), got {vocab_size}")
        self.config = config
        self.backbone = create_backbone(config)
        channels = self.backbone.feature_info.channels()
        self.reductions = self.backbone.feature_info.reduction()
        self.embedding = nn.Embedding(vocab_size, config.emb_size)
        self.language = make_rnn(config.lstm, config.emb_size, config.hid_size, config.lang_layers)
        self.synthesis = Synthesis(channels[-1], config)
        self.collapse = nn.Conv2d(config.hid_mixed_size, 1, kernel_size=1)
        self.upsampling: Upsampling | None = None
        # Upsampling stage i starts at stride top/2^i and concatenates the deepest backbone
        # feature at that stride (strides 32, 16, 8, … for the usual backbones).
        self.skip_index: list[int] = []
        if config.high_res:
            top = self.reductions[-1]
            for i in range(config.upsamp_stages):
                stride = top / 2 ** i
                at = [j for j, r in enumerate(self.reductions) if r == stride]
                if not at:
                    raise ValueError(
                        f"DMNConfig.upsamp_amplification={config.upsamp_amplification} needs "
                        f"backbone features at stride {stride:g}; {config.backbone!r} has "
                        f"strides {sorted(set(self.reductions))}: lower upsamp_amplification")
                self.skip_index.append(at[-1])
            self.upsampling = Upsampling(
                config.hid_mixed_size, [channels[j] for j in self.skip_index],
                list(config.upsamp_channels[:config.upsamp_stages]), kernel=config.upsamp_kernel,
                mode=config.upsamp_mode, activation=config.upsamp_activation)
        mean, std = normalization(self.backbone)
        # Non-persistent: they follow the backbone, not the checkpoint.
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255,
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * 255,
                             persistent=False)
        if config.freeze:
            for module in self._core_modules():
                module.requires_grad_(False)

    def _core_modules(self) -> list[nn.Module]:
        """Everything but the upsampling module: what ``freeze`` fixes."""
        return [self.backbone, self.embedding, self.language, self.synthesis, self.collapse]

    def train(self, mode: bool = True) -> DMN:
        """As ``nn.Module.train``; with ``freeze`` the frozen part stays in eval mode (BN stats)."""
        super().train(mode)
        if self.config.freeze:
            for module in self._core_modules():
                module.eval()
        return self

    @property
    def output_stride(self) -> int:
        """Stride of the low-res logits (32 for the usual backbones)."""
        return self.reductions[-1]

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` uint8 RGB → float32 input for :meth:`forward`:
        ``(x / 255 - mean) / std`` with the backbone's mean/std (timm ``pretrained_cfg``)."""
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward(self, images: Tensor, tokens: Tensor, lengths: Tensor, return_aux: bool = False,
                image_size: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Segment the referred object: :meth:`encode_image` then :meth:`segment`.

        Args:
            images: ``(B, 3, H, W)`` float32, already :meth:`normalize`\\ d.
            tokens: ``(B, T)`` int64 token ids, right-padded with 0.
            lengths: ``(B,)`` int64, real tokens per sentence, in ``1..T``.
            return_aux: also return the low-res logits (for an auxiliary low-res loss).
            image_size: ``(B, 2)`` int64 ``(h', w')`` of each image inside its bottom/right
                padding (the loader's ``resized_size``); None = the images fill ``H × W``. The
                coordinate maps span this region (``coords_over_image``).

        Returns:
            logits ``(B, 1, H, W)`` with ``high_res``, else ``(B, 1, ⌈H/s⌉, ⌈W/s⌉)`` with ``s`` =
            :attr:`output_stride` (32 for the usual backbones); with
            ``return_aux``, the pair ``(logits, lowres_logits)`` (the same tensor twice in
            low-res mode). A sentence's logits do not depend on the padding around it.
        """
        return self.segment(self.encode_image(images, image_size), tokens, lengths,
                            return_aux=return_aux)

    def encode_image(self, images: Tensor, image_size: Tensor | None = None) -> ImageFeatures:
        """The visual module alone, for ``(N, 3, H, W)`` normalized images (``image_size`` as in
        :meth:`forward`). Run it once per image and pass the result to :meth:`segment` with any
        number of sentences about those images."""
        with self._frozen():
            return ImageFeatures(self.backbone(images), (images.shape[-2], images.shape[-1]),
                                 image_size)

    def segment(self, features: ImageFeatures, tokens: Tensor, lengths: Tensor,
                image_index: Tensor | None = None, return_aux: bool = False
                ) -> Tensor | tuple[Tensor, Tensor]:
        """Language, synthesis and upsampling modules for ``B`` sentences.

        Args:
            features: :meth:`encode_image` of ``N`` images.
            tokens, lengths: as :meth:`forward`, one row per sentence.
            image_index: ``(B,)`` int64, the image (``0..N-1``) each sentence is about; None
                means sentence ``i`` is about image ``i`` (``B == N``).
            return_aux: as :meth:`forward`.

        Returns:
            as :meth:`forward`, one row per sentence (full resolution = the images' ``H × W``).
        """
        steps = tokens.shape[1]
        if bool(((lengths < 1) | (lengths > steps)).any()):
            raise ValueError(f"lengths must be in 1..{steps} (tokens.shape[1]), "
                             f"got {lengths.tolist()}")
        maps = features.maps
        images = maps[-1].shape[0]
        if image_index is None and images != tokens.shape[0]:
            raise ValueError(f"{tokens.shape[0]} sentences for {images} images: "
                             "pass image_index")
        if image_index is not None and image_index.numel() and not bool(
                ((image_index >= 0) & (image_index < images)).all()):
            raise ValueError(f"image_index must be in 0..{images - 1}, got "
                             f"{image_index.tolist()}")
        # Image-only work (coordinates, the visual fusion term, the skip terms of the
        # upsampling convs) runs on the N images; only per-sentence results are gathered.
        with self._frozen():
            multimodal = self._multimodal(maps[-1], tokens, lengths, image_index,
                                          self._extent(features))
            lowres = self.collapse(multimodal)
        if self.upsampling is None:
            return (lowres, lowres) if return_aux else lowres
        skips = [maps[j] for j in self.skip_index]
        logits = self.upsampling(multimodal, skips, image_index)
        if logits.shape[-2:] != features.size:
            logits = F.interpolate(logits, size=features.size, mode="bilinear",
                                   align_corners=False)
        return (logits, lowres) if return_aux else logits

    def _frozen(self):
        """No autograd through the frozen part of a ``freeze`` model while training."""
        frozen = self.config.freeze and torch.is_grad_enabled()
        return torch.no_grad() if frozen else contextlib.nullcontext()

    def _extent(self, features: ImageFeatures) -> Tensor | None:
        """``(N, 2)`` cells of the top grid each image covers (``⌈h' · h / H⌉``), or None for the
        whole grid (no ``image_size``, or a config from before ``coords_over_image``)."""
        if features.image_size is None or not self.config.coords_over_image:
            return None
        top = features.maps[-1]
        size = features.image_size.to(top.device, torch.int64)
        # Python ints only: no host-to-device copy per forward.
        (grid_h, grid_w), (full_h, full_w) = top.shape[-2:], features.size
        rows = ((size[:, 0] * grid_h + full_h - 1) // full_h).clamp(1, grid_h)  # ceil
        cols = ((size[:, 1] * grid_w + full_w - 1) // full_w).clamp(1, grid_w)
        return torch.stack([rows, cols], dim=1)

    def _multimodal(self, top: Tensor, tokens: Tensor, lengths: Tensor,
                    image_index: Tensor | None = None, extent: Tensor | None = None) -> Tensor:
        """``top (N, C, h, w)`` top backbone feature of ``N`` images, ``B`` sentences →
        multimodal map ``(B, hid_mixed, h, w)``; ``extent`` as :func:`spatial_coords`."""
        images, _, height, width = top.shape
        coords = spatial_coords(height, width, device=top.device, dtype=top.dtype, extent=extent)
        vis = torch.cat([top, coords.expand(images, -1, -1, -1)], dim=1)
        steps = tokens.shape[1]
        mask_pad = torch.arange(steps, device=tokens.device)[:, None] >= lengths[None, :]
        emb = self.embedding(tokens.t())  # (T, B, E)
        hid, _ = self.language(emb, mask_pad)  # (T, B, H)
        return self.synthesis(vis, emb, hid, mask_pad, lengths, image_index)

    def param_counts(self) -> dict[str, int]:
        """Parameters per module: backbone, language (embedding + RNN), synthesis, upsampling
        (with the low-res ``collapse`` head counted under synthesis)."""
        def count(*modules: nn.Module | None) -> int:
            return sum(p.numel() for m in modules if m is not None for p in m.parameters())
        return {
            "backbone": count(self.backbone),
            "language": count(self.embedding, self.language),
            "synthesis": count(self.synthesis, self.collapse),
            "upsampling": count(self.upsampling),
        }
