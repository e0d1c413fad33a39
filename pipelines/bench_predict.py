"""Benchmark Segmenter.predict on one image: 1 phrase vs 8 phrases (CPU, random weights).

    .venv/bin/python pipelines/bench_predict.py           # tiny and paper configs (minutes)
    .venv/bin/python pipelines/bench_predict.py --quick   # seconds: tiny config, small image

The visual backbone runs once per image whatever the number of phrases, so 8 phrases should cost
at most 1.5× one phrase (the target of issue 12). Times are the fastest of a few repeats (other
jobs on the cores only ever add time). Prints a markdown table; "backbone" is
``encode_image`` alone, "per extra phrase" is (8 phrases − 1 phrase) / 7.

A second table counts the arithmetic of the same calls (``torch.utils.flop_counter``: matmuls and
convolutions, 2 FLOPs per multiply-add), which no device changes: where both the backbone and the
per-phrase work run at full speed, 8 / 1 in time cannot fall far below 8 / 1 in FLOPs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dmn_model import DMN, Segmenter, preset

VOCAB = 2000
PHRASES = ["the man on the left", "a red car", "the woman in the blue shirt", "left dog",
           "the big tree behind the fence", "white plate", "the second bottle from the right",
           "sky"]


def fastest(call, repeats: int) -> float:
    call()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def bench(name: str, size: int, image_hw: tuple[int, int], repeats: int) -> dict:
    torch.manual_seed(0)
    vocab = ["<pad>", "<unk>", *sorted({w for p in PHRASES for w in p.split()})]
    vocab += [f"w{i}" for i in range(VOCAB - len(vocab))]
    seg = Segmenter(DMN(preset(name), len(vocab)), vocab, input_size=size, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    pixels = seg.model.normalize(seg.preprocess(image)[0])
    with torch.inference_mode():
        encode = fastest(lambda: seg.model.encode_image(pixels), repeats)
    one = fastest(lambda: seg.predict(image, PHRASES[:1]), repeats)
    eight = fastest(lambda: seg.predict(image, PHRASES), repeats)
    return {"config": name, "size": size, "image": f"{image_hw[1]}x{image_hw[0]}",
            "encode": encode, "one": one, "eight": eight, "ratio": eight / one,
            "flops": {"encode": flops(lambda: seg.model.encode_image(pixels)),
                      "one": flops(lambda: seg.predict(image, PHRASES[:1])),
                      "eight": flops(lambda: seg.predict(image, PHRASES))}}


def flops(call) -> float:
    """FLOPs of the matmuls and convolutions ``call`` runs."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        call()
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny config only, a smoke test")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = ([("tiny", 64, (48, 80))] if args.quick else
             [("tiny", 96, (480, 640)), ("paper", 512, (480, 640))])
    repeats = 1 if args.quick else args.repeats
    print(f"predict on one image, CPU, {args.threads} thread(s), fastest of {repeats}\n")
    print("| config | input | image | backbone (s) | 1 phrase (s) | 8 phrases (s) "
          "| per extra phrase (s) | 8 / 1 | target ≤ 1.5 |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    results = [bench(name, size, hw, repeats) for name, size, hw in cases]
    for r in results:
        ok = "yes" if r["ratio"] <= 1.5 else "no"
        print(f"| {r['config']} | {r['size']} | {r['image']} | {r['encode']:.3f} | {r['one']:.3f} "
              f"| {r['eight']:.3f} | {(r['eight'] - r['one']) / 7:.3f} | {r['ratio']:.2f} | {ok} |")
    words = sum(len(p.split()) for p in PHRASES)
    print(f"\narithmetic of the same calls, GFLOP (matmuls and convolutions; the 8 phrases have "
          f"{words} words)\n")
    print("| config | input | backbone | 1 phrase | 8 phrases | per extra phrase | 8 / 1 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        f = {k: v / 1e9 for k, v in r["flops"].items()}
        print(f"| {r['config']} | {r['size']} | {f['encode']:.3f} | {f['one']:.3f} | {f['eight']:.3f} "
              f"| {(f['eight'] - f['one']) / 7:.3f} | {f['eight'] / f['one']:.2f} |")


if __name__ == "__main__":
    main()
