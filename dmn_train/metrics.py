"""Referring-segmentation metrics, as the original DMN evaluation defines them.

Facts taken from ``dmn_pytorch/train.py::evaluate`` of the original code:

- thresholds ``np.arange(0, 0.96, 0.025)``: 39 values 0, 0.025, …, 0.95; a pixel is foreground
  when its probability is *strictly greater* than the threshold;
- per sentence, I = |pred ∧ gt| and U = |pred ∨ gt| at the original image resolution;
- overall IoU = Σ I / Σ U over the split (the number the paper reports as "IoU");
- precision@X = fraction of sentences whose IoU = I / U is ``>= X``, X ∈ {0.5, …, 0.9};
- the reported maximum is the best threshold of the sweep, chosen on the evaluated split.

Mean IoU (the mean of per-sentence IoU, as text_objseg reports it) is added. A sentence with
U = 0 (empty mask, empty prediction) has IoU 0: the original's 0/0 = NaN never passed a precision
cut, and 0 keeps the mean finite.

Everything here is a sum of integers over sentences (per-sentence IoU in fixed point, units of
2**-32), so the state of :class:`IoUAccumulator` all-reduces across ranks and is rebuilt from
stored per-sentence I and U with bit-identical results, whatever the batch size, sentence order
or number of ranks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: The original 39-threshold sweep (0 … 0.95, step 0.025), computed exactly as it did.
SWEEP_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.arange(0.0, 0.96, 0.025))
#: IoU cuts of precision@X.
PRECISION_CUTS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
#: Per-sentence IoU is summed as an integer number of 2**-32 units: exact and order-independent.
_IOU_UNIT = 2.0 ** 32


def intersection_union(prob: Tensor, target: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """I and U of one prediction at every threshold, in one pass over the pixels.

    Args:
        prob: ``(H, W)`` float, foreground probability (any device); thresholds are rounded to
            its dtype, so a float32 prob equal to float32(0.025) is not above 0.025.
        target: ``(H, W)`` bool or {0, 1}, the ground-truth mask.
        thresholds: ``(K,)`` float, any order.

    Returns:
        ``(I, U)``, each ``(K,)`` int64 on ``prob``'s device, with pred = ``prob > thresholds[k]``.
    """
    assert prob.shape == target.shape, (prob.shape, target.shape)
    # Compare in prob's dtype, as ``prob > 0.025`` does in torch (and in the original code).
    p = prob.reshape(-1)
    gt = target.reshape(-1).bool()
    thr, order = thresholds.to(device=p.device, dtype=p.dtype).sort()
    k = thr.numel()
    # rank[i] = number of thresholds strictly below p[i]; pixel i is predicted at threshold j
    # exactly when j < rank[i].
    rank = torch.searchsorted(thr, p, side="left")
    pred_hist = torch.bincount(rank, minlength=k + 1)
    inter_hist = torch.bincount(rank[gt], minlength=k + 1)
    # predicted[j] = #{i : rank[i] > j} = suffix sum of the histogram from j + 1.
    predicted = pred_hist.flip(0).cumsum(0).flip(0)[1:]
    inter = inter_hist.flip(0).cumsum(0).flip(0)[1:]
    union = predicted + gt.sum() - inter
    # Back to the caller's threshold order.
    out_inter, out_union = torch.empty_like(inter), torch.empty_like(union)
    out_inter[order], out_union[order] = inter, union
    return out_inter, out_union


def per_sentence_iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """IoU = I / U elementwise, 0 where U = 0. Any shape; returns float64."""
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class IoUAccumulator:
    """Running sums over sentences for a set of thresholds (the sweep + the fixed one).

    State (all integer sums, so ranks combine with one all-reduce): Σ I and Σ U per threshold,
    Σ IoU per threshold (fixed point), the count of sentences with IoU >= each cut per threshold,
    and the sentence count.
    """

    def __init__(self, thresholds: tuple[float, ...] | list[float]) -> None:
        self.thresholds = tuple(float(t) for t in thresholds)
        k = len(self.thresholds)
        self.inter = np.zeros(k, dtype=np.int64)
        self.union = np.zeros(k, dtype=np.int64)
        self.iou_sum = np.zeros(k, dtype=np.int64)  # units of 2**-32
        self.hits = np.zeros((len(PRECISION_CUTS), k), dtype=np.int64)
        self.count = 0

    def update(self, inter: np.ndarray, union: np.ndarray) -> None:
        """Add sentences: ``inter`` and ``union`` are ``(N, K)`` int arrays."""
        inter = np.asarray(inter, dtype=np.int64).reshape(-1, len(self.thresholds))
        union = np.asarray(union, dtype=np.int64).reshape(-1, len(self.thresholds))
        iou = per_sentence_iou(inter, union)
        self.inter += inter.sum(0)
        self.union += union.sum(0)
        self.iou_sum += np.rint(iou * _IOU_UNIT).astype(np.int64).sum(0)
        for c, cut in enumerate(PRECISION_CUTS):
            self.hits[c] += (iou >= cut).sum(0)
        self.count += inter.shape[0]

    def state_tensor(self) -> Tensor:
        """All sums in one int64 tensor (for ``all_reduce``)."""
        return torch.from_numpy(np.concatenate([
            self.inter, self.union, self.iou_sum, self.hits.reshape(-1),
            np.array([self.count], dtype=np.int64)]))

    def load_state_tensor(self, state: Tensor) -> None:
        """Inverse of :meth:`state_tensor` (after an all-reduce, the sums over ranks)."""
        s = state.detach().cpu().numpy().astype(np.int64)
        k, c = len(self.thresholds), len(PRECISION_CUTS)
        self.inter, self.union = s[:k].copy(), s[k:2 * k].copy()
        self.iou_sum = s[2 * k:3 * k].copy()
        self.hits = s[3 * k:3 * k + c * k].reshape(c, k).copy()
        self.count = int(s[-1])

    def at(self, index: int) -> dict:
        """Metrics at threshold ``self.thresholds[index]``."""
        n = max(self.count, 1)
        return {
            "threshold": self.thresholds[index],
            "overall_iou": float(self.inter[index] / self.union[index]) if self.union[index] else 0.0,
            "mean_iou": float(self.iou_sum[index] / _IOU_UNIT / n),
            "precision": {f"{cut:.1f}": float(self.hits[c, index] / n)
                          for c, cut in enumerate(PRECISION_CUTS)},
        }


def summarize(acc: IoUAccumulator, threshold: float) -> dict:
    """The metrics of a split: at the fixed ``threshold`` and over the 39-threshold sweep.

    ``acc.thresholds`` must hold the sweep and ``threshold``. The sweep's best threshold maximises
    overall IoU (first one on ties, as ``torch.max`` in the original) and is chosen on the very
    split being evaluated, so it is optimistic; the fixed-threshold numbers are the unbiased ones.
    """
    index = {t: i for i, t in enumerate(acc.thresholds)}
    missing = [t for t in (*SWEEP_THRESHOLDS, threshold) if t not in index]
    if missing:
        raise ValueError(f"accumulator lacks thresholds {missing}")
    sweep = [index[t] for t in SWEEP_THRESHOLDS]
    overall = [acc.at(i)["overall_iou"] for i in sweep]
    best = int(np.argmax(overall))
    return {
        "sentences": acc.count,
        "fixed": acc.at(index[threshold]),
        "sweep": {
            "thresholds": list(SWEEP_THRESHOLDS),
            "overall_iou": overall,
            "mean_iou": [acc.at(i)["mean_iou"] for i in sweep],
            "best": {**acc.at(sweep[best]), "chosen_on": "the evaluated split (optimistic)"},
        },
    }


def eval_thresholds(threshold: float) -> tuple[float, ...]:
    """The sweep plus ``threshold`` (appended when it is not one of the sweep's values)."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"--threshold must be in [0, 1), got {threshold}")
    return SWEEP_THRESHOLDS if threshold in SWEEP_THRESHOLDS else (*SWEEP_THRESHOLDS, threshold)
