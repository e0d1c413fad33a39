"""Reference masks: the union of every part of the referred annotation, as COCO compressed RLE.

The REFER API builds masks with ``np.sum`` over decoded parts, which overflows/non-binarises where
parts overlap; we merge the parts' RLEs with pycocotools (a union), which is exact and never
materialises the pixels.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as cocomask

from .errors import SkipItem
from .records import MatMask, RleMask


def _polygon_ok(poly: object) -> bool:
    """At least 3 points of finite numbers."""
    if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2:
        return False
    try:
        return bool(np.isfinite(np.asarray(poly, dtype=np.float64)).all())
    except (TypeError, ValueError):
        return False


def _rle_parts(seg: object, h: int, w: int) -> list[dict]:
    """RLE parts (pycocotools' dicts with bytes counts) of one raw segmentation."""
    if isinstance(seg, RleMask):
        if tuple(seg.size) != (h, w):
            raise SkipItem("mask_size_mismatch", f"mask is {seg.size}, image is {(h, w)}")
        return [{"size": [h, w], "counts": seg.counts.encode("ascii")}]
    if isinstance(seg, MatMask):
        from .referit import load_mat_mask  # only the ReferIt (DMN layout) reader produces these

        m = load_mat_mask(seg.path)
        if m.shape != (h, w):
            raise SkipItem("mask_size_mismatch", f"{seg.path}: mask is {m.shape}, image is {(h, w)}")
        return [cocomask.encode(np.asfortranarray(m.astype(np.uint8)))]
    if isinstance(seg, dict):
        seg = [seg]
    if not isinstance(seg, (list, tuple)) or not seg:
        raise SkipItem("empty_mask", f"segmentation is {type(seg).__name__} {str(seg)[:40]!r}")
    parts: list[dict] = []
    polys = [p for p in seg if not isinstance(p, dict)]
    good = [list(map(float, p)) for p in polys if _polygon_ok(p)]
    if good:
        parts.extend(cocomask.frPyObjects(good, h, w))
    for rle in (p for p in seg if isinstance(p, dict)):
        size = rle.get("size")
        counts = rle.get("counts")
        if size is None or counts is None:
            raise SkipItem("bad_rle", "RLE part without size/counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
            raise SkipItem("bad_rle", f"RLE size {str(size)[:40]!r} is not [height, width]")
        if list(size) != [h, w]:
            raise SkipItem("mask_size_mismatch", f"RLE is {list(size)}, image is {[h, w]}")
        check_rle_counts(counts, h, w)
        if isinstance(counts, list):  # uncompressed RLE
            parts.append(cocomask.frPyObjects(rle, h, w))
        else:
            parts.append({"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
    if not parts:
        raise SkipItem("degenerate_polygon", f"no polygon with >= 3 points among {len(polys)}")
    return parts


def rle_counts(counts: object) -> list[int]:
    """The run lengths of an RLE ``counts`` (a list, or COCO's compressed string/bytes: pycocotools'
    rleFrString, in Python, so that a bad string is a ValueError instead of garbage)."""
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            raise ValueError("uncompressed RLE counts must be integers")
        return list(counts)
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("compressed RLE counts are not ASCII") from None
    if not isinstance(counts, (bytes, bytearray)):
        raise ValueError(f"RLE counts is {type(counts).__name__}")
    out: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            if p >= len(counts):
                raise ValueError("compressed RLE counts end mid-number")
            c = counts[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"byte {counts[p]!r} is not an RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def check_rle_counts(counts: object, h: int, w: int) -> None:
    """SkipItem ``bad_rle`` unless the runs are non-negative and cover exactly ``h × w`` pixels:
    pycocotools decodes too few runs to non-binary garbage and too many past the buffer."""
    try:
        runs = rle_counts(counts)
    except ValueError as err:
        raise SkipItem("bad_rle", str(err)) from None
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise SkipItem("bad_rle", f"RLE runs cover {sum(runs)} pixels (negative: {any(r < 0 for r in runs)}), image has {h}×{w} = {h * w}")


def segmentation_to_rle(seg: object, h: int, w: int) -> dict:
    """Union mask of a raw segmentation as ``{"size": [h, w], "counts": str}`` (compressed RLE).

    Raises ``SkipItem`` for a segmentation that yields no usable (non-empty) mask.
    """
    parts = _rle_parts(seg, h, w)
    merged = cocomask.merge(parts, intersect=False) if len(parts) > 1 else parts[0]
    if int(cocomask.area(merged)) == 0:
        raise SkipItem("empty_mask", "the referred region has no pixel inside the image")
    counts = merged["counts"]
    return {"size": [h, w], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def rle_bbox(rle: dict) -> tuple[float, float, float, float]:
    """``(x, y, w, h)`` of a compressed RLE mask."""
    x, y, bw, bh = cocomask.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).tolist()
    return (x, y, bw, bh)


def decode_rle(rle: dict) -> np.ndarray:
    """``(h, w) uint8`` 0/1 mask of a ``{"size", "counts"}`` RLE (counts str or bytes)."""
    counts = rle["counts"]
    return cocomask.decode({"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
