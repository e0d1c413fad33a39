"""``dmn-train``: build the configs from the flags and call :func:`dmn_train.train.train`.

Flag names follow the original ``dmn_pytorch.train`` where it had one (``--backend``,
``--num-filters``, ``--lang-layers``, ``--mix-we``, ``--lstm``, ``--high-res``,
``--upsamp-amplification``, ``--accum-iters``, ``--lr``, ``--epochs``, ``--dmn-freeze``, …).
Unset flags take the ``--preset`` value. Works under ``torchrun --nproc_per_node N dmn-train …``.
"""

from __future__ import annotations

import dataclasses
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console


from dmn_model.checkpoint import latest_run
from dmn_model.config import DMNConfig
from dmn_model.cli_errors import user_errors_with

from .distributed import (destroy_process_group, dist_info_from_env, init_process_group,
                          select_device)
from .train import model_config, resume_configs, train, train_config

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Train the DMN on shards written by dmn-data build.")
err_console = Console(stderr=True)


class Preset(str, Enum):
    paper = "paper"
    tiny = "tiny"


class Schedule(str, Enum):
    constant = "constant"
    cosine = "cosine"
    plateau = "plateau"


class CompileMode(str, Enum):
    none = "none"
    backbone = "backbone"
    all = "all"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


user_errors = user_errors_with("interrupted; continue with the same command plus --resume")


Opt = typer.Option


