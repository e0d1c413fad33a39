"""Training: one config dataclass and one loop that reads top to bottom.

config → distributed/device setup → data → model (fresh, ``--init-from`` or resumed) → loop of
(LR for this step, ``accum_iters`` forward/backward passes, optimizer step, log, evaluate,
checkpoint). Rank 0 logs, writes files and checkpoints; every rank evaluates its share of the
validation split (sums all-reduced), so no rank idles at a barrier through a long evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dmn_data.errors import DataError

from dmn_model import checkpoint as ck
from dmn_model.checkpoint import CheckpointError
from dmn_model.config import DMNConfig, preset
from dmn_model.network import DMN
from dmn_model.pretrained import BackboneWeights, load_backbone_weights, resolve_weights
from dmn_model.sru import exclude_recurrence_from_compile

from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_from_main, unwrap
from .evaluate import autocast_context, enable_tf32, check_split, predict
from .losses import masked_bce_with_logits, soft_iou_loss
from .plots import plot_curves

SCHEDULES = ("constant", "cosine", "plateau")
LOWRES_LOSSES = ("pooled", "upsampled")


@dataclass(frozen=True)
class TrainConfig:
    """Every training knob, once. Defaults are the ``paper`` preset (the original README)."""

    shards: str  # dataset folder written by dmn-data build (manifest.json, vocab.json, splits)
    preset: str = "paper"  # model + training preset this run started from
    split: str = "train"
    val_split: str | None = "val"  # None: no evaluation, best.pt is never written
    out: str = ""  # run directory; "" = runs/<dataset>-<preset>-<timestamp>
    # Data. The original trained at 512 px, batch 1, no flips.
    size: int = 512
    batch_size: int = 1  # per rank, per micro-step
    workers: int = 2
    flip: bool = False  # horizontal flips (the stream swaps left/right words)
    epoch_batches: int | None = None  # batches per epoch per rank; None = one pass over the split
    # Length: optimizer steps, or epochs when steps == 0.
    steps: int = 0
    epochs: int = 24  # the released UNC weights: 24 low-res epochs (then 4 high-res)
    accum_iters: int = 1  # micro-batches per optimizer step (original --accum-iters)
    # Optimizer (Adam, as the original) and LR schedule, a pure function of the step.
    lr: float = 1e-5
    weight_decay: float = 0.0
    # constant | cosine (to min_lr at the last step) | plateau (the original's ReduceLROnPlateau:
    # lr × plateau_factor once 1 − val overall IoU has not improved for more than
    # plateau_patience evaluations; not below min_lr)
    schedule: str = "constant"
    plateau_patience: int = 2
    plateau_factor: float = 0.1
    warmup_steps: int = 0  # linear warmup from 0
    min_lr: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    # Loss: BCE (or the original --iou-loss) on the output + aux_weight × BCE on the low-res
    # logits of a high-res model.
    iou_loss: bool = False
    aux_weight: float = 0.0
    # How a loss meets logits coarser than the mask (the low-res output, or the aux term):
    # "pooled" (the mask area-averaged to the logits' grid) or "upsampled" (the original's: the
    # logits resized bilinearly to the input size). See dmn_train.losses.
    lowres_loss: str = "pooled"
    # Start from another run's weights (high-res stage from the low-res checkpoint).
    init_from: str | None = None
    # Backbone weights of a fresh run (not --init-from/--resume): auto (timm's pretrained weights
    # for a timm backbone, through the Hugging Face cache; random for tiny_cnn), a timm tag,
    # hf-hub:<repo>, a weights file, or none (random init). See dmn_model.pretrained.
    pretrained: str = "auto"
    # Bookkeeping.
    log_every: int = 50  # steps per log line / metrics.jsonl row
    eval_every: int = 0  # steps between evaluations; 0 = once per epoch
    save_every: int = 0  # steps between last.pt writes; 0 = at every evaluation
    eval_batches: int = 0  # cap on validation batches per rank (0 = the whole split)
    eval_batch_size: int = 0  # 0 = batch_size
    threshold: float = 0.5  # validation threshold; best.pt maximises overall IoU at it
    seed: int = 1111  # the original's seed
    # Runtime.
    device: str = "auto"  # auto | cpu | cuda
    amp: bool | None = None  # bf16 autocast: True = on (CUDA or CPU), None = on for CUDA only
    compile: str = "none"  # torch.compile: none | backbone | all (see COMPILE_MODES)
    progress: bool = True  # progress bar on rank 0
    verify_sha256: bool = True  # hash each shard as it is read, against the manifest
    cache_dir: str | None = None  # remote shards: keep a verified copy here (later epochs read it)

    def __post_init__(self) -> None:
        positive = ("size", "batch_size", "epochs", "accum_iters", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("steps", "warmup_steps", "eval_every", "save_every", "eval_batches",
                     "eval_batch_size", "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if isinstance(self.compile, bool):  # config.json of runs from before the modes
            object.__setattr__(self, "compile", "backbone" if self.compile else "none")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"--compile must be one of {', '.join(COMPILE_MODES)}, "
                             f"got {self.compile!r}")
        if self.lowres_loss not in LOWRES_LOSSES:
            raise ValueError(f"--lowres-loss must be one of {', '.join(LOWRES_LOSSES)}, "
                             f"got {self.lowres_loss!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"--plateau-factor must be in (0, 1), got {self.plateau_factor}")
        if self.plateau_patience < 0:
            raise ValueError(f"--plateau-patience must be >= 0, got {self.plateau_patience}")
        if self.schedule == "plateau" and self.val_split is None:
            raise ValueError("--schedule plateau follows the validation IoU: it needs a "
                             "--val-split (not --no-val)")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= --min-lr <= --lr and --lr > 0, got lr={self.lr}, "
                             f"min_lr={self.min_lr}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"--threshold must be in [0, 1), got {self.threshold}")
        # a negative clip norm flips the gradient (ascent), a negative weight rewards a worse loss
        for name in ("grad_clip", "aux_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(self, name)}")


#: ``--compile`` modes. ``backbone``: ``torch.compile`` the visual backbone, the fusion (dynamic
#: filters + decomposed 1×1 conv) and the upsampling module, each on its own; the recurrent nets
#: stay eager (the SRU is a fused kernel / loop already, cuDNN runs the LSTM). ``all``: the whole
#: model as one ``torch.compile`` (DDP included), the old ``--compile``; the SRU recurrence is
#: still left out (``exclude_recurrence_from_compile``): tracing its step loop made compiling the paper
#: model take minutes.
COMPILE_MODES = ("none", "backbone", "all")


def compile_model(model: DMN, train_model: nn.Module, mode: str) -> nn.Module:
    """Apply ``--compile mode`` and return the module to train with.

    ``backbone`` compiles ``model``'s submodules in place (``nn.Module.compile``: state dict keys
    unchanged), so evaluation runs them compiled too; ``all`` wraps ``train_model``.
    """
    if mode != "none":
        exclude_recurrence_from_compile()
    if mode == "all":
        return torch.compile(train_model)
    if mode == "backbone":
        model.backbone.compile()
        # fused_input is a method, not a forward: compile it as a bound function on this instance
        model.synthesis.fused_input = torch.compile(model.synthesis.fused_input)
        if model.upsampling is not None:
            model.upsampling.compile()
    return train_model


#: Training-side presets; the model side is ``dmn_model.config.preset`` of the same name.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # The original's low-res loss and its ReduceLROnPlateau (patience 2, ×0.1, once per epoch).
    "paper": dict(lowres_loss="upsampled", schedule="plateau"),
    # For the toy dataset on 2 CPU cores. Measured (BENCHMARKS.md, "The toy run"): 2,200 steps
    # (6 epochs of toy at batch 32) of Adam 2e-3 with 200 warmup steps and a cosine decay reach
    # held-out oIoU 0.90-0.92 for seeds 0, 1 and 2 in ~8 min; the constant 1e-3 of before ended
    # at 0.81-0.85 after 2,000 steps, and still 0.81-0.90 after 2,500 cosine steps at 1e-3.
    # The stride-32 auxiliary BCE (0.5 in the calibration prototype) measured worse here (plain
    # tiny_cnn: 0.47 vs 0.52).
    "tiny": dict(size=96, batch_size=32, lr=2e-3, schedule="cosine", warmup_steps=200, epochs=6,
                 aux_weight=0.0, log_every=20, eval_every=200, eval_batch_size=64, seed=0),
}


def train_config(preset_name: str, shards: str, **overrides: Any) -> TrainConfig:
    """The preset's TrainConfig with ``overrides`` (None values are ignored)."""
    if preset_name not in TRAIN_PRESETS:
        raise ValueError(f"unknown --preset {preset_name!r}; choose one of {sorted(TRAIN_PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return TrainConfig(shards=shards, preset=preset_name, **{**TRAIN_PRESETS[preset_name], **given})


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then constant or cosine.
    ``plateau`` is ``cfg.lr`` after warmup here, scaled by :class:`_Plateau`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule in ("constant", "plateau"):
        return cfg.lr
    span = max(total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


class _Plateau:
    """The original's ``ReduceLROnPlateau`` on 1 − validation overall IoU (mode min, PyTorch's
    relative threshold 1e-4), applied as a scale on :func:`lr_at` so warmup still works. Its state
    goes into checkpoints (``scheduler["plateau"]``) and comes back on ``--resume``."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.scale, self.best, self.bad = 1.0, math.inf, 0

    def lr(self, step: int, total_steps: int) -> float:
        base = lr_at(step, self.cfg, total_steps)
        if self.cfg.schedule != "plateau":
            return base
        return max(base * self.scale, min(self.cfg.min_lr, base))

    def observe(self, val_iou: float) -> bool:
        """After an evaluation: True when the lr was just reduced."""
        if self.cfg.schedule != "plateau":
            return False
        error = 1.0 - val_iou
        if error < self.best * (1 - 1e-4):
            self.best, self.bad = error, 0
            return False
        self.bad += 1
        if self.bad > self.cfg.plateau_patience:
            self.scale *= self.cfg.plateau_factor
            self.bad = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad = float(state["scale"]), float(state["best"]), int(state["bad"])


def compute_loss(model: nn.Module, batch: dict, device: torch.device, cfg: TrainConfig,
                 autocast) -> torch.Tensor:
    """The training loss of one micro-batch (a scalar float32 tensor)."""
    images = batch["image"].to(device, non_blocking=True)
    target = batch["mask"].to(device, non_blocking=True)
    valid = batch["valid"].to(device, non_blocking=True)
    # channels_last on every device: cuDNN and oneDNN (CPU) both run convolutions faster in it
    # (tiny preset, 2 CPU cores: 153 → 180 samples/s, BENCHMARKS.md).
    x = unwrap(model).normalize(images).contiguous(memory_format=torch.channels_last)
    with autocast:
        logits, lowres = model(x, batch["tokens"].to(device), batch["lengths"].to(device),
                               return_aux=True, image_size=batch["resized_size"].to(device))
    main = soft_iou_loss if cfg.iou_loss else masked_bce_with_logits
    upsample = cfg.lowres_loss == "upsampled"
    loss = main(logits.float(), target, valid, upsample=upsample)
    if cfg.aux_weight and lowres is not logits:
        loss = loss + cfg.aux_weight * masked_bce_with_logits(lowres.float(), target, valid,
                                                              upsample=upsample)
    return loss


def default_run_dir(cfg: TrainConfig, runs_root: str = "runs") -> Path:
    from dmn_data.location import Location

    name = Location.parse(cfg.shards).name
    return Path(runs_root) / f"{name}-{cfg.preset}-{datetime.now():%Y%m%d-%H%M%S}"


def _read_metrics(path: Path, up_to_step: int) -> list[dict]:
    """metrics.jsonl rows up to ``up_to_step`` (rows after the resumed checkpoint are dropped)."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            int(row["step"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"--resume: {path} line {number} is not a metrics row (truncated?); delete that "
                             "line (or the file, losing the curves) and rerun") from None
        rows.append(row)
    return [r for r in rows if r["step"] <= up_to_step]


def _check_new_run_dir(out: Path) -> None:
    """Refuse, before anything is written, an ``--out`` that is a file or a folder with other
    content than a dmn-train run: its config.json and the parent's ``latest`` would be replaced."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder for the run")
    # an empty checkpoints/ is what a run killed before writing its config.json leaves
    if not out.is_dir() or all(p.name == "checkpoints" and p.is_dir() and not any(p.iterdir()) for p in out.iterdir()):
        return
    try:
        stored = json.loads((out / "config.json").read_text(encoding="utf-8"))
        ours = isinstance(stored, dict) and {"train", "model"} <= stored.keys()
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise ValueError(f"--out {out} exists and is not a dmn-train run; nothing was written: "
                         "choose a new or empty folder")


def _remove_stale_tmp(folder: Path) -> None:
    """Remove ``.<name>.<pid>.tmp`` files left by a process that was killed while writing a
    checkpoint; a live writer's (its pid still runs) are kept."""
    for tmp in folder.glob(".*.tmp"):
        parts = tmp.name.rsplit(".", 2)
        pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
        if pid is not None and pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # another user's live process
        tmp.unlink(missing_ok=True)


def _payload(model, optimizer, cfg, model_cfg, step, epoch, best, vocab_sha, vocab, lr,
             backbone_weights, plateau):
    return {
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": {"kind": cfg.schedule, "lr": lr, "base_lr": cfg.lr,
                      "warmup_steps": cfg.warmup_steps, "min_lr": cfg.min_lr,
                      "plateau": plateau.state_dict()},
        "step": step, "epoch": epoch, "best_val_iou": best,
        "model_config": dataclasses.asdict(model_cfg), "train_config": dataclasses.asdict(cfg),
        "vocab_sha256": vocab_sha, "vocab_size": len(vocab), "vocab": list(vocab),
        "backbone_weights": backbone_weights, "rng": ck.rng_state(),
    }


