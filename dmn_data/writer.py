"""The shard writer: one call writes one shard (the unit of work, of parallelism and of resume).

A shard is written to ``<name>.tmp`` and renamed only when complete, so a partial tar never has its
final name. Its members are sorted within a sample, samples come in image-id order, and every tar
header is fixed (mtime 0, uid/gid 0, no user names): the same items give byte-identical tars.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .errors import SkipItem
from .images import to_rgb
from .keys import META_EXT
from .masks import rle_bbox, segmentation_to_rle
from .records import ImageItem, MatMask, RleMask
from .tokens import encode

_MAGIC = {b"\xff\xd8\xff": "jpg", b"\x89PNG\r\n\x1a\n": "png"}


@dataclass(frozen=True)
class ShardTask:
    path: str  # final tar path
    items: tuple[ImageItem, ...]
    vocab_index: dict[str, int]
    strict: bool


@dataclass
class ShardStats:
    name: str
    images: int = 0
    refs: int = 0
    sentences: int = 0
    bytes: int = 0
    sha256: str = ""
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, err: SkipItem) -> None:
        self.skipped[err.reason] += 1
        shown = self.examples.setdefault(err.reason, [])
        if len(shown) < 3:
            shown.append(err.detail)


def _image_bytes(item: ImageItem) -> tuple[bytes, str]:
    """The image's bytes and extension, after checking that it decodes at the annotated size."""
    if item.data is not None:
        data = item.data
    else:
        try:
            data = Path(item.path).read_bytes()
        except FileNotFoundError:
            raise SkipItem("missing_image", f"image {item.image_id}: {item.path} not found") from None
        except OSError as err:
            raise SkipItem("unreadable_image", f"image {item.image_id}: {item.path}: {err.strerror}") from None
    ext = next((e for magic, e in _MAGIC.items() if data.startswith(magic)), None)
    if ext is None:
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format
        except Exception:  # noqa: BLE001 - any failure to identify means "not an image PIL knows"
            fmt = None
        if fmt is not None:  # a real image in another format: shards hold JPEG and PNG only
            raise SkipItem("unsupported_format", f"image {item.image_id}: {item.file_name} is {fmt}, not JPEG or PNG")
        raise SkipItem("corrupt_image", f"image {item.image_id}: {item.file_name} is neither JPEG nor PNG")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != (item.width, item.height):
                raise SkipItem("size_mismatch", f"image {item.image_id}: file is {im.size[0]}x{im.size[1]}, annotation says {item.width}x{item.height}")
            # A reduced-size JPEG decode still reads every entropy-coded byte, so truncation and
            # corruption surface here, at a fraction of the cost of a full decode.
            im.draft("RGB", (max(1, item.width // 8), max(1, item.height // 8)))
            im.load()
            try:
                to_rgb(im)  # what the stream does with it: a mode it cannot convert is skipped here
            except ValueError as err:
                raise SkipItem("unsupported_image_mode", f"image {item.image_id}: {item.file_name}: {err}") from None
    except SkipItem:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise SkipItem("corrupt_image", f"image {item.image_id}: {item.file_name}: {err}") from None
    return data, ext


def _sample_meta(item: ImageItem, vocab_index: dict[str, int], stats: ShardStats, strict: bool) -> dict | None:
    refs = []
    for ref in item.refs:
        try:
            rle = segmentation_to_rle(ref.segmentation, item.height, item.width)
        except SkipItem as err:
            if strict:
                raise
            stats.skip(SkipItem(err.reason, f"ref {ref.ref_id}: {err.detail}"))
            continue
        bbox = rle_bbox(rle) if isinstance(ref.segmentation, (MatMask, RleMask)) else ref.bbox
        refs.append({
            "ref_id": ref.ref_id, "ann_id": ref.ann_id, "category_id": ref.category_id,
            "bbox": [float(v) for v in bbox], "mask": rle,
            "sentences": [{"sent_id": s.sent_id, "raw": s.raw, "tokens": list(s.tokens),
                           "ids": encode(s.tokens, vocab_index)} for s in ref.sentences],
        })
    if not refs:
        return None
    return {"image_id": item.image_id, "file_name": item.file_name, "width": item.width,
            "height": item.height, "split": item.split, "refs": refs}


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(payload))


def write_shard(task: ShardTask) -> ShardStats:
    """Write one shard; return its stats. Items that cannot be used are counted by reason
    (or, with ``task.strict``, raise ``SkipItem`` before anything gets its final name)."""
    final = Path(task.path)
    stats = ShardStats(name=final.name)
    tmp = final.with_name(final.name + ".tmp")
    with open(tmp, "wb") as raw:
        fh = _HashingFile(raw)
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for item in sorted(task.items, key=lambda it: it.image_id):
                try:
                    data, ext = _image_bytes(item)
                except SkipItem as err:
                    if task.strict:
                        raise
                    stats.skip(err)
                    continue
                meta = _sample_meta(item, task.vocab_index, stats, task.strict)
                if meta is None:
                    stats.skip(SkipItem("no_usable_ref", f"image {item.image_id}: every ref was skipped"))
                    continue
                key = str(item.image_id)
                _add(tar, f"{key}.{ext}", data)
                _add(tar, f"{key}.{META_EXT}", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"))
                stats.images += 1
                stats.refs += len(meta["refs"])
                stats.sentences += sum(len(r["sentences"]) for r in meta["refs"])
        raw.flush()
        os.fsync(raw.fileno())
    stats.sha256 = fh.digest.hexdigest()
    stats.bytes = fh.size
    os.replace(tmp, final)
    return stats


class _HashingFile:
    """A write-only file that hashes what passes through (no second read of the shard)."""

    def __init__(self, raw):
        self.raw, self.digest, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size
