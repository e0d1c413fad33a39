"""From the network's logits on the padded square input to maps at each image's own resolution.

The one post-processing shared by :class:`dmn_model.Segmenter` and ``dmn-eval``, so that a mask
``dmn-predict`` writes is the mask ``dmn-eval`` scores: logits resized to the input side ``S``
if coarser, the valid region (``resized_size``, top-left, as ``dmn_data.transforms.collate``
pads) cropped, resized bilinearly to ``orig_size``, then a sigmoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def to_input_size(logits: Tensor, side: tuple[int, int]) -> Tensor:
    """``(B, 1, h, w)`` logits (any stride) → ``(B, 1, S, S)`` float32 on the padded input grid."""
    logits = logits.float()
    if logits.shape[-2:] != tuple(side):
        logits = F.interpolate(logits, size=tuple(side), mode="bilinear", align_corners=False)
    return logits


def original_logits(logits: Tensor, resized_size: tuple[int, int], orig_size: tuple[int, int]
                    ) -> Tensor:
    """One sentence's ``(1, 1, S, S)`` input-grid logits (from :func:`to_input_size`) →
    ``(H, W)`` float32 logits at the original image resolution ``orig_size``.

    Bilinear resizing commutes with nothing non-linear, so it is done on the logits and the
    sigmoid comes after, as in training's loss."""
    return original_logits_batch(logits, resized_size, orig_size)[0]


def original_logits_batch(logits: Tensor, resized_size: tuple[int, int],
                          orig_size: tuple[int, int]) -> Tensor:
    """:func:`original_logits` of ``(B, 1, S, S)`` logits of sentences about one image →
    ``(B, H, W)`` (one interpolation call; each row is resized alone, so the values are
    :func:`original_logits`' row by row)."""
    h, w = resized_size
    full = F.interpolate(logits[:, :, :h, :w], size=tuple(orig_size), mode="bilinear",
                         align_corners=False)
    return full[:, 0]


def original_probs(logits: Tensor, resized_size: tuple[int, int], orig_size: tuple[int, int]
                   ) -> Tensor:
    """As :func:`original_logits`, then the sigmoid: probabilities ``(H, W)`` float32 in [0, 1]."""
    return torch.sigmoid(original_logits(logits, resized_size, orig_size))


def binary_mask(probs: Tensor, threshold: float) -> Tensor:
    """``(H, W)`` probabilities → ``(H, W)`` bool, True where ``probs > threshold`` (the rule the
    evaluator's I/U counts use)."""
    return probs > threshold
