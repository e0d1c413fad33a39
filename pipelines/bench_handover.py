"""What it costs to hand a batch from DataLoader workers to the main process: one training
stream, its examples/s and where the CPU time goes (main process vs workers).

    .venv/bin/python pipelines/bench_handover.py --data /tmp/handover --examples 8000
    # A/B of two versions of the code: alternate runs from two checkouts, same data
    for i in 1 2 3; do for tree in /tmp/before /tmp/after; do
      PYTHONPATH=$tree .venv/bin/python pipelines/bench_handover.py --data /tmp/handover --examples 4000
    done; done

``--data`` is generated once (the RefCOCO-like data of ``bench_stream.py``: 300 images, 2,002
sentences) and reused by later runs. ``--strategy`` makes the workers use that sharing strategy
instead of the one the code under test sets.
Each run is a fresh process: run the variants alternately, because the machine's speed drifts.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder for the generated data (reused)")
    ap.add_argument("--examples", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--strategy", choices=("file_descriptor", "file_system"), default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from bench_stream import generate  # noqa: E402 (after sys.path)
    from dmn_data import stream
    from dmn_data.stream import make_loader

    if args.strategy:
        # The workers would set their own (dmn_data.stream._share_by_name): make them use this one.
        def share(_worker_id: int, strategy: str = args.strategy) -> None:
            torch.multiprocessing.set_sharing_strategy(strategy)
        stream._share_by_name = share

    ddir = args.data / "bench"
    if not (ddir / "manifest.json").is_file():
        generate(args.data, 300)
    loader = make_loader(str(ddir), "train", size=args.size, batch_size=args.batch_size, train=True,
                         workers=args.workers, epoch_batches=max(1, args.examples // args.batch_size))
    before = os.times()
    start = time.perf_counter()
    n = n_first = 0
    first = None
    for batch in loader:
        n += batch["image"].shape[0]
        if first is None:
            first, n_first = time.perf_counter(), n
    end = time.perf_counter()
    after = os.times()
    del loader  # the workers exit, so their CPU time is counted below
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"{n / (end - start):.0f} examples/s ({(n - n_first) / (end - first):.0f} after the first batch), "
          f"{n} examples, {args.workers} workers, strategy {args.strategy or 'the code default'} | CPU s: "
          f"main user {after.user - before.user:.2f} sys {after.system - before.system:.2f}, "
          f"workers user {children.ru_utime:.2f} sys {children.ru_stime:.2f}")


if __name__ == "__main__":
    main()
