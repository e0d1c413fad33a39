"""Benchmark the DMN on CPU (2 threads): training throughput, decomposed vs naive synthesis, sizes.

    .venv/bin/python pipelines/bench_model.py           # full run (several minutes)
    .venv/bin/python pipelines/bench_model.py --quick   # seconds: tiny sizes only, a smoke test
    python pipelines/bench_model.py --section device --device cuda   # the GPU table (gpu_check.sh)
    .venv/bin/python pipelines/bench_model.py --section device --quick  # its CPU smoke test

The ``device`` section is the GPU benchmark of issue 10 (any device, CUDA meant): a full training
step (forward, both losses, backward, Adam) on a synthetic batch with channels_last, for the
paper preset low-/high-res at 512 px, batch 8 and 32, bf16 autocast and fp32 (TF32 on), SRU and
LSTM: samples/s, peak memory, FLOPs counted by ``torch.utils.flop_counter`` and MFU against the
measured throughput of a large matmul of the same dtype on the same device.

Prints markdown tables. Memory is the bytes of the tensors autograd saves for backward, counted
once per storage through ``torch.autograd.graph.saved_tensors_hooks`` and leaving out parameters:
the activation memory a training step holds between forward and backward. Times are the
fastest of a few repeats.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from dmn_model import DMN, DMNConfig, preset
from dmn_model.synthesis import NUM_COORDS, Synthesis, reference_fused_input

VOCAB = 2000


def _time(step: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Fastest (wall, CPU) seconds per call after one warm-up call.

    The minimum, as ``timeit`` advises: other jobs on the cores only ever add time. CPU is user +
    system time of this process over all its threads (wall × threads when nothing interferes).
    """
    step()
    walls, cpus = [], []
    for _ in range(repeats):
        before, start = os.times(), time.perf_counter()
        step()
        after = os.times()
        walls.append(time.perf_counter() - start)
        cpus.append(after.user - before.user + after.system - before.system)
    return min(walls), min(cpus)


