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
        if [int(s) for s in size] != [h, w]:
            raise SkipItem("mask_size_mismatch", f"RLE is {list(size)}, image is {[h, w]}")
        if isinstance(counts, list):  # uncompressed RLE
            parts.append(cocomask.frPyObjects(rle, h, w))
        else:
            parts.append({"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
    if not parts:
        raise SkipItem("degenerate_polygon", f"no polygon with >= 3 points among {len(polys)}")
    return parts


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
