"""Benchmark the DMN on CPU (2 threads): training throughput, decomposed vs naive synthesis, sizes.

    .venv/bin/python pipelines/bench_model.py           # full run (several minutes)
    .venv/bin/python pipelines/bench_model.py --quick   # seconds: tiny sizes only, a smoke test

Prints markdown tables. Memory is the bytes of the tensors autograd saves for backward, counted
once per storage through ``torch.autograd.graph.saved_tensors_hooks`` and leaving out parameters:
the activation memory a training step holds between forward and backward. Times are the
fastest of a few repeats.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

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
    parser.add_argument("--section", choices=["all", "params", "synthesis", "throughput"],
                        default="all", help="run one table only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