def _saved_bytes(step: Callable[[], torch.Tensor], module: torch.nn.Module) -> int:
    """Bytes of the distinct non-parameter storages autograd saves during ``step``'s forward."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step()
    del out
    return sum(storages.values())


def _train_step(model: DMN, batch: int, size: int, steps: int) -> Callable[[], None]:
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    tokens = torch.randint(2, VOCAB, (batch, steps))
    lengths = torch.randint(1, steps + 1, (batch,))
    lengths[0] = steps

    def step() -> None:
        model.zero_grad(set_to_none=True)
        logits, lowres = model(model.normalize(images), tokens, lengths, return_aux=True)
        (logits.mean() + lowres.mean()).backward()
    return step


def _measure_case(cfg: DMNConfig, size: int, batch: int, steps: int, repeats: int,
                  threads: int) -> tuple[float, float]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DMN(cfg, VOCAB).train()
    return _time(_train_step(model, batch, size, steps), repeats)


def throughput(cases: list[tuple[str, DMNConfig, int, int, int]], steps: int, threads: int
               ) -> list[str]:
    """Rows: preset, size, batch, s/step, samples/s (forward + backward, T = ``steps``).

    Each case runs in a fresh process: in one long-lived process the later cases ran 2–6×
    slower than the same case alone (allocator state left by earlier models).
    """
    rows = ["| model | image | batch | wall s / step | CPU s / step | samples / s (wall) |",
            "|---|---|---|---|---|---|"]
    spawn = multiprocessing.get_context("spawn")
    for name, cfg, size, batch, repeats in cases:
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            wall, cpu = pool.submit(_measure_case, cfg, size, batch, steps, repeats,
                                    threads).result()
        rows.append(f"| {name} | {size}² | {batch} | {wall:.3f} | {cpu:.3f} | "
                    f"{batch / wall:.2f} |")
    return rows


def synthesis_comparison(cfg: DMNConfig, vis_channels: int, batch: int, cells: int,
                         steps: int, repeats: int) -> list[str]:
    """Decomposed vs naive (per-word concatenation) fusion, alone and with the multimodal RNN."""
    torch.manual_seed(0)
    synth = Synthesis(vis_channels, cfg).train()
    side = int(cells ** 0.5)
    vis = torch.randn(batch, vis_channels + NUM_COORDS, side, side, requires_grad=True)
    emb = torch.randn(steps, batch, cfg.emb_size, requires_grad=True)
    hid = torch.randn(steps, batch, cfg.hid_size, requires_grad=True)
    lengths = torch.full((batch,), steps)
    mask_pad = torch.zeros(steps, batch, dtype=torch.bool)
    variants = {"decomposed": synth.fused_input,
                "naive (original)": lambda v, e, h: reference_fused_input(synth, v, e, h)}
    rows = ["| stage | variant | fwd+bwd wall s | fwd+bwd CPU s | saved activations MB |",
            "|---|---|---|---|---|"]
    results = {}
    for stage in ("fusion → M_t", "fusion + multimodal RNN"):
        for variant, fuse in variants.items():
            def forward(fuse=fuse, stage=stage) -> torch.Tensor:
                fused = fuse(vis, emb, hid)
                if stage == "fusion + multimodal RNN":
                    return synth.recur(fused, mask_pad, lengths, (side, side))
                return fused

            def step(forward=forward) -> None:
                synth.zero_grad(set_to_none=True)
                forward().sum().backward()
            wall, cpu = _time(step, repeats)
            mem = _saved_bytes(forward, synth) / 2 ** 20
            results[stage, variant] = (wall, cpu, mem)
            rows.append(f"| {stage} | {variant} | {wall:.3f} | {cpu:.3f} | {mem:.1f} |")
        fast, slow = results[stage, "decomposed"], results[stage, "naive (original)"]
        ratios = " | ".join(f"**{n / d:.1f}×**" for n, d in zip(slow, fast))
        rows.append(f"| {stage} | **naive / decomposed** | {ratios} |")
    return rows


def _matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Measured FLOP/s of a large square matmul in ``dtype`` (TF32 allowed for fp32 on CUDA)."""
    n, reps = (8192, 20) if device.type == "cuda" else (1024, 3)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_case(device: torch.device, cfg: DMNConfig, size: int, batch: int, amp: bool,
                words: int, warmup: int, steps: int) -> dict:
    """One row of the device table: samples/s, peak bytes (CUDA), FLOPs per step."""
    from torch.utils.flop_counter import FlopCounterMode

    from dmn_train.evaluate import autocast_context
    torch.manual_seed(0)
    model = DMN(cfg, VOCAB).to(device).train()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    tokens = torch.randint(2, VOCAB, (batch, words), device=device)
    lengths = torch.full((batch,), words, device=device)  # T words each: the counted FLOPs
    autocast = autocast_context(amp, device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        x = model.normalize(images)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits, lowres = model(x, tokens, lengths, return_aux=True)
        (logits.float().mean() + lowres.float().mean()).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    secs = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"step_s": secs, "flops": counter.get_total_flops(), "peak": peak}