def init_weights_from(model: DMN, path: str, vocab_sha: str, log: Callable[[str], None],
                      vocab: list[str] | None = None) -> dict | None:
    """Load every tensor of checkpoint ``path`` whose name and shape match (low → high res).

    A checkpoint trained on another vocabulary (another dataset: the original fine-tuned unc+,
    gref and referit from the UNC weights) gives its word embeddings by token: each token of
    ``vocab`` (the shards') that the checkpoint's vocabulary holds gets its row, the others keep
    their fresh initialisation. Returns where that checkpoint's backbone weights came from (its
    ``backbone_weights``).
    """
    ckpt = ck.load_checkpoint(path)
    state = dict(ckpt["model"])
    if ckpt["vocab_sha256"] != vocab_sha:
        theirs = ckpt.get("vocab")
        if not isinstance(theirs, list) or vocab is None or "embedding.weight" not in state:
            raise CheckpointError(
                f"--init-from {path} was trained with another vocabulary (sha256 "
                f"{ckpt['vocab_sha256'][:12]}…, shards have {vocab_sha[:12]}…) and does not hold "
                "its token list (checkpoints written before tokens were stored): train on shards "
                "with its vocabulary, or re-save it with a current dmn-train")
        state["embedding.weight"], carried = _embeddings_by_token(
            model.embedding.weight.detach(), state["embedding.weight"], theirs, vocab)
        known = set(theirs)
        new = [t for t in vocab if t not in known]
        log(f"--init-from {path}: another vocabulary ({len(theirs)} tokens → {len(vocab)}): "
            f"{carried} word embeddings carried over by token, {len(new)} new"
            + (f" (e.g. {new[:5]})" if new else ""))
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matching, strict=False)
    log(f"--init-from {path}: loaded {len(matching)}/{len(own)} tensors "
        f"({len(own) - len(matching)} new, e.g. {sorted(set(own) - set(matching))[:3]})")
    return ckpt.get("backbone_weights")


