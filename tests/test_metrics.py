"""Metrics against a direct transcription of the original evaluation (numpy, one loop per sample)."""

import numpy as np
import pytest
import torch

from dmn_train.metrics import (PRECISION_CUTS, SWEEP_THRESHOLDS, IoUAccumulator, eval_thresholds,
                               intersection_union, summarize)


def reference_eval(probs, masks, thresholds):
    """The original ``evaluate``: per sample, per threshold, ``out > thresh``; cum_I / cum_U;
    precision counts ``I / U >= cut`` (0/0 = NaN never counts); plus mean IoU (0/0 -> 0)."""
    k = len(thresholds)
    cum_i, cum_u = np.zeros(k), np.zeros(k)
    correct = np.zeros((len(PRECISION_CUTS), k))
    iou_sum = np.zeros(k)
    for prob, mask in zip(probs, masks):
        inter, union = np.zeros(k), np.zeros(k)
        for j, t in enumerate(thresholds):
            pred = (prob > t).astype(np.float64)
            inter[j] = (pred * mask).sum()
            union[j] = ((pred + mask) - pred * mask).sum()
        cum_i += inter
        cum_u += union
        with np.errstate(invalid="ignore", divide="ignore"):
            this_iou = inter / union
        for c, cut in enumerate(PRECISION_CUTS):
            correct[c] += this_iou >= cut
        iou_sum += np.nan_to_num(this_iou, nan=0.0)
    n = len(probs)
    return cum_i / cum_u, correct / n, iou_sum / n


def test_sweep_is_the_original_39_thresholds():
    assert len(SWEEP_THRESHOLDS) == 39
    assert SWEEP_THRESHOLDS[0] == 0.0 and SWEEP_THRESHOLDS[-1] == pytest.approx(0.95)
    assert list(SWEEP_THRESHOLDS) == np.arange(0, 0.96, 0.025).tolist()


def _random_case(rng, n=12):
    probs, masks = [], []
    for i in range(n):
        h, w = rng.integers(5, 40, size=2)
        # Some probabilities exactly on thresholds, to pin down the strict '>' comparison.
        p = rng.random((h, w)).astype(np.float32)
        p.flat[::7] = rng.choice(np.array(SWEEP_THRESHOLDS, dtype=np.float32), size=p.flat[::7].size)
        m = (rng.random((h, w)) < rng.uniform(0.05, 0.6)).astype(np.float64)
        if i == 0:
            m[:] = 0  # empty mask
            p[:] = 0  # nothing predicted at any threshold: U = 0
        probs.append(p)
        masks.append(m)
    return probs, masks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_reference(seed):
    rng = np.random.default_rng(seed)
    probs, masks = _random_case(rng)
    thresholds = eval_thresholds(0.3)
    acc = IoUAccumulator(thresholds)
    for p, m in zip(probs, masks):
        inter, union = intersection_union(torch.from_numpy(p), torch.from_numpy(m),
                                          torch.tensor(thresholds, dtype=torch.float64))
        acc.update(inter.numpy()[None], union.numpy()[None])
    # float32 probabilities vs Python-float thresholds compare in float32, in numpy as in torch.
    ref_overall, ref_prec, ref_mean = reference_eval(probs, masks, thresholds)
    for j in range(len(thresholds)):
        got = acc.at(j)
        assert got["overall_iou"] == pytest.approx(ref_overall[j], abs=1e-12)
        assert got["mean_iou"] == pytest.approx(ref_mean[j], abs=1e-9)  # fixed point 2**-32
        for c, cut in enumerate(PRECISION_CUTS):
            assert got["precision"][f"{cut:.1f}"] == pytest.approx(ref_prec[c, j], abs=1e-12)

    summary = summarize(acc, 0.3)
    best = int(np.argmax(ref_overall[:39]))
    assert summary["sweep"]["best"]["threshold"] == SWEEP_THRESHOLDS[best]
    assert summary["sweep"]["best"]["overall_iou"] == pytest.approx(ref_overall[best])
    assert summary["fixed"]["threshold"] == 0.3
    assert summary["fixed"]["overall_iou"] == pytest.approx(ref_overall[39])
    assert summary["sentences"] == len(probs)


def test_unsorted_thresholds_keep_their_order():
    rng = np.random.default_rng(3)
    p = torch.from_numpy(rng.random((17, 23)))
    m = torch.from_numpy(rng.random((17, 23)) < 0.4)
    thr = torch.tensor([0.7, 0.1, 0.5, 0.0], dtype=torch.float64)
    inter, union = intersection_union(p, m, thr)
    for j, t in enumerate(thr.tolist()):
        pred = p > t
        assert inter[j] == (pred & m).sum()
        assert union[j] == (pred | m).sum()


def test_accumulator_state_round_trip_is_a_sum():
    rng = np.random.default_rng(4)
    thresholds = eval_thresholds(0.5)
    k = len(thresholds)
    union = rng.integers(1, 100, size=(10, k))
    inter = (union * rng.random((10, k))).astype(np.int64)
    whole = IoUAccumulator(thresholds)
    whole.update(inter, union)
    a, b = IoUAccumulator(thresholds), IoUAccumulator(thresholds)
    a.update(inter[:4], union[:4])
    b.update(inter[4:], union[4:])
    merged = IoUAccumulator(thresholds)
    merged.load_state_tensor(a.state_tensor() + b.state_tensor())
    assert summarize(merged, 0.5) == summarize(whole, 0.5)  # exact: integer sums


def test_bad_threshold():
    with pytest.raises(ValueError, match="--threshold"):
        eval_thresholds(1.5)