@app.command()
@user_errors
def train_cmd(
    shards: Annotated[Optional[str], Opt(help="Dataset from dmn-data build: a folder (shards/toy), "
                                         "an http(s):// or fsspec URL (s3://, gs://, hf://…) or "
                                         "'pipe:CMD {}' (with --resume: the run's own).")] = None,
    preset: Annotated[Preset, Opt(help="Model + training preset: paper (dpn92, the original "
                                  "README) or tiny (small CNN that trains on a CPU).")] = Preset.paper,
    split: Annotated[str, Opt(help="Training split.")] = "train",
    val_split: Annotated[Optional[str], Opt("--val-split", "--val", help="Validation split.")] = "val",
    no_val: Annotated[bool, Opt("--no-val", help="Train without evaluating (no best.pt).")] = False,
    out: Annotated[Optional[Path], Opt(help="Run directory (default: runs/<dataset>-<preset>-<time>).")] = None,
    resume: Annotated[bool, Opt(help="Continue the run in --out (default: runs/latest) from its last.pt.")] = False,
    init_from: Annotated[Optional[Path], Opt(help="Start from a checkpoint's matching weights "
                                             "(the high-res stage from the low-res run's best.pt).")] = None,
    # model
    high_res: Annotated[Optional[bool], Opt("--high-res/--low-res", help="Full-resolution output "
                                            "through the upsampling module (else the low-res map, stride 32 for timm backbones).")] = None,
    backend: Annotated[Optional[str], Opt(help="Visual backbone: a timm model name or tiny_cnn.")] = None,
    pretrained: Annotated[Optional[str], Opt(
        metavar="auto|none|TAG|hf-hub:ID|FILE",
        help="Backbone weights of a fresh run: auto (default: timm's pretrained weights through "
             "the Hugging Face cache - HF_HOME, HF_HUB_OFFLINE respected - e.g. dpn92.mx_in1k; "
             "random for tiny_cnn), a timm tag (dpn92.mx_in1k), hf-hub:<repo id>, a timm "
             "weights file, or none (random init). Ignored with --init-from/--resume.")] = None,
    fetch_weights: Annotated[bool, Opt(
        "--fetch-weights", help="Only fetch the backbone weights this command would start from "
        "(--preset/--backend/--pretrained) into the Hugging Face cache, check they load, print "
        "where they are and exit: run it where there is network before an offline job.")] = False,
    num_filters: Annotated[Optional[int], Opt(help="Dynamic filters per word (K).")] = None,
    emb_size: Annotated[Optional[int], Opt(help="Word embedding size.")] = None,
    hid_size: Annotated[Optional[int], Opt(help="Language RNN hidden size.")] = None,
    lang_layers: Annotated[Optional[int], Opt(help="Language RNN layers.")] = None,
    mixed_size: Annotated[Optional[int], Opt(help="Multimodal fusion conv width.")] = None,
    hid_mixed_size: Annotated[Optional[int], Opt(help="Multimodal RNN hidden size.")] = None,
    mixed_layers: Annotated[Optional[int], Opt(help="Multimodal RNN layers.")] = None,
    mix_we: Annotated[Optional[bool], Opt("--mix-we/--no-mix-we", help="Dynamic filters from word "
                                          "embedding + hidden state (else hidden state only).")] = None,
    lstm: Annotated[Optional[bool], Opt("--lstm/--sru", help="LSTM instead of SRU for both RNNs.")] = None,
    upsamp_amplification: Annotated[Optional[int], Opt(help="High-res upsampling factor (power of 2, 32 = full resolution).")] = None,
    upsamp_mode: Annotated[Optional[str], Opt(help="Upsampling interpolation: bilinear or nearest.")] = None,
    upsamp_size: Annotated[Optional[int], Opt(help="Upsampling conv kernel size (odd).")] = None,
    dmn_freeze: Annotated[Optional[bool], Opt("--dmn-freeze/--no-dmn-freeze", help="Train only the "
                                              "upsampling module (high-res stage).")] = None,
    # data and schedule
    size: Annotated[Optional[int], Opt(help="Image side in pixels (longest side resized, padded square).")] = None,
    batch_size: Annotated[Optional[int], Opt(help="Sentences per micro-batch per process.")] = None,
    steps: Annotated[Optional[int], Opt(help="Optimizer steps to train (overrides --epochs).")] = None,
    epochs: Annotated[Optional[int], Opt(help="Epochs to train when --steps is not given.")] = None,
    epoch_batches: Annotated[Optional[int], Opt(help="Batches per epoch per process (default: one pass).")] = None,
    accum_iters: Annotated[Optional[int], Opt(help="Micro-batches accumulated per optimizer step.")] = None,
    lr: Annotated[Optional[float], Opt("--lr", "--learning-rate", help="Peak Adam learning rate.")] = None,
    weight_decay: Annotated[Optional[float], Opt(help="Adam weight decay.")] = None,
    schedule: Annotated[Optional[Schedule], Opt(help="LR schedule after warmup: constant, cosine (to --min-lr), or plateau (the original's ReduceLROnPlateau on 1 - val overall IoU).")] = None,
    plateau_patience: Annotated[Optional[int], Opt(help="--schedule plateau: evaluations without a better val IoU tolerated before the lr drops (original: 2).")] = None,
    plateau_factor: Annotated[Optional[float], Opt(help="--schedule plateau: lr multiplier at each drop (original: 0.1).")] = None,
    warmup_steps: Annotated[Optional[int], Opt(help="Linear LR warmup steps.")] = None,
    min_lr: Annotated[Optional[float], Opt(help="Final LR of the cosine schedule; the floor of the plateau schedule.")] = None,
    grad_clip: Annotated[Optional[float], Opt(help="Clip the gradient norm to this (0 = off).")] = None,
    iou_loss: Annotated[Optional[bool], Opt("--iou-loss/--bce-loss", help="Soft IoU loss instead of BCE.")] = None,
    aux_weight: Annotated[Optional[float], Opt(help="Weight of the extra low-res BCE of a high-res model.")] = None,
    lowres_loss: Annotated[Optional[str], Opt(help="Loss on logits coarser than the mask: 'upsampled' (the original's: logits resized bilinearly to the input size; paper preset) or 'pooled' (the mask area-averaged to the logits' grid; tiny preset).")] = None,
    flip: Annotated[Optional[bool], Opt("--flip/--no-flip", help="Random horizontal flips (left/right words swapped).")] = None,
    # bookkeeping and runtime
    log_every: Annotated[Optional[int], Opt("--log-every", "--log-interval", help="Steps per log line.")] = None,
    eval_every: Annotated[Optional[int], Opt(help="Steps between evaluations (default: once per epoch).")] = None,
    save_every: Annotated[Optional[int], Opt("--save-every", "--backup-iters", help="Steps between last.pt writes (default: at each evaluation).")] = None,
    eval_batches: Annotated[Optional[int], Opt(help="Validation batches per process per evaluation (0 = all).")] = None,
    eval_batch_size: Annotated[Optional[int], Opt(help="Validation batch size (default: --batch-size).")] = None,
    threshold: Annotated[Optional[float], Opt(help="Validation probability threshold.")] = None,
    seed: Annotated[Optional[int], Opt(help="Random seed.")] = None,
    workers: Annotated[Optional[int], Opt("--workers", "-j", "--num-workers", help="Data loading processes.")] = None,
    device: Annotated[Optional[Device], Opt(help="auto = this process's GPU if any, else CPU.")] = None,
    amp: Annotated[Optional[bool], Opt("--amp/--no-amp", help="bf16 autocast (default: on for CUDA, off on CPU; --amp also works on CPU).")] = None,
    compile: Annotated[Optional[CompileMode], Opt(
        help="torch.compile: backbone = the backbone, the fusion and the upsampling module, each "
             "on its own (the recurrent nets stay eager: they are a fused kernel already); all = "
             "the whole model in one graph (slow to compile; the SRU recurrence is still left "
             "out); none = eager. Default none.")] = None,
    progress: Annotated[Optional[bool], Opt("--progress/--no-progress", help="Progress bar.")] = None,
    verify_sha256: Annotated[Optional[bool], Opt("--verify-sha256/--no-verify-sha256",
                                                 help="Check each shard's sha256 against the manifest as it is read.")] = None,
    cache_dir: Annotated[Optional[Path], Opt(help="Remote shards: keep each verified shard here, so "
                                             "later epochs do not download it again.")] = None,
) -> None:
    """Train a DMN: checkpoints, metrics.jsonl and curves.png go to the run directory."""
    model_overrides = dict(
        backbone=backend,
        num_filters=num_filters, emb_size=emb_size, hid_size=hid_size, lang_layers=lang_layers,
        mixed_size=mixed_size, hid_mixed_size=hid_mixed_size, mixed_layers=mixed_layers,
        mix_we=mix_we, lstm=lstm, high_res=high_res, upsamp_amplification=upsamp_amplification,
        upsamp_mode=upsamp_mode, upsamp_kernel=upsamp_size, freeze=dmn_freeze)
    train_overrides = dict(
        size=size, batch_size=batch_size, steps=steps,
        epochs=epochs, epoch_batches=epoch_batches, accum_iters=accum_iters, lr=lr,
        weight_decay=weight_decay, schedule=schedule.value if schedule else None,
        plateau_patience=plateau_patience, plateau_factor=plateau_factor,
        warmup_steps=warmup_steps, min_lr=min_lr, grad_clip=grad_clip, iou_loss=iou_loss,
        aux_weight=aux_weight, lowres_loss=lowres_loss, flip=flip, init_from=str(init_from) if init_from else None,
        pretrained=pretrained,
        log_every=log_every, eval_every=eval_every, save_every=save_every,
        eval_batches=eval_batches, eval_batch_size=eval_batch_size, threshold=threshold,
        seed=seed, workers=workers, device=device.value if device else None, amp=amp,
        compile=compile.value if compile else None, progress=progress, verify_sha256=verify_sha256,
        cache_dir=str(cache_dir) if cache_dir else None)
    if fetch_weights:
        fetch_backbone_weights(model_config(preset.value, **model_overrides),
                               train_config(preset.value, "", pretrained=pretrained).pretrained)
        return
    if resume:
        run = out if out is not None else latest_run("runs")
        given = {**train_overrides, "shards": str(shards) if shards else None}
        cfg, model_cfg = resume_configs(run, given, model_overrides,
                                        log=lambda m: err_console.print(m, highlight=False))
    else:
        if shards is None:
            raise ValueError("--shards is required (a dataset folder from dmn-data build, "
                             "e.g. shards/toy)")
        model_cfg = model_config(preset.value, **model_overrides)
        cfg = train_config(preset.value, str(shards), **train_overrides,
                           out=str(out) if out else None)
        cfg = dataclasses.replace(cfg, split=split, val_split=None if no_val else val_split)
    info = dist_info_from_env()
    device_ = select_device(info, cfg.device)
    init_process_group(info, device_)
    try:
        train(cfg, model_cfg, info, device_, resume=resume,
              log=lambda m: err_console.print(m, highlight=False, soft_wrap=True))
    finally:
        destroy_process_group(info)


def fetch_backbone_weights(model_cfg: DMNConfig, requested: str) -> None:
    """``--fetch-weights``: resolve (download into the cache), load into the backbone, report."""
    from dmn_model.backbone import create_backbone
    from dmn_model.pretrained import load_backbone_weights, resolve_weights

    weights = resolve_weights(model_cfg.backbone, requested)
    if weights is None:
        print(f"{model_cfg.backbone}: random init (--pretrained {requested}); nothing to fetch")
        return
    load_backbone_weights(create_backbone(model_cfg), model_cfg, weights)
    print(f"{model_cfg.backbone}: {weights.describe()}; loads into the backbone")
    print(weights.file)


def main() -> None:
    app(prog_name="dmn-train")


if __name__ == "__main__":
    sys.exit(main())