def _embeddings_by_token(fresh: torch.Tensor, old: torch.Tensor, old_vocab: list[str],
                         vocab: list[str]) -> tuple[torch.Tensor, int]:
    """``fresh`` (the new model's embedding) with the rows of ``old`` copied for every token the
    two vocabularies share (``<pad>``/``<unk>`` included). Returns it and the number copied."""
    if old.shape[0] != len(old_vocab) or old.shape[1] != fresh.shape[1]:
        raise CheckpointError(f"--init-from: its word embedding {tuple(old.shape)} does not fit "
                              f"its {len(old_vocab)}-token vocabulary and this model's "
                              f"{fresh.shape[1]}-wide embedding")
    index = {t: i for i, t in enumerate(old_vocab)}
    out = fresh.clone()
    pairs = [(i, index[t]) for i, t in enumerate(vocab) if t in index]
    if pairs:
        rows = torch.tensor([p[0] for p in pairs])
        out[rows] = old[torch.tensor([p[1] for p in pairs])].to(out.dtype)
    return out, len(pairs)


def backbone_weights_record(weights: BackboneWeights | None, requested: str) -> dict:
    """``backbone_weights`` of a fresh run's checkpoints: the resolved file, or random init."""
    if weights is not None:
        return weights.to_dict()
    return {"requested": requested, "name": None, "hub_id": None, "file": None, "sha256": None}


