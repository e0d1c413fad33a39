"""What the per-shard sha256 check costs next to decoding: hash every shard of a split, then decode
every image of the same shards (PIL, to RGB), and print both times per image.

    python pipelines/bench_sha256.py shards/toy --split train
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", type=Path, help="a built dataset folder (manifest.json)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--max-shards", type=int, default=0, help="0 = all")
    args = ap.parse_args()
    manifest = json.loads((args.dataset / "manifest.json").read_text())
    entries = manifest["splits"][args.split]["shards"]
    entries = entries[: args.max_shards] if args.max_shards else entries
    paths = [args.dataset / e["name"] for e in entries]
    t0 = time.perf_counter()
    nbytes = 0
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                nbytes += len(chunk)
    t_hash = time.perf_counter() - t0
    t0 = time.perf_counter()
    images = 0
    for p in paths:
        with tarfile.open(p) as tar:
            for m in tar:
                if m.name.endswith((".jpg", ".png")):
                    Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB").load()
                    images += 1
    t_decode = time.perf_counter() - t0
    print(f"{len(paths)} shards, {nbytes / 1e6:.1f} MB, {images} images")
    print(f"sha256: {t_hash:.3f} s ({1e3 * t_hash / max(images, 1):.3f} ms/image, {nbytes / 1e6 / max(t_hash, 1e-9):.0f} MB/s)")
    print(f"decode: {t_decode:.3f} s ({1e3 * t_decode / max(images, 1):.3f} ms/image)")
    print(f"sha256 / decode: {100 * t_hash / max(t_decode, 1e-9):.1f} %")


if __name__ == "__main__":
    main()
