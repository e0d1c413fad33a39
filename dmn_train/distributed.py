"""Distributed setup for torchrun: read the environment once, then pass :class:`DistInfo` around.

``torchrun --nproc_per_node N dmn-train …`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`dist_info_from_env` is the only place that reads them.
The process group uses NCCL on CUDA and gloo on CPU. Every helper is a no-op for one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, and its GPU index on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this node
    node_rank: int = 0  # torchrun's GROUP_RANK

    def layout(self) -> str:
        """The world as the training log states it, e.g. ``2 nodes × 8 processes = 16 ranks``."""
        if not self.enabled:
            return "1 process"
        nodes = max(1, self.world_size // max(self.local_world_size, 1))
        return (f"{nodes} node(s) × {self.local_world_size} process(es) = {self.world_size} ranks "
                f"(this log: rank {self.rank}, node {self.node_rank})")

    @property
    def is_main(self) -> bool:
        """True on the one process that logs, evaluates to disk and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info_from_env() -> DistInfo:
    """``DistInfo`` from torchrun's variables; a plain single process when they are absent."""
    def read(name: str, default: int) -> int:
        value = os.environ.get(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"environment variable {name}={value!r} is not an integer "
                             "(set by torchrun; unset it to run one process)") from None

    world_size = read("WORLD_SIZE", 1)
    info = DistInfo(rank=read("RANK", 0), world_size=world_size,
                    local_rank=read("LOCAL_RANK", 0),
                    local_world_size=read("LOCAL_WORLD_SIZE", world_size),
                    node_rank=read("GROUP_RANK", 0))
    if not 0 <= info.rank < info.world_size:
        raise ValueError(f"RANK={info.rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={info.world_size})")
    return info


def select_device(info: DistInfo, requested: str = "auto") -> torch.device:
    """``auto``: this rank's GPU (``cuda:LOCAL_RANK``) when CUDA is available, else the CPU."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu)")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(info.local_rank)
    return torch.device("cuda", info.local_rank)


def init_process_group(info: DistInfo, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU); nothing for one process."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, **kwargs)


def destroy_process_group(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (e.g. while rank 0 writes a checkpoint)."""
    if info.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo, device: torch.device) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (returned on the CPU). NCCL needs it on ``device``."""
    if not info.enabled:
        return tensor
    work = tensor.to(device)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.cpu()


def gather_to_main(obj: Any, info: DistInfo) -> list[Any] | None:
    """Picklable ``obj`` of every rank, in rank order, on rank 0; None elsewhere."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any, info: DistInfo) -> Any:
    """Rank 0's picklable ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP and/or ``torch.compile`` wrappers (for state dicts and eval)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
