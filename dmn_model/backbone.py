"""Visual module: a feature-pyramid backbone and the 8 spatial coordinate maps.

Any backbone here follows timm's ``features_only`` contract: ``backbone(images)`` returns a list
of feature maps, finest first, and ``backbone.feature_info.channels()`` / ``.reduction()`` give
their channel counts and strides. The DMN reads every shape from there.
"""

from __future__ import annotations

import os

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


def create_backbone(config: DMNConfig) -> nn.Module:
    """The visual module of ``config``: :class:`TinyCNN` or a timm ``features_only`` model.

    Raises:
        ValueError: unknown timm model name, missing ``pretrained_path`` file, or pretrained
            weights requested for ``tiny_cnn``.
    """
    path = config.pretrained_path
    if path is not None and not os.path.isfile(path):
        raise ValueError(f"DMNConfig.pretrained_path: no such file {path!r}")
    if config.backbone == TINY_CNN:
        if path is not None:
            raise ValueError("DMNConfig.pretrained_path is for timm backbones; "
                             f"{TINY_CNN!r} always starts from random weights")
        return TinyCNN(config.tiny_cnn_channels, config.tiny_cnn_output_stride)
    import timm  # imported here: it takes seconds, and tiny_cnn runs (and every --help) need none of it

    if not timm.is_model(config.backbone):
        raise ValueError(f"DMNConfig.backbone: {config.backbone!r} is neither {TINY_CNN!r} nor a "
                         "timm model name (see timm.list_models())")
    if path is None:
        return timm.create_model(config.backbone, pretrained=False, features_only=True)
    # features_only models ignore checkpoint_path=; a file overlay on the pretrained cfg works.
    return timm.create_model(config.backbone, pretrained=True, features_only=True,
                             pretrained_cfg_overlay=dict(file=path))


def normalization(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel, for inputs scaled to [0, 1], that the backbone expects.

    timm models carry them in ``pretrained_cfg`` (dpn92 uses its own, not ImageNet's); anything
    else gets the ImageNet constants.
    """
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def spatial_coords(height: int, width: int, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """The 8 coordinate maps of text_objseg / DMN for a ``height × width`` grid.

    Returns ``(1, 8, height, width)``: per cell xmin, ymin, xmax, ymax, xctr, yctr (cell edges and
    centre in [-1, 1]), 1/width, 1/height.
    """
    y, x = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float64),
                          torch.arange(width, device=device, dtype=torch.float64), indexing="ij")
    xmin, xmax = x / width * 2 - 1, (x + 1) / width * 2 - 1
    ymin, ymax = y / height * 2 - 1, (y + 1) / height * 2 - 1
    maps = [xmin, ymin, xmax, ymax, (xmin + xmax) / 2, (ymin + ymax) / 2,
            torch.full_like(x, 1 / width), torch.full_like(x, 1 / height)]
    return torch.stack(maps)[None].to(dtype)