def device_table(device: torch.device, cases: list[tuple[str, DMNConfig, int, int, bool]],
                 words: int, warmup: int, steps: int) -> list[str]:
    """Rows: model, rnn, image, batch, dtype, samples/s, step ms, peak GiB, GFLOP/sample,
    TFLOP/s, MFU. A case that runs out of memory gets an ``OOM`` row."""
    peaks = {amp: _matmul_peak(device, torch.bfloat16 if amp else torch.float32)
             for amp in sorted({c[4] for c in cases})}
    rows = ["matmul peak measured here: " + ", ".join(
                f"{'bf16' if amp else 'fp32' + (' (TF32)' if device.type == 'cuda' else '')} "
                f"{peak / 1e12:.3g} TFLOP/s" for amp, peak in peaks.items()), "",
            "| model | rnn | image | batch | dtype | samples/s | step ms | peak GiB | "
            "GFLOP/sample | TFLOP/s | MFU |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, cfg, size, batch, amp in cases:
        head = (f"| {label} | {'LSTM' if cfg.lstm else 'SRU'} | {size}² | {batch} | "
                f"{'bf16' if amp else 'fp32'} |")
        try:
            r = device_case(device, cfg, size, batch, amp, words, warmup, steps)
        except torch.OutOfMemoryError:
            rows.append(head + " OOM | | | | | |")
        else:
            peak = f"{r['peak'] / 2 ** 30:.1f}" if r["peak"] is not None else "—"
            achieved = r["flops"] / r["step_s"]
            rows.append(head + f" {batch / r['step_s']:.1f} | {r['step_s'] * 1e3:.0f} | {peak} | "
                        f"{r['flops'] / batch / 1e9:.3g} | {achieved / 1e12:.3g} | "
                        f"{100 * achieved / peaks[amp]:.0f} % |")
        print(rows[-1], file=sys.stderr, flush=True)  # progress
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def device_cases(quick: bool, size: int, batches: list[int], dtypes: list[str],
                 rnns: list[str], res: list[str]) -> list[tuple[str, DMNConfig, int, int, bool]]:
    """The device table's cases: paper low/high-res × batches × rnn × dtype (tiny if quick)."""
    name = "tiny" if quick else "paper"
    return [(f"{name} {r}-res", preset(name, high_res=r == "high", lstm=rnn == "lstm"), size,
             batch, dtype == "bf16")
            for r in res for batch in batches for rnn in rnns for dtype in dtypes]


def param_table(configs: dict[str, DMNConfig]) -> list[str]:
    names = ["backbone", "language", "synthesis", "upsampling"]
    rows = ["| model | " + " | ".join(names) + " | total |", "|---" * (len(names) + 2) + "|"]
    for label, cfg in configs.items():
        counts = DMN(cfg, VOCAB).param_counts()
        cells = [f"{counts[n] / 1e6:.3f} M" for n in names]
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {sum(counts.values()) / 1e6:.3f} M |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes only, a few seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--words", type=int, default=15, help="sentence length T")
    parser.add_argument("--section", choices=["all", "params", "synthesis", "throughput", "device"],
                        default="all", help="run one table only (device: only when named)")
    parser.add_argument("--device", default="cuda", help="device section: cuda or cpu")
    parser.add_argument("--size", type=int, default=512, help="device section: image side")
    parser.add_argument("--batches", default="8,32", help="device section")
    parser.add_argument("--dtypes", default="bf16,fp32", help="device section")
    parser.add_argument("--rnns", default="sru,lstm", help="device section")
    parser.add_argument("--res", default="low,high", help="device section: low and/or high")
    parser.add_argument("--warmup", type=int, default=3, help="device section: untimed steps")
    parser.add_argument("--steps", type=int, default=10, help="device section: timed steps")
    parser.add_argument("--out", help="device section: also write its table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.section == "device":
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            sys.exit("bench_model: --device cuda but torch sees no CUDA device")
        from dmn_train.evaluate import enable_tf32
        enable_tf32(device)
        split = lambda text: [v.strip() for v in text.split(",") if v.strip()]  # noqa: E731
        size = 64 if args.quick else args.size
        batches = [2] if args.quick else [int(b) for b in split(args.batches)]
        cases = device_cases(args.quick, size, batches, split(args.dtypes), split(args.rnns),
                             split(args.res))
        name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU, {args.threads} threads")
        warmup, steps = (1, 1) if args.quick else (args.warmup, args.steps)
        lines = [f"torch {torch.__version__}, {name}, T = {args.words} words, "
                 f"{warmup} warm-up + {steps} timed steps", ""]
        lines += device_table(device, cases, args.words, warmup, steps)
        print("\n".join(lines))
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
        return
    tiny = preset("tiny")
    paper = preset("paper", high_res=True)
    print(f"torch {torch.__version__}, {args.threads} threads, T = {args.words} words, "
          f"vocabulary {VOCAB}, load average at start {os.getloadavg()[0]:.1f}\n")

    if args.quick:
        cases = [("tiny", tiny, 96, 1, 1), ("tiny", tiny, 96, 8, 1)]
        synth_args = (tiny, 128, 1, 9, args.words, 1)
        configs = {"tiny (high-res)": tiny}
    else:
        cases = [("tiny", tiny, s, b, 5) for s in (96, 128, 256) for b in (1, 8)]
        cases += [("tiny", tiny, 96, 32, 5), ("tiny", tiny, 128, 32, 3)]
        cases += [("paper (high-res)", paper, 320, 1, 2), ("paper (high-res)", paper, 320, 8, 1)]
        synth_args = (paper, 2688, 8, 100, args.words, 2)  # dpn92 at 320²: 10×10 cells
        configs = {"paper (high-res)": paper, "tiny (high-res)": tiny}

    if args.section in ("all", "params"):
        print("## Parameters\n")
        print("\n".join(param_table(configs)) + "\n")
    if args.section in ("all", "synthesis"):
        print(f"## Synthesis: decomposed vs naive, T = {args.words}, batch {synth_args[2]}\n")
        print("\n".join(synthesis_comparison(*synth_args)) + "\n")
    if args.section in ("all", "throughput"):
        print("## Training step (forward + backward, loss on both outputs)\n")
        print("\n".join(throughput(cases, args.words, args.threads)))
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
