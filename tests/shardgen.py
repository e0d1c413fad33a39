"""Tiny valid ``dmn-shards/1`` datasets for the stream tests (docs/shards.md), written with
``webdataset.TarWriter`` with fixed headers, so the same arguments give the same bytes.

Images cycle through landscape, portrait, square and very wide shapes (one PNG among the JPEGs);
refs have random polygon masks, sentences 1–8 words with side words ("left", "rightmost"…) and an
occasional out-of-vocabulary word (id ``<unk>``).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from pycocotools import mask as cocomask

from dmn_data.keys import FORMAT, MANIFEST, VOCAB, shard_name

VOCAB_TOKENS = ["<pad>", "<unk>", "the", "man", "on", "left", "right", "leftmost", "rightmost", "red",
                "car", "woman", "in", "blue", "shirt", "dog", "far", "big", "small", "a", "tree", "leftover"]
WORDS = VOCAB_TOKENS[2:]
#: (width, height) of the images, cycled; index 3 (very wide) is stored as PNG
SHAPES = [(120, 90), (60, 140), (50, 50), (200, 64), (97, 131)]


def _polygon_rle(rng: np.random.Generator, w: int, h: int) -> dict:
    while True:
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 7))))
        radii = rng.uniform(0.15, 0.45, size=angles.size) * min(w, h)
        poly = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).clip(0, [w, h])
        rle = cocomask.merge(cocomask.frPyObjects([poly.ravel().tolist()], h, w))
        if cocomask.area(rle) > 0:
            return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def _image_bytes(rng: np.random.Generator, w: int, h: int, png: bool) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    pixels = (base + rng.integers(0, 40, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG" if png else "JPEG", quality=90)
    return buf.getvalue()


def _sample(rng: np.random.Generator, image_id: int, split: str, index: int, shapes) -> tuple[str, dict, dict]:
    w, h = shapes[index % len(shapes)]
    png = index % len(shapes) == 3
    refs = []
    for r in range(int(rng.integers(1, 4))):
        ref_id = image_id * 10 + r
        sentences = []
        for s in range(int(rng.integers(1, 4))):
            tokens = [str(t) for t in rng.choice(WORDS, size=int(rng.integers(1, 9)))]
            if rng.random() < 0.2:
                tokens.insert(int(rng.integers(0, len(tokens) + 1)), "zebra")
            ids = [VOCAB_TOKENS.index(t) if t in VOCAB_TOKENS else 1 for t in tokens]
            sentences.append({"sent_id": ref_id * 10 + s, "raw": " ".join(tokens), "tokens": tokens, "ids": ids})
        refs.append({"ref_id": ref_id, "ann_id": ref_id + 7, "category_id": 1 + r, "bbox": [0.0, 0.0, 1.0, 1.0],
                     "mask": _polygon_rle(rng, w, h), "sentences": sentences})
    meta = {"image_id": image_id, "file_name": f"img_{image_id}.{'png' if png else 'jpg'}", "width": w,
            "height": h, "split": split, "refs": refs}
    sample = {"__key__": str(image_id), "png" if png else "jpg": _image_bytes(rng, w, h, png),
              "json": json.dumps(meta, sort_keys=True).encode("utf-8")}
    return str(image_id), sample, meta


def write_dataset(root: Path, *, splits: dict[str, int] | None = None, shard_size: int = 2, seed: int = 0,
                  dataset: str = "tiny", shapes: list[tuple[int, int]] | None = None) -> Path:
    """Write ``<root>/<dataset>/{vocab.json, <split>/*.tar, manifest.json}``; return the dataset dir.

    ``splits`` maps split → number of images (default ``{"train": 8, "val": 5}``).
    """
    splits = splits or {"train": 8, "val": 5}
    shapes = shapes or SHAPES
    rng = np.random.default_rng(seed)
    ddir = Path(root) / dataset
    ddir.mkdir(parents=True, exist_ok=True)
    vocab = (json.dumps(VOCAB_TOKENS) + "\n").encode("utf-8")
    (ddir / VOCAB).write_bytes(vocab)
    out_splits = {}
    next_id = 1
    for split, n_images in splits.items():
        (ddir / split).mkdir(exist_ok=True)
        shards = []
        for k in range(0, n_images, shard_size):
            name = f"{split}/{shard_name(dataset, split, k // shard_size)}"
            stats = {"name": name, "images": 0, "refs": 0, "sentences": 0}
            with wds.TarWriter(str(ddir / name), encoder=False, mtime=0, user="", group="", mode=0o644) as tw:
                for i in range(k, min(k + shard_size, n_images)):
                    _, sample, meta = _sample(rng, next_id, split, i, shapes)
                    next_id += 1
                    tw.write(sample)
                    stats["images"] += 1
                    stats["refs"] += len(meta["refs"])
                    stats["sentences"] += sum(len(r["sentences"]) for r in meta["refs"])
            data = (ddir / name).read_bytes()
            stats.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
            shards.append(stats)
        out_splits[split] = {key: sum(s[key] for s in shards) for key in ("images", "refs", "sentences", "bytes")}
        out_splits[split]["shards"] = shards
    manifest = {"format": FORMAT, "dataset": dataset, "source": "tests/shardgen.py", "options": {"seed": seed},
                "vocab": {"file": VOCAB, "size": len(VOCAB_TOKENS), "sha256": hashlib.sha256(vocab).hexdigest()},
                "splits": out_splits,
                "totals": {key: sum(s[key] for s in out_splits.values()) for key in ("images", "refs", "sentences", "bytes")},
                "skipped": {}}
    (ddir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return ddir


def read_expected(ddir: Path, split: str) -> list[dict]:
    """Every (image, ref, sentence) of ``split`` in shard order, read with ``tarfile`` directly
    (independently of the stream): dicts with the image bytes, meta, ref and sentence."""
    manifest = json.loads((Path(ddir) / MANIFEST).read_text())
    out = []
    for shard in manifest["splits"][split]["shards"]:
        with tarfile.open(Path(ddir) / shard["name"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # in tar order
        for name in [n for n in members if n.endswith(".json")]:
            meta = json.loads(members[name])
            key = name[: -len(".json")]
            data = members.get(key + ".jpg") or members[key + ".png"]
            for ref in meta["refs"]:
                for sent in ref["sentences"]:
                    out.append({"data": data, "meta": meta, "ref": ref, "sent": sent})
    return out
