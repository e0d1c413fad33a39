"""ReferIt in the layout of the original DMN code (and text_objseg before it).

```
<root>/referit/images/<image>.jpg
<root>/referit/mask/<image>_<obj>.mat              MATLAB v5, key segimg_t; the object is segimg_t == 0
<root>/referit/splits/referit/referit_query_<split>.json   {"<image>_<obj>": ["query", ...], ...}
```
The DMN loader looks for the query files under ``<root>/referit/splits/``; ``<root>/splits/`` is
accepted too. Splits: train, val, test and trainval (train + val), each read when its file exists.

Ids are built from the file names, so they are the same in every split that holds an object:
``ref_id = ann_id = image * 1000 + obj`` and ``sent_id = ref_id * 100 + k``, where k is the
query's position in the JSON list. Category ids are 0 (ReferIt has no categories). Refs carry
``bbox = (0, 0, 0, 0)``: the writer derives the box from the rasterised mask, so the ``.mat`` files
are read once, in the build workers, rather than here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, UnidentifiedImageError

from .errors import DataError, SkipItem
from .records import ImageItem, MatMask, Ref, Sentence, Source

SPLITS = ("train", "val", "test", "trainval")
OBJ_STRIDE = 1000  # ref_id = image * OBJ_STRIDE + obj
SENT_STRIDE = 100  # sent_id = ref_id * SENT_STRIDE + k
MASK_KEY = "segimg_t"

_KEY_RE = re.compile(r"(\d+)_(\d+)")


def load_mat_mask(path: str | Path) -> np.ndarray:
    """The object mask of one ReferIt ``.mat`` file: ``(h, w) uint8``, 1 where ``segimg_t == 0``.

    Raises ``SkipItem("missing_mask")`` for a missing file and ``SkipItem("corrupt_mask")`` for one
    that cannot be read or has no 2-D ``segimg_t``.
    """
    try:
        mat = scipy.io.loadmat(str(path), variable_names=[MASK_KEY])
    except FileNotFoundError:
        raise SkipItem("missing_mask", f"{path} does not exist") from None
    except Exception as err:  # scipy raises many types on a damaged file (ValueError, TypeError, zlib.error, ...)
        raise SkipItem("corrupt_mask", f"{path}: {type(err).__name__}: {err}") from None
    seg = mat.get(MASK_KEY)
    if not isinstance(seg, np.ndarray) or seg.ndim != 2 or seg.size == 0 or seg.dtype.kind not in "biuf":
        # a struct or cell array (dtype void/object) cannot be compared with 0
        what = f"a {seg.dtype} array" if isinstance(seg, np.ndarray) else type(seg).__name__
        raise SkipItem("corrupt_mask", f"{path}: {MASK_KEY!r} is not a 2-D numeric array ({what}; keys: {sorted(mat)})")
    return np.ascontiguousarray(seg == 0, dtype=np.uint8)


def read_referit_dmn(
    root: Path, *, image_root: Path | None = None, tokenize: Callable[[str], tuple[str, ...]]
) -> Source:
    """Read every split of the original DMN ReferIt layout under ``root`` into a :class:`Source`.

    Images are not decoded: width and height come from the JPEG header. Missing images, missing
    masks, malformed keys and empty queries are skipped and counted by reason (a missing image or
    mask once per file, however many splits list it).
    """
    root = Path(root)
    split_dir = _split_dir(root)
    images_dir = Path(image_root) if image_root else root / "referit" / "images"
    mask_dir = root / "referit" / "mask"
    for d, fix in ((images_dir, "--image-root"), (mask_dir, "--data-root")):
        if not d.is_dir():
            raise DataError(f"referit: {d} is not a directory (check {fix})")
    masks = {e.name for e in os.scandir(mask_dir)}
    # a file shared by several splits (trainval) is checked, and counted when missing, once
    sizes: dict[str, tuple[int, int] | None] = {}  # image file name -> (w, h); None when unusable
    missing_masks: set[str] = set()

    source = Source(dataset="referit", description=f"ReferIt, original DMN layout, at {root}", splits={})
    for split in SPLITS:
        path = split_dir / f"referit_query_{split}.json"
        if not path.is_file():
            continue
        grouped: dict[int, list[Ref]] = {}
        names: dict[int, str] = {}
        for key, queries in _load_queries(path):
            m = _KEY_RE.fullmatch(key)
            if m is None or int(m[2]) >= OBJ_STRIDE:
                source.skip("bad_key", f"{path.name}: key {key!r} is not <image>_<obj> (obj < {OBJ_STRIDE})")
                continue
            image_name, image_id, obj_id = f"{m[1]}.jpg", int(m[1]), int(m[2])
            if image_name not in sizes:
                sizes[image_name] = _image_size(images_dir / image_name, source)
            if sizes[image_name] is None:
                continue
            if f"{key}.mat" not in masks:
                if key not in missing_masks:
                    missing_masks.add(key)
                    source.skip("missing_mask", f"{mask_dir / key}.mat")
                continue
            ref = _ref(key, image_id * OBJ_STRIDE + obj_id, queries, mask_dir, tokenize, source)
            if ref is not None:
                grouped.setdefault(image_id, []).append(ref)
                names[image_id] = image_name
        items = []
        for image_id in sorted(grouped):
            width, height = sizes[names[image_id]]
            items.append(
                ImageItem(image_id=image_id, file_name=names[image_id], split=split, width=width, height=height,
                          refs=tuple(sorted(grouped[image_id], key=lambda r: r.ref_id)),
                          path=str(images_dir / names[image_id]))
            )
        if items:
            source.splits[split] = items
    return source


def _split_dir(root: Path) -> Path:
    candidates = [root / "referit" / "splits" / "referit", root / "splits" / "referit"]
    for d in candidates:
        if any(d.glob("referit_query_*.json")):
            return d
    raise DataError(
        f"referit: no referit_query_<split>.json in {candidates[0]} or {candidates[1]} "
        "(expected the original DMN layout under --data-root)"
    )


def _load_queries(path: Path) -> list[tuple[str, list[str]]]:
    try:
        data = json.loads(path.read_bytes())
    except ValueError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not all(
        isinstance(q, list) and all(isinstance(s, str) for s in q) for q in data.values()
    ):
        raise DataError(f"{path}: expected a JSON object mapping '<image>_<obj>' to a list of query strings")
    return list(data.items())


def _image_size(path: Path, source: Source) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except FileNotFoundError:
        source.skip("missing_image", str(path))
    except (UnidentifiedImageError, OSError) as err:
        source.skip("corrupt_image", f"{path}: {err}")
    return None


def _ref(
    key: str,
    ref_id: int,
    queries: list[str],
    mask_dir: Path,
    tokenize: Callable[[str], tuple[str, ...]],
    source: Source,
) -> Ref | None:
    sentences = []
    for k, raw in enumerate(queries):
        if k >= SENT_STRIDE:
            source.skip("too_many_sentences", f"{key}: query {k} and later (ids allow {SENT_STRIDE} per object)")
            break
        tokens = tuple(tokenize(raw))
        if not raw.strip() or not tokens:
            source.skip("empty_sentence", f"{key}: query {k} is {raw!r}")
            continue
        sentences.append(Sentence(sent_id=ref_id * SENT_STRIDE + k, raw=raw, tokens=tokens))
    if not sentences:
        source.skip("no_sentences", f"{key} has no usable query")
        return None
    return Ref(ref_id=ref_id, ann_id=ref_id, category_id=0, bbox=(0.0, 0.0, 0.0, 0.0),
               segmentation=MatMask(path=str(mask_dir / f"{key}.mat")), sentences=tuple(sentences))
