"""Checkpoints and where they live in a run directory.

A checkpoint is one ``torch.save`` payload of tensors and plain containers, written atomically.

Payload (``format = "dmn-checkpoint/1"``)::

    model            state dict of the bare model (no DDP / torch.compile prefixes)
    optimizer        optimizer state dict
    scheduler        {"kind", "lr", ..., "plateau"}: its settings, the LR at ``step`` and the
                     plateau schedule's state (constant/cosine are pure functions of the step)
    step, epoch      optimizer updates done; epochs started (step // steps_per_epoch)
    best_val_iou     best validation overall IoU so far (-1.0 before the first evaluation)
    model_config     dataclasses.asdict(DMNConfig)
    train_config     dataclasses.asdict(TrainConfig)
    vocab_sha256     sha256 of the shards' vocab.json; vocab_size
    vocab            the vocabulary itself, list[str] in id order (since the model-folder export;
                     older checkpoints lack it, and dmn-export then finds the shards' vocab.json
                     through train_config["shards"] and checks it against vocab_sha256)
    backbone_weights where the backbone's starting weights came from: {requested, name, hub_id,
                     file, sha256} (see dmn_model.pretrained; name/file/sha256 None for random
                     init; --init-from carries the source checkpoint's). Older checkpoints lack it.
    rng              torch CPU (+ CUDA) generator states, Python ``random`` and numpy states

Everything is a tensor, str, int, float, bool, None, list, tuple or dict, so loading uses
``torch.load(weights_only=True)``: a checkpoint from the internet cannot run code.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import DMNConfig
from .network import DMN

FORMAT = "dmn-checkpoint/1"
REQUIRED = ("model", "model_config", "vocab_sha256", "vocab_size")
#: ``<runs root>/latest`` names the newest run (a relative symlink; a text file where links fail)
LATEST = "latest"
LAST, BEST = "last.pt", "best.pt"


class CheckpointError(Exception):
    """A checkpoint or run directory that cannot be used; the message names the path and the fix."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def run_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint to evaluate in a run: ``best.pt`` if present, else ``last.pt``."""
    ckdir = checkpoint_dir(run_dir)
    for name in (BEST, LAST):
        if (ckdir / name).is_file():
            return ckdir / name
    raise CheckpointError(f"run {run_dir} has no {ckdir}/{BEST} or {LAST}; run dmn-train first "
                          "or pass --checkpoint")


def update_latest(run_dir: str | Path) -> None:
    """Point ``<run_dir>/../latest`` at ``run_dir`` (atomic replace)."""
    run_dir = Path(run_dir)
    link = run_dir.parent / LATEST
    tmp = run_dir.parent / f".{LATEST}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(run_dir.name, target_is_directory=True)
    except OSError:
        tmp.write_text(run_dir.name + "\n", encoding="utf-8")
    os.replace(tmp, link)


def latest_run(runs_root: str | Path) -> Path:
    """The run ``<runs_root>/latest`` points at.

    Raises:
        CheckpointError: no pointer, or it points at a missing directory.
    """
    link = Path(runs_root) / LATEST
    if link.is_symlink() or link.is_dir():
        run = link.resolve()
    elif link.is_file():
        run = Path(runs_root) / link.read_text(encoding="utf-8").strip()
    else:
        raise CheckpointError(f"no runs found ({link} does not exist): run dmn-train first "
                              "or pass --checkpoint")
    if not run.is_dir():
        raise CheckpointError(f"{link} points at {run}, which does not exist: run dmn-train "
                              "first or pass --run/--checkpoint")
    return run


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format tag) to ``path`` atomically: a killed process leaves
    either the previous file or the new one, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: missing, unreadable or corrupt file, or not a dmn checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not str(err).startswith("Weights only load failed"):
            raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({str(err).strip()[:200]})") from None
        raise CheckpointError(_refused(path, str(err))) from None
    except Exception as err:  # torch raises many types for truncated/foreign files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({first[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a dmn checkpoint (format {found!r}, expected "
                              f"{FORMAT!r}); pass a file written by dmn-train")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}, which every dmn checkpoint holds; "
                              "it is incomplete or was not written by dmn-train, and was not used")
    return payload


def _refused(path: Path, message: str) -> str:
    """One line for a checkpoint that torch's weights-only loader refused. torch's own message
    starts with how to load the file anyway (weights_only=False); what matters here is what was
    refused, and that such a file is not to be trusted."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return (f"checkpoint {path} was refused and not loaded: it refers to {found.group(1)}, which a dmn checkpoint "
                "(tensors and plain containers) never does; the file is not trusted (loading it without "
                "weights_only could run code from it)")
    # not a dangerous reference but a damaged file: the line that names the problem, not the advice
    lines = [ln.strip() for ln in message.splitlines() if ln.strip() and "weights_only" not in ln
             and not ln.startswith("Check the documentation")]
    problem = lines[0].removeprefix("WeightsUnpickler error: ") if lines else "not a pickle torch can read"
    return f"checkpoint {path} is unreadable or corrupt ({problem[:150]}); it was not loaded"


def load_weights(model: torch.nn.Module, weights: dict[str, Any], source: str | Path) -> None:
    """``model.load_state_dict(weights)`` (strict), with a one-line :class:`CheckpointError` when
    they do not fit: how many tensors are missing, unexpected or of another shape, one example
    of each. The usual cause is a checkpoint written by another version of the model code.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    reshaped = [k for k in own if k in weights and hasattr(weights[k], "shape")
                and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or reshaped:
        parts = [f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
                 if keys]
        raise CheckpointError(
            f"{source}: its weights do not fit the model its config describes ({'; '.join(parts)}) "
            "- written by another version of dmn? Start a new run (another --out, or delete "
            "this run) or use the version that wrote it")
    model.load_state_dict(weights)


def rng_state() -> dict[str, Any]:
    """Every RNG the trainer touches, as tensors and plain containers."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (the CUDA part only where the device count matches)."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_to_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def model_from_checkpoint(ckpt: dict, source: str) -> DMN:
    """Rebuild the DMN from a checkpoint's config and load its weights (strict)."""
    try:
        model = DMN(DMNConfig.from_dict(ckpt["model_config"]), int(ckpt["vocab_size"]))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{source}: its model config is not valid here "
                              f"({str(err).splitlines()[0][:200]})") from None
    load_weights(model, ckpt["model"], source)
    return model
