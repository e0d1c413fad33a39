"""The in-memory form of a raw dataset, shared by every reader and the shard writer.

Readers (``refer``, ``referit``, ``toy``) turn raw files into :class:`Source`; the writer turns a
``Source`` into shards. Items must stay picklable: they travel to ``--workers`` processes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Union

#: A segmentation as the raw dataset stores it:
#: - ``list[list[float]]``: COCO polygons (x0, y0, x1, y1, ...) in image pixels;
#: - ``dict`` with ``size`` and ``counts`` (str/bytes = compressed RLE, list = uncompressed RLE);
#: - :class:`MatMask`: the original DMN ReferIt layout, a ``.mat`` file read at build time;
#: - :class:`RleMask`: an already-rasterised mask (the toy generator), stored as is.
Segmentation = Union[list, dict, "MatMask", "RleMask"]


@dataclass(frozen=True)
class MatMask:
    """A ReferIt mask file of the original DMN layout: ``mask/<image>_<obj>.mat``, key ``segimg_t``;
    the object is where ``segimg_t == 0``."""

    path: str


@dataclass(frozen=True)
class RleMask:
    """A binary mask already in COCO compressed RLE (``counts`` as str), size ``(h, w)``."""

    size: tuple[int, int]
    counts: str


@dataclass(frozen=True)
class Sentence:
    sent_id: int
    raw: str
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class Ref:
    ref_id: int
    ann_id: int
    category_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h in image pixels
    segmentation: Any  # see Segmentation
    sentences: tuple[Sentence, ...]


@dataclass(frozen=True)
class ImageItem:
    """One image of one split with every ref of that image in that split (one shard sample).

    Exactly one of ``path`` (a file to read) and ``data`` (bytes in memory) is set. ``width`` and
    ``height`` are what the annotation file claims; the writer checks them against the image.
    """

    image_id: int
    file_name: str
    split: str
    width: int
    height: int
    refs: tuple[Ref, ...]
    path: str | None = None
    data: bytes | None = None


@dataclass
class Source:
    """A raw dataset read into memory: items per split, plus what the reader had to skip.

    ``skipped`` counts skipped inputs by reason (e.g. ``"empty_sentence"``); ``examples`` keeps a
    few human-readable examples per reason for the end-of-build summary.
    """

    dataset: str
    description: str  # where it was read from, for the manifest
    splits: dict[str, list[ImageItem]]
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    # strings of the raw files that were not UTF-8 and were read as latin-1 (kept, not skipped)
    latin1_strings: int = 0
    latin1_examples: list[str] = field(default_factory=list)

    def skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append(detail)
