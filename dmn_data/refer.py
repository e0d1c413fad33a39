"""Reader of the REFER layout (RefCOCO, RefCOCO+, RefCOCOg, RefCLEF).

``<root>/<refer name>/refs(<split_by>).p`` (a Python-2 pickle of ref dicts) and
``<root>/<refer name>/instances.json`` (COCO-style images/annotations); images under
``<root>/images/mscoco/images/train2014/`` (RefCOCO*) or ``<root>/images/saiapr_tc-12/`` (RefCLEF),
or wherever ``--image-root`` says.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .pickles import TextReport, load_plain_pickle
from .records import ImageItem, Ref, Sentence, Source
from .safety import inside, is_safe_name


@dataclass(frozen=True)
class ReferSpec:
    refer_name: str  # folder under the data root
    split_by: str  # refs(<split_by>).p
    image_dir: str  # default image folder under the data root
    splits: tuple[str, ...]  # the splits the dataset defines


_COCO = "images/mscoco/images/train2014"
_CLEF = "images/saiapr_tc-12"

#: Our dataset names → where REFER keeps them.
REFER_DATASETS: dict[str, ReferSpec] = {
    "unc": ReferSpec("refcoco", "unc", _COCO, ("train", "val", "testA", "testB")),
    "unc+": ReferSpec("refcoco+", "unc", _COCO, ("train", "val", "testA", "testB")),
    "gref": ReferSpec("refcocog", "google", _COCO, ("train", "val")),
    "gref-umd": ReferSpec("refcocog", "umd", _COCO, ("train", "val", "test")),
    "referit": ReferSpec("refclef", "berkeley", _CLEF, ("train", "val", "test")),
    "refcoco-google": ReferSpec("refcoco", "google", _COCO, ("train", "val", "testA", "testB")),
    "refclef-unc": ReferSpec("refclef", "unc", _CLEF, ("train", "val", "testA", "testB", "testC")),
}


def refer_dataset_name(refer_name: str, split_by: str | None) -> str:
    """Map REFER's (name, split_by) — e.g. ("refcocog", "umd") — to our dataset name."""
    matches = [n for n, s in REFER_DATASETS.items() if s.refer_name == refer_name and (split_by in (None, s.split_by))]
    if not matches:
        valid = sorted({s.split_by for s in REFER_DATASETS.values() if s.refer_name == refer_name})
        raise DataError(f"--split-by {split_by!r} is not available for {refer_name}; choose from {', '.join(valid)}")
    return matches[0]  # the table lists each name's default split_by first


def read_refer(
    dataset: str,
    root: Path,
    *,
    image_root: Path | None,
    tokenize: Callable[[str], tuple[str, ...]],
) -> Source:
    """Read one REFER dataset into a :class:`Source` (every split present in the refs file)."""
    spec = REFER_DATASETS[dataset]
    folder = Path(root) / spec.refer_name
    refs_path = folder / f"refs({spec.split_by}).p"
    inst_path = folder / "instances.json"
    for p in (refs_path, inst_path):
        if not p.is_file():
            raise DataError(f"{dataset}: {p} not found (expected the REFER layout under --data-root {root})")
    images_dir = Path(image_root) if image_root else Path(root) / spec.image_dir

    text = TextReport()
    refs = load_plain_pickle(refs_path, text)
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DataError(f"{refs_path}: expected a list of ref dicts, got {type(refs).__name__}")
    try:
        instances = json.loads(inst_path.read_bytes())
        anns = {a["id"]: a for a in instances["annotations"]}
        imgs = {i["id"]: i for i in instances["images"]}
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise DataError(f"{inst_path}: not a COCO instances file ({type(err).__name__}: {str(err)[:150]})") from None

    source = Source(dataset=dataset, description=f"REFER {spec.refer_name} split_by={spec.split_by} at {folder}", splits={},
                    latin1_strings=text.latin1, latin1_examples=text.examples)
    grouped: dict[tuple[str, int], list[Ref]] = defaultdict(list)
    for raw_ref in refs:
        try:
            _add_ref(raw_ref, anns, imgs, source, grouped, tokenize)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            # a field of the wrong type (a list for an id, a null bbox, a dict for sentences ...)
            source.skip("malformed_ref", f"ref {raw_ref.get('ref_id')!r}: {type(err).__name__}: {str(err)[:100]}")
    for (split, image_id), image_refs in sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        info = imgs[image_id]
        image_path = inside(images_dir, info.get("file_name"))
        if image_path is None:
            source.skip("unsafe_path", f"image {image_id}: file_name {info.get('file_name')!r} leaves {images_dir}")
            continue
        width, height = info.get("width"), info.get("height")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
            source.skip("malformed_image", f"image {image_id}: width {width!r}, height {height!r} are not positive integers")
            continue
        source.splits.setdefault(split, []).append(
            ImageItem(image_id=int(image_id), file_name=info["file_name"], split=split,
                      width=width, height=height,
                      refs=tuple(sorted(image_refs, key=lambda r: r.ref_id)),
                      path=str(image_path))
        )
    return source


def _add_ref(raw_ref: dict, anns: dict, imgs: dict, source: Source, grouped: dict, tokenize) -> None:
    """Check one raw ref and add it to ``grouped[(split, image_id)]``, or count why it is skipped.
    A field of the wrong type raises (KeyError/TypeError/ValueError/AttributeError)."""
    try:
        ref_id, ann_id, image_id, split = raw_ref["ref_id"], raw_ref["ann_id"], raw_ref["image_id"], raw_ref["split"]
    except KeyError as err:
        source.skip("malformed_ref", f"ref without {err}")
        return
    if not is_safe_name(split):
        # the split becomes a folder and a shard prefix under --out: never a path
        source.skip("bad_split_name", f"ref {ref_id!r}: split {split!r} is not a valid name")
        return
    ann = anns.get(ann_id)
    if ann is None:
        source.skip("missing_annotation", f"ref {ref_id}: annotation {ann_id} not in instances.json")
        return
    if image_id not in imgs:
        source.skip("missing_image_entry", f"ref {ref_id}: image {image_id} not in instances.json")
        return
    sentences = []
    for s in raw_ref.get("sentences", []):
        raw = s.get("raw") or s.get("sent") or ""
        if not isinstance(raw, str) or not all(isinstance(t, str) for t in s.get("tokens") or ()):
            raise TypeError(f"sentence {s.get('sent_id')!r}: text is not a string")
        tokens = tuple(s.get("tokens") or ()) or tokenize(raw)
        if not raw.strip() or not tokens:
            source.skip("empty_sentence", f"ref {ref_id}: sentence {s.get('sent_id')} is empty")
            continue
        sentences.append(Sentence(sent_id=_int(s["sent_id"]), raw=raw, tokens=tokens))
    if not sentences:
        source.skip("no_sentences", f"ref {ref_id} has no usable sentence")
        return
    bbox = tuple(float(v) for v in ann.get("bbox", (0, 0, 0, 0)))
    if len(bbox) != 4:
        raise ValueError(f"annotation {ann_id}: bbox has {len(bbox)} numbers, not 4")
    grouped[(split, _int(image_id))].append(
        Ref(ref_id=_int(ref_id), ann_id=_int(ann_id), category_id=_int(raw_ref.get("category_id", ann.get("category_id", 0))),
            bbox=bbox, segmentation=ann.get("segmentation"), sentences=tuple(sentences))
    )


def _int(value: object) -> int:
    """An id as an int; a float with a fraction, a string or a bool is refused (TypeError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise TypeError(f"{value!r} is not an integer id")
    return int(value)
