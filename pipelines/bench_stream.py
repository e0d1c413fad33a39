"""Benchmark the shard stream against the decode floor and the original DMN loader, side by side.

    .venv/bin/python pipelines/bench_stream.py            # 300 images, 3 rounds: ~10 min on 2 cores
    .venv/bin/python pipelines/bench_stream.py --quick    # seconds: a smoke run

One run generates RefCOCO-like data once (640×480-ish JPEGs, ~2.5 refs and ~7 sentences per image,
random polygon masks) in three forms: shards written by the real writer (``dmn_data.writer``),
plain JPEG files, and the original DMN layout's per-ref float32 ``.pth`` masks. Then, in examples
(image, ref, sentence) per second, each example decoded once as any loader must:

- ``stream``: ``make_loader(train=True)`` at ``--size`` with 0/1/2 workers (an epoch, start-up and
  shuffle-buffer fill included);
- ``floor``: read the JPEG file and fully decode it, nothing else (1 and 2 processes);
- ``original``: a re-implementation of the original DMN loader: full PIL decode + ``torch.load``
  of the ref's ``.pth`` mask + resize to ``--size`` + pad, through a torch DataLoader.

Then a long training stream (``--long`` examples, 2 workers) reports the RSS of the main process
and of each worker near its start and at its end, and how well batches mix images (distinct
images per example of a batch, averaged).

Then the same shards from a loopback HTTP server (a thread of this process), with 2 workers:
the local folder, HTTP without a cache, HTTP with ``cache_dir`` while the cache fills (a fresh
cache each round) and HTTP from a warm cache (every shard cached by one evaluation pass first),
interleaved over the rounds. Loopback has no network latency or bandwidth limit: this measures
our overhead (requests, hashing, copying into the cache), not a cloud's.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import http.server
import io
import json
import multiprocessing
import os
import platform
import statistics
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from dmn_data.keys import FORMAT, MANIFEST, VOCAB, shard_name
from dmn_data.masks import decode_rle, segmentation_to_rle
from dmn_data.records import ImageItem, Ref, Sentence
from dmn_data.stream import make_loader
from dmn_data.tokens import vocab_bytes
from dmn_data.writer import ShardTask, write_shard

WORDS = ["the", "man", "woman", "left", "right", "red", "blue", "car", "dog", "on", "in", "shirt",
         "far", "big", "small", "near", "white", "black", "person", "with", "table", "chair", "cat"]
SHAPES = [(640, 480), (640, 427), (480, 640), (640, 426), (500, 375), (640, 512)]


# ---- data ----------------------------------------------------------------------------------------
def _polygon(rng: np.random.Generator, w: int, h: int) -> list[float]:
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(5, 12))))
    radii = rng.uniform(0.05, 0.35, size=angles.size) * min(w, h)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).clip(0, [w - 1, h - 1]).ravel().tolist()


def _photo(rng: np.random.Generator, w: int, h: int) -> bytes:
    """A JPEG about as large as a COCO photo (~100–200 kB): shapes over gradients, plus texture."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * rng.uniform(80, 255), yy / h * rng.uniform(80, 255),
                     np.full_like(xx, rng.uniform(0, 255))], -1)
    im = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(30):
        draw.polygon([tuple(p) for p in np.reshape(_polygon(rng, w, h), (-1, 2))],
                     fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    pixels = np.asarray(im).astype(np.int16) + rng.normal(0, 12, (h, w, 3)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def generate(root: Path, n_images: int, seed: int = 0) -> tuple[Path, list[dict]]:
    """Shards (real writer) + JPEG files + per-ref ``.pth`` masks. Returns the dataset dir and the
    original loader's example list (image path, mask path, token ids)."""
    rng = np.random.default_rng(seed)
    vocab = ["<pad>", "<unk>", *WORDS]
    index = {t: i for i, t in enumerate(vocab)}
    ddir, files = root / "bench", root / "files"
    (ddir / "train").mkdir(parents=True)
    files.mkdir()
    items, examples = [], []
    for i in range(n_images):
        w, h = SHAPES[i % len(SHAPES)]
        image_id = i + 1
        data = _photo(rng, w, h)
        (files / f"{image_id}.jpg").write_bytes(data)
        refs = []
        for r in range(int(rng.choice([1, 2, 3, 4], p=[0.2, 0.3, 0.3, 0.2]))):
            ref_id = image_id * 10 + r
            poly = _polygon(rng, w, h)
            mask = decode_rle(segmentation_to_rle([poly], h, w))
            mask_path = files / f"{image_id}_{r}.pth"
            torch.save(torch.from_numpy(mask.astype(np.float32)), mask_path)
            sents = []
            for s in range(int(rng.choice([2, 3, 4], p=[0.4, 0.4, 0.2]))):
                tokens = tuple(str(t) for t in rng.choice(WORDS, size=int(rng.integers(2, 12))))
                sents.append(Sentence(sent_id=ref_id * 10 + s, raw=" ".join(tokens), tokens=tokens))
                examples.append({"image": str(files / f"{image_id}.jpg"), "mask": str(mask_path),
                                 "ids": [index[t] for t in tokens]})
            refs.append(Ref(ref_id=ref_id, ann_id=ref_id, category_id=1, bbox=(0.0, 0.0, 1.0, 1.0),
                            segmentation=[poly], sentences=tuple(sents)))
        items.append(ImageItem(image_id=image_id, file_name=f"{image_id}.jpg", split="train", width=w,
                               height=h, refs=tuple(refs), data=data))
    shard_size = 100
    shards = []
    for k in range(0, len(items), shard_size):
        name = shard_name("bench", "train", k // shard_size)
        st = write_shard(ShardTask(path=str(ddir / "train" / name), items=tuple(items[k:k + shard_size]),
                                   vocab_index=index, strict=True))
        shards.append({"name": f"train/{name}", "images": st.images, "refs": st.refs,
                       "sentences": st.sentences, "bytes": st.bytes, "sha256": st.sha256})
    vbytes = vocab_bytes(vocab)
    (ddir / VOCAB).write_bytes(vbytes)
    split = {k: sum(s[k] for s in shards) for k in ("images", "refs", "sentences", "bytes")}
    manifest = {"format": FORMAT, "dataset": "bench", "source": "pipelines/bench_stream.py",
                "options": {"seed": seed, "images": n_images},
                "vocab": {"file": VOCAB, "size": len(vocab), "sha256": hashlib.sha256(vbytes).hexdigest()},
                "splits": {"train": {**split, "shards": shards}}, "totals": split, "skipped": {}}
    (ddir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return ddir, examples


# ---- the three readers ---------------------------------------------------------------------------
def _decode_full(path: str) -> int:
    with Image.open(path) as im:
        return int(np.asarray(im.convert("RGB"))[0, 0, 0])


def floor(examples: list[dict], processes: int) -> float:
    start = time.perf_counter()
    paths = [e["image"] for e in examples]
    if processes == 1:
        for p in paths:
            _decode_full(p)
    else:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pool.map(_decode_full, paths, chunksize=32)
    return len(paths) / (time.perf_counter() - start)


class OriginalDataset(torch.utils.data.Dataset):
    """The original DMN loader's per-example work (``referit_loader.py`` + ``utils/transforms.py``):
    full decode, ``torch.load`` of the ref's float mask, resize longest side, pad."""

    def __init__(self, examples: list[dict], size: int):
        self.examples, self.size = examples, size

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        e = self.examples[i]
        img = Image.open(e["image"]).convert("RGB")
        mask = torch.load(e["mask"])
        w, h = img.size
        scale = self.size / max(h, w)
        rh, rw = round(h * scale), round(w * scale)
        img = torch.from_numpy(np.array(img.resize((rw, rh), Image.BILINEAR))).permute(2, 0, 1)
        mask = F.interpolate(mask[None, None], size=(rh, rw), mode="bilinear", align_corners=False)[0, 0]
        image = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
        image[:, :rh, :rw] = img
        target = torch.zeros(self.size, self.size)
        target[:rh, :rw] = mask
        tokens = torch.zeros(20, dtype=torch.int64)
        tokens[:len(e["ids"][:20])] = torch.tensor(e["ids"][:20])
        return image, target, tokens


def original(examples: list[dict], size: int, batch_size: int, workers: int) -> float:
    loader = torch.utils.data.DataLoader(OriginalDataset(examples, size), batch_size=batch_size,
                                         shuffle=True, num_workers=workers,
                                         generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    n = sum(images.shape[0] for images, _, _ in loader)
    return n / (time.perf_counter() - start)


def stream(ddir: Path | str, size: int, batch_size: int, workers: int, examples: int,
           cache_dir: Path | None = None) -> float:
    loader = make_loader(str(ddir), "train", size=size, batch_size=batch_size, train=True, workers=workers,
                         epoch_batches=max(1, examples // batch_size),
                         cache_dir=str(cache_dir) if cache_dir else None)
    start = time.perf_counter()
    n = sum(b["image"].shape[0] for b in loader)
    return n / (time.perf_counter() - start)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return kb / 1024


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return sorted(out)


def long_run(ddir: Path, size: int, batch_size: int, examples: int) -> dict:
    """RSS (MB) of the main process and each worker after 20 batches and at the last batch."""
    loader = make_loader(ddir, "train", size=size, batch_size=batch_size, train=True, workers=2,
                         epoch_batches=max(21, examples // batch_size))
    me, marks, distinct = os.getpid(), {}, []
    start = time.perf_counter()
    for i, batch in enumerate(loader, 1):
        distinct.append(len(set(batch["image_id"].tolist())) / len(batch["image_id"]))
        if i == 20 or i == len(loader):
            marks["start" if i == 20 else "end"] = {"main": _rss_mb(me), "workers": [_rss_mb(p) for p in _children(me)]}
    seconds = time.perf_counter() - start
    return {"examples": len(loader) * batch_size, "seconds": seconds, "distinct": statistics.mean(distinct), **marks}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # An epoch that ends mid-shard closes its connections while the server still sends:
        # expected here, so no traceback for it; anything else is still printed.
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


def http_runs(ddir: Path, tmp: Path, size: int, batch_size: int, examples: int, rounds: int) -> dict:
    """examples/s (2 workers) per source, ``rounds`` interleaved rounds each."""
    handler = functools.partial(_Quiet, directory=str(ddir.parent))
    httpd = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{ddir.name}"
    warm = tmp / "cache-warm"
    # Every shard once, so the warm runs never download.
    for _ in make_loader(url, "train", size=size, batch_size=batch_size, train=False, workers=2,
                         cache_dir=str(warm)):
        pass

    def cold() -> float:
        shutil.rmtree(tmp / "cache-cold", ignore_errors=True)
        return stream(url, size, batch_size, 2, examples, cache_dir=tmp / "cache-cold")

    runs = {"local folder": lambda: stream(ddir, size, batch_size, 2, examples),
            "HTTP, no cache": lambda: stream(url, size, batch_size, 2, examples),
            "HTTP, --cache-dir filling": cold,
            "HTTP, --cache-dir warm": lambda: stream(url, size, batch_size, 2, examples, cache_dir=warm)}
    rates: dict = {key: [] for key in runs}
    try:
        for _ in range(rounds):
            for key, run in runs.items():
                rates[key].append(run())
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--long", type=int, default=20000, help="examples in the memory run")
    ap.add_argument("--quick", action="store_true", help="40 images, 1 round, 1,000-example memory run")
    ap.add_argument("--out", type=Path, default=None, help="where to write the data (default: a temp dir)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.rounds, args.long = 40, 1, 1000
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        t0 = time.perf_counter()
        ddir, examples = generate(Path(tmp), args.images)
        manifest = json.loads((ddir / MANIFEST).read_text())["splits"]["train"]
        print(f"# bench_stream {datetime.date.today()} | {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores | torch {torch.__version__}")
        print(f"data: {manifest['images']} images, {manifest['refs']} refs, {manifest['sentences']} sentences, "
              f"{manifest['bytes'] / manifest['images'] / 1e3:.0f} kB/image in {len(manifest['shards'])} shards "
              f"(generated in {time.perf_counter() - t0:.0f} s); size {args.size}, batch {args.batch_size}\n")
        n = len(examples)
        runs = {("floor", "1 process"): lambda: floor(examples, 1),
                ("floor", "2 processes"): lambda: floor(examples, 2)}
        for w in (0, 1, 2):
            runs[("stream", f"{w} workers")] = lambda w=w: stream(ddir, args.size, args.batch_size, w, n)
            runs[("original", f"{w} workers")] = lambda w=w: original(examples, args.size, args.batch_size, w)
        # Rounds interleave the readers, so that load from other processes hits them alike.
        rates: dict = {key: [] for key in runs}
        for _ in range(args.rounds):
            for key, run in runs.items():
                rates[key].append(run())
        names = {"floor": "floor: read + full JPEG decode", "stream": "stream (make_loader, train)",
                 "original": "original DMN loader (re-implemented)"}
        print(f"examples/s, median of {args.rounds} interleaved rounds (min–max)\n")
        print("| reader | parallelism | examples/s | range |\n|---|---|---:|---:|")
        for kind in names:
            for (k, par), r in rates.items():
                if k == kind:
                    print(f"| {names[kind]} | {par} | {statistics.median(r):.0f} | {min(r):.0f}–{max(r):.0f} |")
        rate = {key: statistics.median(r) for key, r in rates.items()}
        print("\n| workers | stream / floor (same processes) | stream / original |\n|---|---:|---:|")
        for w, procs in ((0, "1 process"), (1, "1 process"), (2, "2 processes")):
            s = rate[("stream", f"{w} workers")]
            print(f"| {w} | {s / rate[('floor', procs)]:.2f} | {s / rate[('original', f'{w} workers')]:.2f} |")
        mem = long_run(ddir, args.size, args.batch_size, args.long)
        fmt = lambda m: f"main {m['main']:.0f} MB, workers {', '.join(f'{x:.0f}' for x in m['workers'])} MB"  # noqa: E731
        print(f"\nlong run: {mem['examples']} examples, 2 workers, {mem['examples'] / mem['seconds']:.0f} examples/s")
        print(f"RSS after 20 batches: {fmt(mem['start'])}\nRSS at the last batch: {fmt(mem['end'])}")
        print(f"mixing: {mem['distinct']:.3f} distinct images per example in a batch (1 = every "
              f"example of a batch from another image)")
        rates = http_runs(ddir, Path(tmp), args.size, args.batch_size, n, args.rounds)
        print(f"\nthe same stream (train, 2 workers) by source, median of {args.rounds} interleaved rounds\n")
        print("| source | examples/s | range | / local |\n|---|---:|---:|---:|")
        local = statistics.median(rates["local folder"])
        for key, r in rates.items():
            print(f"| {key} | {statistics.median(r):.0f} | {min(r):.0f}–{max(r):.0f} | "
                  f"{statistics.median(r) / local:.2f} |")


if __name__ == "__main__":
    main()
