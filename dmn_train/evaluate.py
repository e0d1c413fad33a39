"""Evaluation: a checkpoint on a split of shards → metrics at the original image resolution.

Per sentence (:mod:`dmn_model.postprocess`, shared with ``dmn-predict``): the logits are resized
to the model input (S × S) if coarser, the valid region (``resized_size``, top-left) is cropped
and resized bilinearly to ``orig_size``, a sigmoid gives probabilities, and I / U against the
original-resolution mask are counted at every threshold of the sweep and at the fixed one (see
:mod:`dmn_train.metrics`). Under torchrun every rank evaluates its share of the split and the sums
are all-reduced.

Outputs in ``<out>`` (default ``runs/<name>/eval/<split>/``): ``metrics.json``,
``predictions.zarr`` (per-sentence ids, I and U per threshold, probability maps) and
``best_worst.png``. ``metrics_from_predictions`` recomputes the metrics from the zarr alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import zarr
from torch import Tensor, nn

from dmn_data.errors import DataError
from dmn_data.masks import decode_rle

from dmn_model.checkpoint import (CheckpointError, latest_run, load_checkpoint,
                                  model_from_checkpoint, run_checkpoint)
from dmn_model.postprocess import original_probs, to_input_size

from .distributed import DistInfo, all_reduce_sum, barrier, gather_to_main, unwrap
from .metrics import (IoUAccumulator, eval_thresholds, intersection_union, per_sentence_iou,
                      summarize)
from .plots import plot_prediction_grid

PREDICTIONS_FORMAT = "dmn-predictions/1"


@dataclass(frozen=True)
class EvalConfig:
    """What ``dmn-eval`` evaluates, and how. None = take it from the run."""

    split: str
    runs_root: str = "runs"  # where runs/latest lives
    run: str | None = None  # a run directory; default: <runs_root>/latest
    checkpoint: str | None = None  # a .pt file; default: the run's best.pt, else last.pt
    shards: str | None = None  # default: the shards the run was trained on
    size: int | None = None  # model input side S; default: the training size
    threshold: float = 0.5  # fixed probability threshold (the sweep is always computed too)
    batch_size: int = 16
    workers: int = 2
    out: str | None = None  # default: <run>/eval/<split>/
    device: str = "auto"
    predictions: bool = True  # write predictions.zarr
    grid: int = 6  # examples in each half (best, worst) of the PNG grid; 0 = no PNG
    # Language ablation: each ref's mask paired with another ref's sentence of the same image
    # (single-ref images left out); a model that reads the words must score far lower.
    ablate_language: bool = False
    progress: bool = True
    # bf16 autocast; None = the run's training setting (see :func:`autocast_context`).
    amp: bool | None = None
    verify_sha256: bool = True  # hash each shard as it is read, against the manifest
    cache_dir: str | None = None  # remote shards: keep a verified copy here
    # BatchNorm: "eval" (running statistics, batched) or "per-image" (the original's evaluation:
    # each sentence alone on its unpadded image, BatchNorm in training mode, i.e. the image's own
    # statistics; running statistics untouched). Writes to <split>-bn-per-image by default.
    bn_mode: str = "eval"

    def __post_init__(self) -> None:
        # nonsense numbers are refused here: --grid -1 used to loop forever, --size 0 was ignored
        if self.size is not None and self.size < 1:
            raise ValueError(f"--size must be >= 1, got {self.size}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.grid < 0:
            raise ValueError(f"--grid must be >= 0, got {self.grid}")
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"--bn-mode must be one of {', '.join(BN_MODES)}, got {self.bn_mode!r}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"--threshold must be in [0, 1), got {self.threshold}")


@dataclass(frozen=True)
class Resolved:
    """The concrete files an :class:`EvalConfig` refers to."""

    checkpoint: Path
    shards: str  # a folder, URL or pipe: command (dmn_data.location)
    out: Path
    size: int


def find_checkpoint(cfg: EvalConfig) -> tuple[Path, Path]:
    """(checkpoint file, run directory) that ``cfg`` names; the latest run's by default."""
    if cfg.checkpoint is not None:
        ckpt = Path(cfg.checkpoint)
        # A checkpoint inside <run>/checkpoints/ writes to <run>/eval/; elsewhere next to it.
        return ckpt, ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    run_dir = Path(cfg.run) if cfg.run is not None else latest_run(cfg.runs_root)
    if not run_dir.is_dir():
        raise CheckpointError(f"--run {run_dir} does not exist")
    return run_checkpoint(run_dir), run_dir


