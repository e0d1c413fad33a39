"""Real-format raw dataset trees for the tests: REFER layouts with Python-2 pickles, JPEG images."""

from __future__ import annotations

import io
import json
import shutil
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as cocomask

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "refcocog-umd-subset"


def py2_pickle(obj: object, str_encoding: str = "utf-8") -> bytes:
    """Pickle ``obj`` the way Python 2's cPickle (protocol 2) does: ``str`` values become
    SHORT_BINSTRING/BINSTRING byte strings (not unicode), which is what the REFER ``refs(*).p``
    files contain."""
    out = bytearray(b"\x80\x02")

    def emit(o: object) -> None:
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o))
        elif isinstance(o, str):
            data = o.encode(str_encoding)
            out.extend((b"U" + bytes([len(data)])) if len(data) < 256 else (b"T" + struct.pack("<i", len(data))))
            out.extend(data)
        elif isinstance(o, (list, tuple)):
            out.extend(b"](")
            for v in o:
                emit(v)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        else:
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def write_jpeg(path: Path, w: int, h: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 / max(w - 1, 1)), (yy * 255 / max(h - 1, 1)), np.full((h, w), 128.0)], -1)
    img = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=85)


def make_refer_root(root: Path, refer_name: str = "refcoco", split_by: str = "unc", *,
                    splits=("train", "val", "testA", "testB"), images_per_split: int = 3,
                    rle: bool = False, seed: int = 0) -> dict:
    """A REFER tree under ``root``: ``<refer_name>/refs(<split_by>).p`` (Python-2 pickle),
    ``<refer_name>/instances.json`` and JPEG images. Each image has 2 refs (one with two
    overlapping polygon parts, or RLE masks when ``rle``) and 1–2 sentences per ref.
    Returns {"refs": [...], "instances": {...}}."""
    rng = np.random.default_rng(seed)
    clef = refer_name == "refclef"
    img_dir = root / ("images/saiapr_tc-12" if clef else "images/mscoco/images/train2014")
    images, anns, refs = [], [], []
    image_id, ann_id, ref_id, sent_id = 100, 1000, 1, 5000
    words = ["man", "woman", "dog", "left", "right", "red", "blue", "car", "on", "the"]
    for split in splits:
        for _ in range(images_per_split):
            image_id += 7
            w, h = int(rng.integers(60, 120)), int(rng.integers(50, 100))
            fname = f"{image_id}.jpg" if clef else f"COCO_train2014_{image_id:012d}.jpg"
            write_jpeg(img_dir / fname, w, h, image_id)
            images.append({"id": image_id, "file_name": fname, "width": w, "height": h})
            for k in range(2):
                ann_id += 1
                x0, y0 = float(rng.integers(0, w // 2)), float(rng.integers(0, h // 2))
                poly = [x0, y0, x0 + w / 3, y0, x0 + w / 3, y0 + h / 3, x0, y0 + h / 3]
                if rle:
                    m = cocomask.decode(cocomask.frPyObjects([poly], h, w))[..., 0]
                    seg = cocomask.encode(np.asfortranarray(m))
                    seg = {"size": [h, w], "counts": seg["counts"].decode("ascii")}
                elif k == 0:  # two overlapping parts: the union, not a sum
                    seg = [poly, [x0 + 2, y0 + 2, x0 + w / 2, y0 + 2, x0 + w / 2, y0 + h / 2]]
                else:
                    seg = [poly]
                anns.append({"id": ann_id, "image_id": image_id, "category_id": k + 1,
                             "segmentation": seg, "bbox": [x0, y0, w / 3, h / 3], "area": 1.0, "iscrowd": 0})
                sents = []
                for _ in range(1 + k):
                    sent_id += 1
                    toks = [str(t) for t in rng.choice(words, size=int(rng.integers(2, 6)))]
                    sents.append({"tokens": toks, "raw": " ".join(toks).capitalize() + ".", "sent_id": sent_id, "sent": " ".join(toks)})
                ref_id += 1
                refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": k + 1,
                             "split": split, "sent_ids": [s["sent_id"] for s in sents], "sentences": sents,
                             "file_name": fname.replace(".jpg", f"_{ann_id}.jpg")})
    instances = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    folder = root / refer_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"refs({split_by}).p").write_bytes(py2_pickle(refs))
    (folder / "instances.json").write_text(json.dumps(instances))
    return {"refs": refs, "instances": instances}


def make_fixture_root(root: Path) -> dict:
    """The real RefCOCOg-UMD subset (tests/fixtures, MIT) with generated JPEGs of the listed sizes."""
    folder = root / "refcocog"
    folder.mkdir(parents=True)
    for name in ("refs(umd).p", "instances.json"):
        shutil.copy(FIXTURE / name, folder / name)
    instances = json.loads((folder / "instances.json").read_text())
    for im in instances["images"]:
        write_jpeg(root / "images/mscoco/images/train2014" / im["file_name"], im["width"], im["height"], im["id"])
    return instances


def jpeg_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), "gray").save(buf, "JPEG")
    return buf.getvalue()
