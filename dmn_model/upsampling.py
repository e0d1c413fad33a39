"""Upsampling module: from the stride-32 multimodal map back up the backbone's feature pyramid.

As in the original code, stage i concatenates the backbone feature at the current stride, doubles
the resolution, then applies a k×k conv: with 5 stages the skips are the features at strides
32, 16, 8, 4, 2 and the last conv already runs at stride 1, so no stride-1 skip is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _activation(name: str, channels: int) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "prelu":
        return nn.PReLU(channels)
    return nn.Identity()


class Upsampling(nn.Module):
    """``n`` × (concat skip, upsample ×2, k×k conv, activation), then a 1×1 conv to 1 channel.

    Args:
        in_channels: channels of the multimodal map (``hid_mixed_size``).
        skip_channels: channels of the skip features, coarsest first, one per stage.
        out_channels: output channels of each stage.
        kernel: conv kernel size (odd).
        mode: ``bilinear`` or ``nearest`` for the ×2 upsampling.
        activation: ``none``, ``relu`` or ``prelu`` after each conv.
    """

    def __init__(self, in_channels: int, skip_channels: list[int], out_channels: list[int],
                 kernel: int = 3, mode: str = "bilinear", activation: str = "none") -> None:
        super().__init__()
        if len(skip_channels) != len(out_channels):
            raise ValueError(f"{len(skip_channels)} skip features for {len(out_channels)} stages")
        self.mode = mode
        self.convs = nn.ModuleList()
        self.acts = nn.ModuleList()
        for skip, out in zip(skip_channels, out_channels):
            self.convs.append(nn.Conv2d(in_channels + skip, out, kernel, padding=kernel // 2))
            self.acts.append(_activation(activation, out))
            in_channels = out
        self.out = nn.Conv2d(in_channels, 1, kernel_size=1)

    def forward(self, x: Tensor, skips: list[Tensor], image_index: Tensor | None = None
                ) -> Tensor:
        """``x (B, C, h, w)``, ``skips[i] (N, C_i, h_i, w_i)`` coarsest first (``skips[0]`` at
        the resolution of ``x``), ``image_index (B,)`` the image of each row of ``x`` (None:
        ``B == N``) → logits ``(B, 1, 2·h_last, 2·w_last)``.

        ``conv(up(cat[x, skip]))`` is computed as ``conv_x(up(x)) + conv_skip(up(skip))``: the
        ×2 interpolation acts on each channel alone and the conv (zero padding included) is
        linear in its input channels, so this is the same map with the same parameters. The
        skip term depends on the image only: it is computed once per image and gathered per
        sentence.
        """
        align = False if self.mode == "bilinear" else None
        for conv, act, skip in zip(self.convs, self.acts, skips):
            if x.shape[-2:] != skip.shape[-2:]:
                # Odd input sizes: the backbone rounds strides up, ×2 can overshoot by a cell.
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            split = x.shape[1]
            skip_term = F.conv2d(F.interpolate(skip, scale_factor=2, mode=self.mode,
                                               align_corners=align),
                                 conv.weight[:, split:], conv.bias, padding=conv.padding)
            if image_index is not None:
                skip_term = skip_term.index_select(0, image_index)
            x = F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=align)
            x = act(F.conv2d(x, conv.weight[:, :split], padding=conv.padding) + skip_term)
        return self.out(x)


def reference_upsampling(module: Upsampling, x: Tensor, skips: list[Tensor],
                         image_index: Tensor | None = None) -> Tensor:
    """:meth:`Upsampling.forward` as the original computes it, for tests: the skips gathered per
    sentence, concatenated to ``x``, upsampled, one conv over the concatenation."""
    if image_index is not None:
        skips = [s.index_select(0, image_index) for s in skips]
    align = False if module.mode == "bilinear" else None
    for conv, act, skip in zip(module.convs, module.acts, skips):
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([x, skip], dim=1)
        x = F.interpolate(x, scale_factor=2, mode=module.mode, align_corners=align)
        x = act(conv(x))
    return module.out(x)