def resolve(cfg: EvalConfig, ckpt: dict, ckpt_path: Path, run_dir: Path) -> Resolved:
    """Shards, input size and output folder: the flags', else the training run's."""
    train_config = ckpt.get("train_config") or {}
    shards = cfg.shards or train_config.get("shards")
    if shards is None:
        raise CheckpointError(f"{ckpt_path} does not name its shards; pass --shards")
    size = cfg.size or train_config.get("size")
    if size is None:
        raise CheckpointError(f"{ckpt_path} does not name its input size; pass --size")
    name = f"{cfg.split}-ablate-language" if cfg.ablate_language else cfg.split
    name += "-bn-per-image" if cfg.bn_mode == "per-image" else ""
    out = Path(cfg.out) if cfg.out is not None else run_dir / "eval" / name
    return Resolved(checkpoint=ckpt_path, shards=str(shards), out=out, size=int(size))


def check_split(manifest: dict, split: str, shards: str | Path) -> None:
    splits = sorted(manifest.get("splits", {}))
    if split not in splits:
        raise DataError(f"split {split!r} is not in {shards} (choose one of {', '.join(splits)})")


def vocab_sha256(shards: Path) -> str:
    """sha256 of ``<shards>/vocab.json`` — what checkpoints record to pin their vocabulary."""
    path = Path(shards) / "vocab.json"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err.strerror}); pass the dataset folder "
                        "written by dmn-data build") from None


def check_vocab(ckpt: dict, shards: str | Path, source: str, found: str | None = None) -> None:
    """``found``: the shards' vocabulary sha256 when already known (remote shards)."""
    found = found or vocab_sha256(Path(shards))
    if ckpt["vocab_sha256"] != found:
        raise CheckpointError(
            f"{source} was trained with vocabulary sha256 {ckpt['vocab_sha256'][:12]}…, but "
            f"{shards}/vocab.json is {found[:12]}…: pass the --shards the run was trained on")


class PredictionWriter:
    """Streams one rank's per-sentence results into a zarr v3 group.

    Arrays: ``image_id``, ``ref_id``, ``sent_id`` ``(N,)`` int64; ``inter``, ``union`` ``(N, K)``
    int64 (K thresholds, listed in the group's attrs); ``prob`` ``(N, S, S)`` uint8 (probability
    × 255 at model resolution, valid region top-left), chunks of ``chunk`` sentences, zstd.
    """

    def __init__(self, path: Path, size: int, num_thresholds: int, chunk: int = 16) -> None:
        self.path = path
        self.group = zarr.open_group(str(path), mode="w", zarr_format=3)
        self.prob = self.group.create_array(
            "prob", shape=(0, size, size), chunks=(chunk, size, size), dtype="uint8",
            compressors=zarr.codecs.ZstdCodec(level=3))
        self.chunk = chunk
        self.pending: list[np.ndarray] = []
        self.columns: dict[str, list[np.ndarray]] = {
            k: [] for k in ("image_id", "ref_id", "sent_id", "inter", "union")}
        self.num_thresholds = num_thresholds

    def add(self, prob: np.ndarray, **columns: np.ndarray) -> None:
        """``prob`` ``(B, S, S)`` uint8; columns as the arrays above, B rows each."""
        for k, v in columns.items():
            self.columns[k].append(np.asarray(v, dtype=np.int64))
        self.pending.append(prob)
        if sum(len(p) for p in self.pending) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.prob.append(np.concatenate(self.pending), axis=0)
            self.pending = []

    def close(self) -> None:
        self._flush()
        for k, parts in self.columns.items():
            shape = (0, self.num_thresholds) if k in ("inter", "union") else (0,)
            data = np.concatenate(parts) if parts else np.zeros(shape, dtype=np.int64)
            self.group.create_array(k, data=data, compressors=zarr.codecs.ZstdCodec(level=3))


