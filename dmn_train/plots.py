"""PNG figures: training curves from ``metrics.jsonl`` and a grid of best/worst predictions.

matplotlib runs on the Agg backend (files only, no display), imported lazily so that importing
the trainer stays fast.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Atomic, so a viewer never reads half a PNG while training refreshes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    os.replace(tmp, path)


def plot_curves(records: list[dict], path: str | Path) -> None:
    """Training loss (per log interval) and validation IoU (per evaluation) against the step.

    Args:
        records: ``metrics.jsonl`` rows; ``kind == "train"`` rows need ``step`` and ``loss``,
            ``kind == "eval"`` rows ``step``, ``overall_iou`` and ``mean_iou``.
        path: the PNG to (re)write.
    """
    plt = _pyplot()
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    ax_loss.grid(alpha=0.3)
    if evals:
        steps = [r["step"] for r in evals]
        ax_iou.plot(steps, [r["overall_iou"] for r in evals], "o-", label="overall IoU")
        ax_iou.plot(steps, [r["mean_iou"] for r in evals], "s--", label="mean IoU")
        ax_iou.legend(loc="lower right")
    split = evals[-1].get("split", "val") if evals else "val"
    threshold = evals[-1].get("threshold", 0.5) if evals else 0.5
    ax_iou.set(xlabel="step", ylabel="IoU", ylim=(0, 1),
               title=f"{split} IoU (threshold {threshold:g})")
    ax_iou.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)


def _overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """``image`` (H, W, 3) uint8, dimmed outside ``mask`` (H, W) bool and tinted towards
    ``color`` inside it (dimming keeps the mask visible on objects of the tint's own colour)."""
    out = image.astype(np.float32) * 0.35
    out[mask] = 0.5 * image[mask] + 0.5 * np.asarray(color, dtype=np.float32)
    return out.astype(np.uint8)


def plot_prediction_grid(rows: list[dict], path: str | Path, threshold: float, title: str) -> None:
    """One row per example: image, ground truth overlay, predicted overlay.

    Args:
        rows: dicts with ``image`` (3, S, S) uint8, ``mask`` (S, S) uint8, ``prob`` (S, S) uint8
            (probability × 255), ``resized_size`` (h', w') of the valid region, ``sentence``,
            ``iou`` (at the original resolution).
        path: the PNG to write.
        threshold: probability above which a pixel is predicted foreground.
        title: figure title.
    """
    plt = _pyplot()
    n = max(len(rows), 1)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, row in enumerate(rows):
        h, w = (int(v) for v in row["resized_size"])
        image = np.ascontiguousarray(np.asarray(row["image"]).transpose(1, 2, 0)[:h, :w])
        gt = np.asarray(row["mask"])[:h, :w] > 0
        pred = np.asarray(row["prob"])[:h, :w].astype(np.float32) / 255.0 > threshold
        axes[i, 0].imshow(image)
        axes[i, 0].set_title("\n".join(textwrap.wrap(row["sentence"], 30)[:3]), fontsize=8)
        axes[i, 1].imshow(_overlay(image, gt, (0, 255, 0)))
        axes[i, 1].set_title("ground truth", fontsize=8)
        axes[i, 2].imshow(_overlay(image, pred, (255, 0, 0)))
        axes[i, 2].set_title(f"prediction (IoU {row['iou']:.2f})", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the suptitle
    _save(fig, Path(path))
    plt.close(fig)