@dataclass
class TrainResult:
    model: DMN  # the trained model (bare, on its device; this rank's replica under DDP)
    step: int
    run_dir: Path
    metrics: dict  # the last evaluation's row of metrics.jsonl ({} without --val-split)


def train(cfg: TrainConfig, model_cfg: DMNConfig, info: DistInfo, device: torch.device, *,
          resume: bool = False, log: Callable[[str], None] = print) -> TrainResult:
    """Train ``model_cfg`` as ``cfg`` says.

    With ``resume``, ``cfg.out`` must hold a run: model, optimizer, step, RNG states and
    metrics.jsonl continue from its ``last.pt``.

    Raises:
        CheckpointError / DataError / ValueError: bad checkpoint, shards or settings.
    """
    from dmn_data.location import Location
    from dmn_data.stream import make_loader, read_dataset

    # ---- run directory ------------------------------------------------------------------------
    # Local folders absolute, so dmn-eval finds the shards from any working directory.
    cfg = dataclasses.replace(cfg, shards=Location.parse(cfg.shards).canonical())
    if not cfg.out:
        # Every rank must agree on the timestamped name: rank 0 picks it.
        cfg = dataclasses.replace(cfg, out=broadcast_from_main(str(default_run_dir(cfg)), info))
    out = Path(cfg.out)
    last_path = ck.checkpoint_dir(out) / ck.LAST
    if resume and not last_path.is_file():
        raise CheckpointError(f"--resume: {last_path} does not exist (nothing to resume; "
                              "drop --resume to start a new run)")
    if not resume and last_path.is_file():
        raise CheckpointError(f"{out} already holds a run; pass --resume to continue it "
                              "or choose another --out")
    if not resume:
        _check_new_run_dir(out)
    if info.is_main and last_path.parent.is_dir():
        _remove_stale_tmp(last_path.parent)
    # Before any data is read: a fresh run without --init-from needs its backbone weights, and a
    # missing file or an offline cache should cost seconds, not a data pipeline start-up.
    fresh = not resume and not cfg.init_from
    weights = resolve_weights(model_cfg.backbone, cfg.pretrained) if fresh else None
    shards = cfg.shards
    dataset = read_dataset(shards)  # manifest and vocabulary, from wherever the shards live
    check_split(dataset.manifest, cfg.split, shards)
    if cfg.val_split is not None:
        check_split(dataset.manifest, cfg.val_split, shards)
    vocab_sha = dataset.vocab_sha256

    # ---- data ---------------------------------------------------------------------------------
    loader = make_loader(shards, cfg.split, size=cfg.size, batch_size=cfg.batch_size,
                         train=True, workers=cfg.workers, seed=cfg.seed, rank=info.rank,
                         world_size=info.world_size, flip=cfg.flip,
                         epoch_batches=cfg.epoch_batches, pin_memory=device.type == "cuda",
                         verify_sha256=cfg.verify_sha256, cache_dir=cfg.cache_dir,
                         dataset=dataset)
    val_loader = None
    if cfg.val_split is not None:
        val_loader = make_loader(shards, cfg.val_split, size=cfg.size,
                                 batch_size=cfg.eval_batch_size or cfg.batch_size, train=False,
                                 workers=cfg.workers, rank=info.rank, world_size=info.world_size,
                                 verify_sha256=cfg.verify_sha256, cache_dir=cfg.cache_dir,
                                 dataset=dataset)
    steps_per_epoch = len(loader) // cfg.accum_iters
    if steps_per_epoch < 1:
        raise DataError(f"{cfg.split} gives {len(loader)} batches per rank, fewer than "
                        f"--accum-iters {cfg.accum_iters}: lower --batch-size or --accum-iters")
    total_steps = cfg.steps or cfg.epochs * steps_per_epoch
    eval_every = cfg.eval_every or steps_per_epoch
    save_every = cfg.save_every or eval_every

    # ---- model, optimizer, state --------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed + info.rank)
    np.random.seed(cfg.seed + info.rank)
    model = DMN(model_cfg, len(loader.vocab))
    backbone_weights: dict | None = None
    if fresh:
        if weights is not None:
            load_backbone_weights(model.backbone, model_cfg, weights)
        backbone_weights = backbone_weights_record(weights, cfg.pretrained)
        if info.is_main:
            log("backbone weights: " + (weights.describe() if weights is not None else
                f"random init ({model_cfg.backbone}, --pretrained {cfg.pretrained})"))
    elif cfg.init_from and not resume:
        backbone_weights = init_weights_from(model, cfg.init_from, vocab_sha,
                                             log if info.is_main else _quiet, list(loader.vocab))
    model.to(device)
    model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                 weight_decay=cfg.weight_decay)
    step, best = 0, -1.0
    plateau = _Plateau(cfg)
    if resume:
        state = ck.load_checkpoint(last_path, map_location=device)
        missing = [k for k in ("optimizer", "step", "best_val_iou", "rng") if k not in state]
        if missing:
            raise CheckpointError(f"--resume: {last_path} lacks {', '.join(missing)} (a training checkpoint holds "
                                  "them); start a new run with --init-from it instead")
        if state["vocab_sha256"] != vocab_sha:
            raise CheckpointError(f"--resume: {last_path} was trained on another vocabulary "
                                  f"than {shards}/vocab.json")
        ck.load_weights(model, state["model"], last_path)
        backbone_weights = state.get("backbone_weights")
        optimizer.load_state_dict(state["optimizer"])
        step, best = int(state["step"]), float(state["best_val_iou"])
        if "plateau" in (state.get("scheduler") or {}):
            plateau.load_state_dict(state["scheduler"]["plateau"])
        ck.set_rng_state(state["rng"])
    train_model: nn.Module = model
    if info.enabled:
        # The low-res head gets no gradient when a high-res model's aux loss is off.
        unused = model_cfg.high_res and not cfg.aux_weight
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=unused)
    train_model = compile_model(model, train_model, cfg.compile)
    autocast = autocast_context(cfg.amp, device)
    enable_tf32(device)

    # ---- files (rank 0) -----------------------------------------------------------------------
    metrics_path, curves_path = out / "metrics.jsonl", out / "curves.png"
    records: list[dict] = []
    if info.is_main:
        ck.checkpoint_dir(out).mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(
            {"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg),
             "shards": shards, "vocab_sha256": vocab_sha,
             "world_size": info.world_size, "backbone_weights": backbone_weights},
            indent=1) + "\n", encoding="utf-8")
        ck.update_latest(out)
        records = _read_metrics(metrics_path, step)
        _rewrite_jsonl(metrics_path, records)
        n = sum(p.numel() for p in model.parameters())
        log(f"run {out} | {n / 1e6:.2f} M params | {steps_per_epoch} steps/epoch | "
            f"{total_steps} steps | {'resuming at step ' + str(step) if resume else 'fresh'} | "
            f"{info.layout()} on {device} | shards {shards}")
        log(f"optimizer step: {cfg.batch_size * cfg.accum_iters * info.world_size} sentences "
            f"(--batch-size {cfg.batch_size} × --accum-iters {cfg.accum_iters} × "
            f"{info.world_size} process{'es' if info.world_size > 1 else ''}) | Adam lr "
            f"{cfg.lr:g}, {cfg.schedule} schedule" + (f", {cfg.warmup_steps} warmup steps"
                                                      if cfg.warmup_steps else ""))
    barrier(info)

    def record(row: dict) -> None:
        records.append(row)
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def save(name: str, lr: float) -> None:
        ck.save_checkpoint(ck.checkpoint_dir(out) / name, _payload(
            model, optimizer, cfg, model_cfg, step, step // steps_per_epoch, best, vocab_sha,
            loader.vocab, lr, backbone_weights, plateau))

    # ---- the loop -----------------------------------------------------------------------------
    bar = _bar(total_steps, step, cfg.progress and info.is_main)
    last_metrics: dict = {}
    interval_loss, interval_steps, interval_samples, interval_start = 0.0, 0, 0, time.time()
    train_model.train()
    while step < total_steps:
        epoch = step // steps_per_epoch
        loader.set_epoch(epoch)  # the epoch's shard draws and shuffles follow from (seed, epoch)
        batches = iter(loader)
        # Resuming mid-epoch: skip the micro-batches the killed run already used (same stream).
        for _ in range((step - epoch * steps_per_epoch) * cfg.accum_iters):
            next(batches)
        while step < total_steps and step // steps_per_epoch == epoch:
            lr = plateau.lr(step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for micro in range(cfg.accum_iters):
                batch = next(batches)
                # DDP: all-reduce gradients only on the last micro-batch of the step.
                sync = micro == cfg.accum_iters - 1 or not info.enabled
                with nullcontext() if sync else train_model.no_sync():
                    loss = compute_loss(train_model, batch, device, cfg, autocast)
                    (loss / cfg.accum_iters).backward()
                interval_loss += loss.item() / cfg.accum_iters
                interval_samples += batch["image"].shape[0]
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            interval_steps += 1
            bar.update(1)

            if step % cfg.log_every == 0 or step == total_steps:
                stats = all_reduce_sum(torch.tensor([interval_loss, interval_samples],
                                                    dtype=torch.float64), info, device)
                seconds = time.time() - interval_start
                row = {"kind": "train", "step": step, "epoch": step / steps_per_epoch,
                       "loss": stats[0].item() / info.world_size / interval_steps, "lr": lr,
                       "samples_per_s": stats[1].item() / seconds,
                       "steps_per_s": interval_steps / seconds}
                if info.is_main:
                    record(row)
                    bar.write(f"step {step:>6}/{total_steps} | epoch {row['epoch']:.2f} | "
                              f"loss {row['loss']:.4f} | lr {lr:.2e} | "
                              f"{row['samples_per_s']:.1f} samples/s")
                interval_loss, interval_steps, interval_samples = 0.0, 0, 0
                interval_start = time.time()

            evaluate_now = val_loader is not None and (step % eval_every == 0 or step == total_steps)
            if evaluate_now:
                acc, _ = predict(model, val_loader, device, info, threshold=cfg.threshold,
                                 max_batches=cfg.eval_batches, amp=cfg.amp)
                train_model.train()
                fixed = acc.at(acc.thresholds.index(cfg.threshold))
                last_metrics = {"kind": "eval", "step": step, "split": cfg.val_split,
                                "threshold": cfg.threshold, "overall_iou": fixed["overall_iou"],
                                "mean_iou": fixed["mean_iou"], "precision": fixed["precision"],
                                "sentences": acc.count}
                improved = fixed["overall_iou"] > best
                best = max(best, fixed["overall_iou"])
                if plateau.observe(fixed["overall_iou"]) and info.is_main:
                    bar.write(f"plateau: no better val overall IoU for more than "
                              f"{cfg.plateau_patience} evaluations; lr × {cfg.plateau_factor:g} "
                              f"→ {plateau.lr(step, total_steps):.2e}")
                if info.is_main:
                    record(last_metrics)
                    plot_curves(records, curves_path)
                    bar.write(f"eval {cfg.val_split} @ {step}: overall IoU {fixed['overall_iou']:.4f} "
                              f"| mean IoU {fixed['mean_iou']:.4f} | {acc.count} sentences"
                              + (" | new best" if improved else ""))
                    if improved:
                        save(ck.BEST, lr)
                interval_start = time.time()
            if step % save_every == 0 or step == total_steps or evaluate_now:
                if info.is_main:
                    save(ck.LAST, lr)
                barrier(info)
    bar.close()
    if info.is_main:
        if records:
            plot_curves(records, curves_path)
        log(f"done: {step} steps; checkpoints in {ck.checkpoint_dir(out)}")
    return TrainResult(model=model, step=step, run_dir=out, metrics=last_metrics)


def _rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def _quiet(_: str) -> None:
    pass


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def write(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        pass


def _bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
    bar.write = lambda line: tqdm.write(line)  # log lines above the bar, not through it
    return bar


def model_config(preset_name: str, **overrides: Any) -> DMNConfig:
    """The model preset with CLI overrides (None values are ignored)."""
    return preset(preset_name, **{k: v for k, v in overrides.items() if v is not None})


def resume_configs(out: Path, train_overrides: dict[str, Any], model_overrides: dict[str, Any],
                   log: Callable[[str], None] = print) -> tuple[TrainConfig, DMNConfig]:
    """The configs of the run in ``out`` (its config.json), with explicitly given training flags
    applied (e.g. more ``steps``). Model flags must not change a resumed run."""
    path = out / "config.json"
    if not path.is_file():
        raise CheckpointError(f"--resume: {path} does not exist; pass the --out of a dmn-train run")
    stored = json.loads(path.read_text(encoding="utf-8"))
    model_cfg = DMNConfig.from_dict(stored["model"])
    changed = {k: v for k, v in model_overrides.items()
               if v is not None and getattr(model_cfg, k) != v}
    if changed:
        raise ValueError(f"--resume continues {out} with its own model; drop the model flags "
                         f"that change it: {sorted(changed)}")
    base = dict(stored["train"])
    given = {k: v for k, v in train_overrides.items() if v is not None and base.get(k) != v}
    for k, v in given.items():
        log(f"--resume: {k} {base.get(k)!r} -> {v!r}")
    return TrainConfig(**{**base, **given, "out": str(out)}), model_cfg
