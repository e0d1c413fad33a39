"""What ``dmn-train --compile MODE`` costs and gains: compile time and step time per mode.

    .venv/bin/python pipelines/bench_compile.py --quick                  # CPU smoke test, tiny
    .venv/bin/python pipelines/bench_compile.py --preset tiny --size 96 --batch 8
    python pipelines/bench_compile.py --device cuda --preset paper --size 512 --batch 8 --amp

Each mode (``none``, ``backbone``, ``all``: see ``dmn_train.train.COMPILE_MODES``) runs in a fresh
process, so compile caches of one mode do not help the next, with a time limit: a mode that has
not finished compiling in ``--timeout`` seconds is reported as such. A step is forward, both
losses, backward and an Adam step on a synthetic batch (T = ``--words``), through
:func:`dmn_train.train.compile_model`, the function ``dmn-train`` uses. "compile s" is the first
step's time minus the eager step time; the step time is the fastest of ``--steps`` steps after it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

VOCAB = 2000


def one_mode(args: argparse.Namespace) -> dict:
    """Time ``args.mode`` in this process: first step, then the fastest of the next ones."""
    from dmn_model import DMN, preset
    from dmn_train.evaluate import autocast_context, enable_tf32
    from dmn_train.train import compile_model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    enable_tf32(device)
    torch.manual_seed(0)
    model = DMN(preset(args.preset, high_res=args.high_res), VOCAB).to(device).train()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    train_model = compile_model(model, model, args.mode)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8,
                           device=device)
    tokens = torch.randint(2, VOCAB, (args.batch, args.words), device=device)
    lengths = torch.randint(1, args.words + 1, (args.batch,), device=device)
    lengths[0] = args.words
    autocast = autocast_context(args.amp, device)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        x = model.normalize(images)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits, lowres = train_model(x, tokens, lengths, return_aux=True)
        (logits.float().mean() + lowres.float().mean()).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first = step()
    rest = min(step() for _ in range(args.steps))
    return {"mode": args.mode, "first_s": first, "step_s": rest}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model at 32², CPU, seconds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "paper"])
    parser.add_argument("--high-res", action="store_true")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--words", type=int, default=15)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first")
    parser.add_argument("--modes", default="none,backbone,all")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mode")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.size, args.batch, args.words, args.steps = "tiny", 32, 2, 5, 1
    if args.mode:
        print(json.dumps(one_mode(args)))
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rows = [f"torch {torch.__version__}, {args.device}, {args.preset}"
            f"{' high-res' if args.high_res else ''} at {args.size}², batch {args.batch}, "
            f"T = {args.words}, {'bf16' if args.amp else 'fp32'}, "
            f"load average {os.getloadavg()[0]:.1f}", "",
            "| --compile | first step s | compile s | step s | speed-up vs none |",
            "|---|---|---|---|---|"]
    eager = None
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])
                   if a not in ("--quick",)]
    for mode in modes:
        cmd = [sys.executable, __file__, *passthrough, "--mode", mode]
        if args.quick:
            cmd += ["--preset", "tiny", "--size", "32", "--batch", "2", "--words", "5",
                    "--steps", "1"]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append(f"| {mode} | not done in {args.timeout:.0f} s | | | |")
            continue
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
            rows.append(f"| {mode} | failed after {time.perf_counter() - start:.0f} s: {last} "
                        "| | | |")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        if mode == "none":
            eager = res["step_s"]
        compile_s = f"{res['first_s'] - eager:.1f}" if eager and mode != "none" else "—"
        speedup = f"{eager / res['step_s']:.2f}×" if eager else "—"
        rows.append(f"| {mode} | {res['first_s']:.2f} | {compile_s} | {res['step_s']:.3f} | "
                    f"{speedup} |")
        print(rows[-1], file=sys.stderr, flush=True)  # progress
    table = "\n".join(rows)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