def merge_parts(parts: list[Path], out: Path, attrs: dict) -> None:
    """Concatenate the ranks' zarr groups (in rank order) into ``out`` and tag it with ``attrs``."""
    if out.exists():
        shutil.rmtree(out)
    if len(parts) == 1:
        os.replace(parts[0], out)
    else:
        groups = [zarr.open_group(str(p), mode="r") for p in parts]
        merged = zarr.open_group(str(out), mode="w", zarr_format=3)
        for k in ("image_id", "ref_id", "sent_id", "inter", "union"):
            merged.create_array(k, data=np.concatenate([g[k][:] for g in groups]),
                                compressors=zarr.codecs.ZstdCodec(level=3))
        first = groups[0]["prob"]
        total = sum(g["prob"].shape[0] for g in groups)
        prob = merged.create_array("prob", shape=(total, *first.shape[1:]), chunks=first.chunks,
                                   dtype="uint8", compressors=zarr.codecs.ZstdCodec(level=3))
        offset = 0
        for g in groups:
            n, step = g["prob"].shape[0], first.chunks[0] * 16
            for i in range(0, n, step):
                block = g["prob"][i:i + step]
                prob[offset + i:offset + i + len(block)] = block
            offset += n
        for p in parts:
            shutil.rmtree(p)
    zarr.open_group(str(out), mode="r+").attrs.update(attrs)


def autocast_context(amp: bool | None, device: torch.device):
    """The autocast context for ``amp``: True = bf16 on CUDA and CPU, False = fp32,
    None = the default (bf16 on CUDA, fp32 on CPU so CPU runs keep their fp32 numbers)."""
    if amp is None:
        amp = device.type == "cuda"
    if amp and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def enable_tf32(device: torch.device) -> None:
    """TF32 for the fp32 matmuls/convs left outside autocast (Ampere and newer); no-op on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@torch.inference_mode()
def predict(model: nn.Module, loader, device: torch.device, info: DistInfo, *, threshold: float,
            writer: PredictionWriter | None = None, keep: int = 0, max_batches: int = 0,
            amp: bool | None = False, progress: bool = False, bn_mode: str = "eval"
            ) -> tuple[IoUAccumulator, list[dict]]:
    """Run ``model`` over ``loader`` and count I / U per sentence at the original resolution.

    Args:
        model: the bare DMN (no DDP wrapper: ranks may see different numbers of batches).
        loader: an eval loader (each sentence once); batches as ``dmn_data.stream``.
        threshold: the fixed threshold; the sweep is always counted too.
        writer: receives per-sentence results when given.
        keep: how many best and worst sentences (IoU at ``threshold``) to return, with images.
        max_batches: stop after this many batches per rank (0 = all).
        amp: as :func:`autocast_context`.
        bn_mode: "eval", or "per-image" (see :class:`EvalConfig`; one forward per sentence).

    Returns:
        The accumulator summed over ranks, and on rank 0 the ``keep`` best then ``keep`` worst
        examples (dicts for :func:`plots.plot_prediction_grid`); ``[]`` elsewhere.
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    thresholds = eval_thresholds(threshold)
    fixed = thresholds.index(threshold)
    thr = torch.tensor(thresholds, dtype=torch.float64)
    acc = IoUAccumulator(thresholds)
    kept: list[dict] = []
    autocast = autocast_context(amp, device)
    batches = _progress(loader, progress and info.is_main, "eval")
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        images = batch["image"].to(device, non_blocking=True)
        if bn_mode == "per-image":
            with autocast, _per_image_batchnorm(model):
                logits = _one_by_one(model, images, batch)
        else:
            with autocast:
                logits = model(model.normalize(images), batch["tokens"].to(device),
                               batch["lengths"].to(device),
                               image_size=batch["resized_size"].to(device))
            logits = to_input_size(logits, images.shape[-2:])
        inter, union = [], []
        for b in range(images.shape[0]):
            full = original_probs(logits[b:b + 1], batch["resized_size"][b].tolist(),
                                  batch["orig_size"][b].tolist())
            gt = torch.from_numpy(decode_rle(batch["mask_rle"][b])).to(device)
            i_b, u_b = intersection_union(full, gt, thr)
            inter.append(i_b.cpu().numpy())
            union.append(u_b.cpu().numpy())
        inter_np, union_np = np.stack(inter), np.stack(union)
        acc.update(inter_np, union_np)
        prob = (torch.sigmoid(logits[:, 0]) * 255).round().to(torch.uint8).cpu().numpy()
        if writer is not None:
            writer.add(prob, image_id=batch["image_id"], ref_id=batch["ref_id"],
                       sent_id=batch["sent_id"], inter=inter_np, union=union_np)
        if keep:
            iou = per_sentence_iou(inter_np[:, fixed], union_np[:, fixed])
            kept = _extremes(kept + _rows(batch, prob, iou), keep)
    model.train(was_training)
    acc.load_state_tensor(all_reduce_sum(acc.state_tensor(), info, device))
    gathered = gather_to_main(kept, info) if keep else None
    if not keep or gathered is None:
        return acc, []
    return acc, _extremes([r for rows in gathered for r in rows], keep)


