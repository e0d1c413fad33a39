"""Benchmark the multimodal SRU: per-step autograd ops vs the fused recurrence (loop, Triton).

    .venv/bin/python pipelines/bench_sru.py --quick                 # seconds: tiny sizes, a smoke test
    .venv/bin/python pipelines/bench_sru.py                         # paper sizes on CPU (minutes)
    python pipelines/bench_sru.py --device cuda --batch 8 32        # adds the Triton kernel

The multimodal SRU of the ``paper`` preset (``mixed_size`` → ``hid_mixed_size``, ``mixed_layers``
layers) runs over T words at every cell of a batch of ``h·w``-cell maps: N = batch · cells
sequences. Variants:

- ``per-step ops``: :func:`dmn_model.sru.reference_sru_recurrence`, how the SRU ran before it was
  fused (autograd keeps every step's gates and intermediates);
- ``fused loop``: :func:`dmn_model.sru.sru_recurrence` with ``DMN_SRU_BACKEND=loop``;
- ``fused triton``: the same with the Triton kernels (CUDA only).

Prints a markdown table: forward + backward wall and CPU time (fastest of the repeats after one
warm-up; the variants take turns),
the bytes autograd saves for backward (distinct non-parameter storages, counted with
``torch.autograd.graph.saved_tensors_hooks``: the activation memory held between forward and
backward) and, on CUDA, the peak memory of the step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator

import torch

from dmn_model import preset
from dmn_model import sru as sru_module


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    """Make :class:`~dmn_model.sru.SRULayer` run the recurrence ``name`` inside the block."""
    fused = sru_module.sru_recurrence
    old_env = os.environ.get(sru_module.BACKEND_ENV)
    if name == "per-step ops":
        sru_module.sru_recurrence = sru_module.reference_sru_recurrence
    else:
        os.environ[sru_module.BACKEND_ENV] = name.removeprefix("fused ")
    try:
        yield
    finally:
        sru_module.sru_recurrence = fused
        if old_env is None:
            os.environ.pop(sru_module.BACKEND_ENV, None)
        else:
            os.environ[sru_module.BACKEND_ENV] = old_env


def saved_bytes(forward: Callable[[], object], module: torch.nn.Module) -> int:
    """Bytes of the distinct non-parameter storages autograd saves during ``forward``."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(storages.values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(names: list[str], rnn: sru_module.SRU, x: torch.Tensor, mask: torch.Tensor,
            amp: bool, repeats: int) -> dict[str, tuple[float, float, int, int | None]]:
    """Per variant: (wall s, CPU s per forward + backward, saved bytes, CUDA peak bytes or None).

    The variants take turns, repeat after repeat, and each keeps its fastest time, so that load
    from other jobs spreads over all of them instead of favouring whichever ran first. CPU time
    is user + system time of this process (less sensitive to time-sharing than wall time).
    """
    device = x.device
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if amp
                else contextlib.nullcontext())

    def forward() -> torch.Tensor:
        with autocast:
            h, c = rnn(x, mask)
        return h.sum() + c.sum()

    def step() -> None:
        rnn.zero_grad(set_to_none=True)
        x.grad = None
        forward().backward()

    best = {name: [float("inf"), float("inf")] for name in names}
    for name in names:
        with variant(name):
            step()  # warm-up (and Triton's compilation)
    for _ in range(repeats):
        for name in names:
            with variant(name):
                _sync(device)
                cpu_start, start = time.process_time(), time.perf_counter()
                step()
                _sync(device)
                cpu_end = time.process_time()
            best[name][0] = min(best[name][0], time.perf_counter() - start)
            best[name][1] = min(best[name][1], cpu_end - cpu_start)
    results = {}
    for name in names:
        with variant(name):
            saved = saved_bytes(forward, rnn)
            peak = None
            if device.type == "cuda":
                rnn.zero_grad(set_to_none=True)
                x.grad = None
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                step()
                _sync(device)
                peak = torch.cuda.max_memory_allocated(device) - base
        results[name] = (best[name][0], best[name][1], saved, peak)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2], help="images per batch")
    parser.add_argument("--cells", type=int, default=256, help="h·w cells per image (16·16)")
    parser.add_argument("--words", type=int, default=15, help="sentence length T")
    parser.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_sru: --device cuda but torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    cfg = preset("paper")
    mixed, hidden, layers = cfg.mixed_size, cfg.hid_mixed_size, cfg.mixed_layers
    if args.quick:
        args.batch, args.cells, args.words, args.repeats = [1], 16, 5, 1
        mixed, hidden, layers = 24, 32, 2
    names = ["per-step ops", "fused loop"] + (["fused triton"] if device.type == "cuda" else [])
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not set(dtypes) <= {"fp32", "bf16"}:
        sys.exit(f"bench_sru: --dtypes takes fp32 and/or bf16, got {args.dtypes!r}")

    header = (f"torch {torch.__version__}, {device}"
              + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                 f", {args.threads} threads, load average {os.getloadavg()[0]:.1f}")
              + f"; SRU {mixed} → {hidden} × {layers} layers, T = {args.words}, "
              f"{args.cells} cells per image, sentence lengths T, T-2, T-4, …")
    rows = [header, "",
            "| batch | N = batch·cells | dtype | variant | fwd+bwd wall ms | fwd+bwd CPU ms | "
            "saved MiB | saved vs per-step | CPU time vs per-step |"
            + (" peak MiB |" if device.type == "cuda" else ""),
            "|---|---|---|---|---|---|---|---|---|" + ("---|" if device.type == "cuda" else "")]
    print(rows[0], file=sys.stderr, flush=True)
    for batch in args.batch:
        torch.manual_seed(0)
        rnn = sru_module.SRU(mixed, hidden, layers).to(device)
        n = batch * args.cells
        x = torch.randn(args.words, n, mixed, device=device, requires_grad=True)
        lengths = (args.words - 2 * torch.arange(n) % args.words).clamp(min=1).to(device)
        mask = torch.arange(args.words, device=device)[:, None] >= lengths[None, :]
        for dtype in dtypes:
            results = measure(names, rnn, x, mask, dtype == "bf16", args.repeats)
            _, base_cpu, base_saved, _ = results[names[0]]
            for name in names:
                wall, cpu, saved, peak = results[name]
                row = (f"| {batch} | {n} | {dtype} | {name} | {wall * 1e3:.1f} | {cpu * 1e3:.1f} | "
                       f"{saved / 2 ** 20:.1f} | {saved / base_saved:.2f}× | "
                       f"{cpu / base_cpu:.2f}× |")
                if peak is not None:
                    row += f" {peak / 2 ** 20:.0f} |"
                rows.append(row)
                print(row, file=sys.stderr, flush=True)  # progress
    table = "\n".join(rows)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
