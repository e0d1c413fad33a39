"""Losses on the valid (unpadded) image region.

The stream pads every image to ``size × size`` and yields a ``valid`` mask. Logits may be coarser
than the target (the low-res map). Two ways to meet them:

- pooled (default): the target and the valid mask are *downsampled* to the logits' grid by area
  averaging (``adaptive_avg_pool2d``). A cell's target becomes the foreground fraction of its
  valid pixels (a soft label) and its weight the valid fraction of the cell, so cells half over
  padding count half and fully padded cells not at all.
- ``upsample=True`` (the original DMN's low-res loss, ``train.py``: the stride-32 logits resized
  bilinearly to the input size, per-pixel BCE against the mask there): the logits are resized
  bilinearly (``align_corners=False``) to the target's size and the loss is taken per valid
  pixel. The original's mask at the input size was resized bilinearly (soft at the edges); ours
  is the stream's nearest-resized 0/1 mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-6


def _on_logit_grid(logits: Tensor, target: Tensor, valid: Tensor, upsample: bool = False
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Bring target/valid to the logits' (h, w), or with ``upsample`` the logits to the target's
    (H, W). Returns logits, target, weight as (B, h, w)."""
    if logits.dim() == 4:
        if logits.shape[1] != 1:
            raise ValueError(f"logits must be (B, 1, h, w) or (B, h, w), got {tuple(logits.shape)}")
        logits = logits[:, 0]
    if target.shape != valid.shape or target.dim() != 3 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target and valid must both be (B, H, W) with B = {logits.shape[0]}; "
                         f"got {tuple(target.shape)} and {tuple(valid.shape)}")
    if upsample and target.shape[-2:] != logits.shape[-2:]:
        logits = F.interpolate(logits[:, None], size=target.shape[-2:], mode="bilinear",
                               align_corners=False)[:, 0]
    weight = valid.to(logits.dtype)
    target = target.to(logits.dtype) * weight
    if target.shape[-2:] != logits.shape[-2:]:
        size = logits.shape[-2:]
        weight = F.adaptive_avg_pool2d(weight[:, None], size)[:, 0]
        target = F.adaptive_avg_pool2d(target[:, None], size)[:, 0]
        target = target / weight.clamp_min(_EPS)
    return logits, target, weight


def masked_bce_with_logits(logits: Tensor, target: Tensor, valid: Tensor,
                           upsample: bool = False) -> Tensor:
    """Binary cross-entropy with logits, averaged over the valid region.

    Args:
        logits: ``(B, 1, h, w)`` or ``(B, h, w)`` float, at the target's resolution or coarser.
        target: ``(B, H, W)`` float in [0, 1] or uint8/bool {0, 1}.
        valid: ``(B, H, W)`` bool, True on real (unpadded) pixels.
        upsample: coarser logits are resized to the target's size (module docstring), instead
            of the target pooled to theirs.

    Returns:
        scalar float: Σ w·BCE / Σ w with w the (downsampled) valid weight.
    """
    logits, target, weight = _on_logit_grid(logits, target, valid, upsample)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp_min(_EPS)


def soft_iou_loss(logits: Tensor, target: Tensor, valid: Tensor, upsample: bool = False) -> Tensor:
    """Soft IoU loss of the original code, ``1 − Σ p·t / Σ (p + t − p·t)`` with p = sigmoid.

    Sums run over the valid region of each image; the result is the mean over the batch.
    Arguments as :func:`masked_bce_with_logits`. Returns a scalar float in [0, 1].
    """
    logits, target, weight = _on_logit_grid(logits, target, valid, upsample)
    prob = torch.sigmoid(logits)
    inter = (prob * target * weight).sum(dim=(1, 2))
    union = ((prob + target - prob * target) * weight).sum(dim=(1, 2))
    return (1 - inter / union.clamp_min(_EPS)).mean()