BN_MODES = ("eval", "per-image")


@contextlib.contextmanager
def _per_image_batchnorm(model: nn.Module):
    """BatchNorm layers in training mode (normalising by the batch's own statistics) with
    momentum 0, so their running statistics stay as they are; modes, momenta and
    ``num_batches_tracked`` restored on exit."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.momentum, None if m.num_batches_tracked is None
              else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.train()
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (training, momentum, tracked) in zip(norms, saved):
            m.train(training)
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _one_by_one(model: nn.Module, images: Tensor, batch: dict) -> Tensor:
    """The original's evaluation: each sentence alone (batch of one) on its image cropped to the
    valid region (no padding). Returns ``(B, 1, S, S)`` float32 logits on the padded input grid
    (the valid region top-left, the padding 0)."""
    device = images.device
    out = torch.zeros(images.shape[0], 1, *images.shape[-2:], device=device)
    for b in range(images.shape[0]):
        h, w = batch["resized_size"][b].tolist()
        n = int(batch["lengths"][b])
        logits = model(model.normalize(images[b:b + 1, :, :h, :w]),
                       batch["tokens"][b:b + 1, :n].to(device), batch["lengths"][b:b + 1].to(device))
        out[b:b + 1, :, :h, :w] = to_input_size(logits, (h, w))
    return out


def _rows(batch: dict, prob: np.ndarray, iou: np.ndarray) -> list[dict]:
    return [{"image": batch["image"][b].numpy(), "mask": batch["mask"][b].numpy(),
             "prob": prob[b], "resized_size": batch["resized_size"][b].tolist(),
             "sentence": batch["sentence"][b], "sent_id": int(batch["sent_id"][b]),
             "iou": float(iou[b])} for b in range(len(iou))]


def _extremes(rows: list[dict], keep: int) -> list[dict]:
    """The ``keep`` highest-IoU rows then the ``keep`` lowest (ties broken by sent_id)."""
    ranked = sorted(rows, key=lambda r: (-r["iou"], r["sent_id"]))
    if len(ranked) <= 2 * keep:
        return ranked
    return ranked[:keep] + ranked[-keep:]


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    total = len(iterable) if hasattr(iterable, "__len__") else None
    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False)


def evaluate(cfg: EvalConfig, info: DistInfo, device: torch.device,
             log: Callable[[str], None] = print) -> dict:
    """``dmn-eval``: evaluate a checkpoint on ``cfg.split`` and write the outputs (rank 0).

    Raises:
        CheckpointError: no run, or a missing/corrupt checkpoint, or a vocabulary mismatch.
        DataError: bad shards or a split the manifest lacks.
    """
    from dmn_data.stream import make_loader, read_dataset

    ckpt_path, run_dir = find_checkpoint(cfg)
    ckpt = load_checkpoint(ckpt_path)
    where = resolve(cfg, ckpt, ckpt_path, run_dir)
    if where.out.exists() and not where.out.is_dir():
        raise DataError(f"--out {where.out} is a file; pass a folder for the evaluation's outputs")
    dataset = read_dataset(where.shards)  # manifest and vocabulary, from wherever they live
    check_split(dataset.manifest, cfg.split, where.shards)
    check_vocab(ckpt, where.shards, str(where.checkpoint), found=dataset.vocab_sha256)
    model = model_from_checkpoint(ckpt, str(where.checkpoint)).to(device)
    loader = make_loader(where.shards, cfg.split, size=where.size, batch_size=cfg.batch_size,
                         train=False, workers=cfg.workers, rank=info.rank,
                         world_size=info.world_size, ablate_language=cfg.ablate_language,
                         verify_sha256=cfg.verify_sha256, cache_dir=cfg.cache_dir, dataset=dataset)
    if info.is_main:
        where.out.mkdir(parents=True, exist_ok=True)
        log(f"evaluating {where.checkpoint} (step {ckpt.get('step', '?')}) on {where.shards} "
            f"{cfg.split} at {where.size}px → {where.out}")
    barrier(info)
    thresholds = eval_thresholds(cfg.threshold)
    part = where.out / f".predictions.rank{info.rank}.zarr"
    writer = (PredictionWriter(part, where.size, len(thresholds)) if cfg.predictions else None)
    enable_tf32(device)
    amp = cfg.amp if cfg.amp is not None else (ckpt.get("train_config") or {}).get("amp")
    start = time.time()
    acc, extremes = predict(model, loader, device, info, threshold=cfg.threshold, writer=writer,
                            keep=cfg.grid, amp=amp, progress=cfg.progress, bn_mode=cfg.bn_mode)
    if writer is not None:
        writer.close()
    if acc.count == 0:  # summed over ranks: every rank raises alike
        shutil.rmtree(part, ignore_errors=True)
        why = " (the language ablation needs images with two or more refs)" if cfg.ablate_language else ""
        raise DataError(f"no sentence of {cfg.split!r} in {where.shards} was evaluated{why}; nothing to report")
    metrics = {
        "split": cfg.split, "checkpoint": str(where.checkpoint), "step": ckpt.get("step"),
        "shards": str(where.shards), "size": where.size, "vocab_sha256": ckpt["vocab_sha256"],
        "ablate_language": cfg.ablate_language, "bn_mode": cfg.bn_mode,
        **summarize(acc, cfg.threshold),
        "seconds": round(time.time() - start, 3), "world_size": info.world_size,
    }
    barrier(info)
    if info.is_main:
        if writer is not None:
            attrs = {"format": PREDICTIONS_FORMAT, "thresholds": list(thresholds),
                     "metrics": {k: v for k, v in metrics.items() if k not in ("fixed", "sweep")},
                     "threshold": cfg.threshold}
            merge_parts([where.out / f".predictions.rank{r}.zarr" for r in range(info.world_size)],
                        where.out / "predictions.zarr", attrs)
        _write_json(where.out / "metrics.json", metrics)
        if extremes:
            plot_prediction_grid(extremes, where.out / "best_worst.png", cfg.threshold,
                                 f"{cfg.split}: best {min(cfg.grid, len(extremes))} and worst "
                                 f"(IoU at threshold {cfg.threshold:g})")
    barrier(info)
    return metrics


def metrics_from_predictions(path: str | Path, threshold: float | None = None) -> dict:
    """Recompute ``metrics.json`` from a ``predictions.zarr`` without the model.

    ``threshold`` must be one the evaluation counted (the sweep or its fixed threshold).
    """
    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
        inter, union = group["inter"][:], group["union"][:]
    except Exception as err:  # zarr raises many types for a missing or foreign store
        raise DataError(f"{path}: not a readable predictions.zarr ({type(err).__name__}: "
                        f"{str(err)[:150]})") from None
    if attrs.get("format") != PREDICTIONS_FORMAT:
        raise DataError(f"{path}: format {attrs.get('format')!r}, expected {PREDICTIONS_FORMAT!r}")
    thresholds = [float(t) for t in attrs["thresholds"]]
    threshold = attrs["threshold"] if threshold is None else threshold
    if threshold not in thresholds:
        raise DataError(f"--threshold {threshold} was not counted in {path}; choose the fixed "
                        f"threshold {attrs['threshold']} or one of the sweep (0, 0.025, …, 0.95)")
    acc = IoUAccumulator(thresholds)
    acc.update(inter, union)
    meta = dict(attrs["metrics"])
    seconds, world = meta.pop("seconds", None), meta.pop("world_size", None)
    return {**meta, **summarize(acc, threshold), "seconds": seconds, "world_size": world}


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
