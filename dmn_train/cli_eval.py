"""``dmn-eval``: evaluate a run on a split (or recompute metrics from its predictions.zarr).

``dmn-eval --split testA`` alone evaluates ``runs/latest`` (best.pt, else last.pt) on the shards
it was trained on, at its training size. Works under ``torchrun``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .cli_train import Device, user_errors
from .distributed import (destroy_process_group, dist_info_from_env, init_process_group,
                          select_device)
from .evaluate import EvalConfig, evaluate, metrics_from_predictions
from .metrics import PRECISION_CUTS

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Evaluate a DMN checkpoint: overall/mean IoU and precision@X.")
console = Console()
err_console = Console(stderr=True)
Opt = typer.Option


@app.command()
@user_errors
def eval_cmd(
    split: Annotated[Optional[str], Opt(help="Split to evaluate, e.g. val, testA.")] = None,
    run: Annotated[Optional[Path], Opt("--run", "--run-dir", help="Run directory (default: "
                                       "runs/latest). Under torchrun spell it --run-dir (torchrun "
                                       "takes --run for its --run-path).")] = None,
    checkpoint: Annotated[Optional[Path], Opt(help="Checkpoint file (default: the run's best.pt, else last.pt).")] = None,
    shards: Annotated[Optional[str], Opt(help="Dataset folder, http(s)/fsspec URL or 'pipe:CMD {}' "
                                         "(default: the one the run trained on).")] = None,
    size: Annotated[Optional[int], Opt(help="Model input side (default: the training size).")] = None,
    threshold: Annotated[Optional[float], Opt(help="Fixed probability threshold (default: 0.5).")] = None,
    batch_size: Annotated[int, Opt(help="Sentences per batch per process.")] = 16,
    workers: Annotated[int, Opt("--workers", "-j", help="Data loading processes.")] = 2,
    out: Annotated[Optional[Path], Opt(help="Output folder (default: <run>/eval/<split>).")] = None,
    runs_root: Annotated[Path, Opt(help="Folder holding the runs and the 'latest' pointer.")] = Path("runs"),
    device: Annotated[Device, Opt(help="auto = this process's GPU if any, else CPU.")] = Device.auto,
    predictions: Annotated[bool, Opt("--predictions/--no-predictions", help="Write predictions.zarr.")] = True,
    grid: Annotated[int, Opt(help="Best and worst examples drawn in best_worst.png (0 = none).")] = 6,
    ablate_language: Annotated[bool, Opt("--ablate-language", help="Language ablation: pair each "
                                         "mask with another object's sentence from the same image "
                                         "(writes to <run>/eval/<split>-ablate-language).")] = False,
    from_predictions: Annotated[Optional[Path], Opt(help="Recompute the metrics from a predictions.zarr, without the model.")] = None,
    progress: Annotated[bool, Opt("--progress/--no-progress", help="Progress bar.")] = True,
    amp: Annotated[Optional[bool], Opt("--amp/--no-amp", help="bf16 autocast (default: the run's training setting).")] = None,
    verify_sha256: Annotated[bool, Opt("--verify-sha256/--no-verify-sha256",
                                       help="Check each shard's sha256 against the manifest as it is read.")] = True,
    cache_dir: Annotated[Optional[Path], Opt(help="Remote shards: keep each verified shard here.")] = None,
    bn_mode: Annotated[str, Opt(help="BatchNorm at evaluation: 'eval' (running statistics, "
                                "batched) or 'per-image' (the original DMN's: each sentence alone "
                                "on its unpadded image, BatchNorm on the image's own statistics; "
                                "slower; writes to <run>/eval/<split>-bn-per-image).")] = "eval",
) -> None:
    """Write metrics.json, predictions.zarr and best_worst.png to <run>/eval/<split>/."""
    if from_predictions is not None:
        metrics = metrics_from_predictions(from_predictions, threshold)
        print_table(metrics)
        return
    if split is None:
        raise ValueError("--split is required (e.g. --split val), unless --from-predictions")
    cfg = EvalConfig(split=split, runs_root=str(runs_root), run=str(run) if run else None,
                     checkpoint=str(checkpoint) if checkpoint else None,
                     shards=str(shards) if shards else None, size=size,
                     threshold=0.5 if threshold is None else threshold, batch_size=batch_size,
                     workers=workers, out=str(out) if out else None, device=device.value,
                     predictions=predictions, grid=grid, ablate_language=ablate_language,
                     progress=progress, amp=amp, bn_mode=bn_mode,
                     verify_sha256=verify_sha256, cache_dir=str(cache_dir) if cache_dir else None)
    info = dist_info_from_env()
    device_ = select_device(info, cfg.device)
    init_process_group(info, device_)
    try:
        metrics = evaluate(cfg, info, device_,
                           log=lambda m: err_console.print(m, highlight=False, soft_wrap=True))
    finally:
        destroy_process_group(info)
    if info.is_main:
        print_table(metrics)


def print_table(metrics: dict) -> None:
    """The fixed-threshold and best-of-sweep numbers side by side."""
    fixed, best = metrics["fixed"], metrics["sweep"]["best"]
    ablation = " (language ablation)" if metrics.get("ablate_language") else ""
    table = Table(title=f"{metrics['split']}{ablation}: {metrics['sentences']} sentences — "
                        f"{metrics['checkpoint']} (step {metrics['step']})")
    table.add_column("metric")
    table.add_column(f"threshold {fixed['threshold']:g}", justify="right")
    table.add_column(f"best of sweep: {best['threshold']:g}*", justify="right")
    table.add_row("overall IoU (ΣI/ΣU)", f"{fixed['overall_iou']:.4f}", f"{best['overall_iou']:.4f}")
    table.add_row("mean IoU", f"{fixed['mean_iou']:.4f}", f"{best['mean_iou']:.4f}")
    for cut in PRECISION_CUTS:
        key = f"{cut:.1f}"
        table.add_row(f"precision@{key}", f"{fixed['precision'][key]:.4f}",
                      f"{best['precision'][key]:.4f}")
    console.print(table)
    console.print("* threshold chosen on this split, as the original code reported it (optimistic)")


def main() -> None:
    app(prog_name="dmn-eval")


if __name__ == "__main__":
    sys.exit(main())
