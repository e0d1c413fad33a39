"""The built-in ``toy`` dataset: coloured shapes on a plain background, with referring expressions.

Each image holds 2–4 non-overlapping shapes (circle, square, triangle, diamond) in 6 saturated
colours and 2 clearly distinct sizes. Every object is a ref with one expression that uses the
fewest attribute words making it unique in its image ("the red shape", "the small circle",
"the big blue triangle"); a position word is added only when attributes alone cannot break a tie
("the red circle on the left"). About half the objects after the first copy the shape or the
colour of an earlier one, so the attribute words are needed.

Position words are relative to the objects that match the attribute words: "on the left" means the
target's box centre lies left of every other matching object's by at least ``position_margin``.

Ids: ``image_id = 10**6 * (split index + 1) + i`` (train 1, val 2, test 3), ``ref_id = ann_id =
10 * image_id + k`` (k = object index), ``sent_id = 10 * ref_id``. Category ids are ``shape index
+ 1`` (0 stays "unknown", as in ReferIt). Each split has its own random stream, seeded from
``(seed, split index)``, so one split's size never changes another split's content.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from dmn_data.errors import DataError
from dmn_data.records import ImageItem, Ref, RleMask, Sentence, Source

SPLITS = ("train", "val", "test")
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 80, 240),
    "yellow": (245, 225, 30),
    "purple": (160, 50, 210),
    "orange": (255, 140, 0),
}
SIZES = ("small", "big")
DIRECTIONS = ("left", "right", "top", "bottom")
ID_STRIDE = 10**6  # image ids of split s are ID_STRIDE * (s + 1) + i; every id stays < 2**31

_SIDE = {"small": (0.125, 0.16), "big": (0.27, 0.33)}  # shape side as a fraction of `size`
_SHARE_P = 0.5  # probability that a later object copies an earlier one's shape or colour
_GAP = 3  # pixels kept free between two objects' boxes


@dataclass(frozen=True)
class _Obj:
    shape: str
    colour: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the drawing call (inclusive)


def position_margin(size: int) -> float:
    """Minimum centre distance (pixels) for a position word to hold, at nominal image ``size``."""
    return 0.08 * size


def generate_toy(
    *, seed: int = 0, train: int = 4000, val: int = 300, test: int = 300, size: int = 128
) -> Source:
    """Generate the toy dataset in memory: PNG images of ``size`` px on the longer side, the other
    side in ``[3/4 size, size]``, with RLE masks and one expression per object."""
    counts = {"train": train, "val": val, "test": test}
    for name, n in counts.items():
        if not isinstance(n, int) or not 0 <= n < ID_STRIDE:
            raise DataError(f"toy: {name}={n!r} images; give an integer in [0, {ID_STRIDE})")
    if not isinstance(size, int) or not 64 <= size <= 1024:
        raise DataError(f"toy: size={size!r}; give an integer in [64, 1024] (128 is the default)")
    splits = {}
    for index, split in enumerate(SPLITS):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index])))
        base = ID_STRIDE * (index + 1)
        splits[split] = [_image(rng, base + i, split, size) for i in range(counts[split])]
    description = f"toy: generated (seed={seed}, train={train}, val={val}, test={test}, size={size})"
    return Source(dataset="toy", description=description, splits=splits)


def _image(rng: np.random.Generator, image_id: int, split: str, size: int) -> ImageItem:
    short = int(rng.integers((3 * size + 3) // 4, size + 1))
    width, height = (size, short) if rng.random() < 0.5 else (short, size)
    while True:
        objs = _layout(rng, width, height, size)
        if objs is None:
            continue
        phrases = [_describe(rng, objs, k, size) for k in range(len(objs))]
        if all(p is not None for p in phrases):
            break
    background = tuple(int(v) for v in rng.integers(25, 80) + rng.integers(-10, 11, size=3))
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    refs = []
    for k, (obj, phrase) in enumerate(zip(objs, phrases)):
        _draw(draw, obj, COLOURS[obj.colour])
        mask_img = Image.new("L", (width, height), 0)
        _draw(ImageDraw.Draw(mask_img), obj, 1)
        mask = np.asarray(mask_img, dtype=np.uint8)
        rle = mask_utils.encode(np.asfortranarray(mask))
        ref_id = 10 * image_id + k
        refs.append(
            Ref(
                ref_id=ref_id,
                ann_id=ref_id,
                category_id=SHAPES.index(obj.shape) + 1,
                bbox=tuple(float(v) for v in mask_utils.toBbox(rle)),
                segmentation=RleMask(size=(height, width), counts=rle["counts"].decode("ascii")),
                sentences=(Sentence(sent_id=10 * ref_id, raw=phrase, tokens=tuple(phrase.split())),),
            )
        )
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # flat images: level 1 is small and fast
    return ImageItem(
        image_id=image_id,
        file_name=f"toy_{image_id:06d}.png",
        split=split,
        width=width,
        height=height,
        refs=tuple(refs),
        data=buf.getvalue(),
    )


def _layout(rng: np.random.Generator, width: int, height: int, size: int) -> list[_Obj] | None:
    """2–4 objects with random attributes and non-overlapping boxes; None if they did not fit."""
    n = int(rng.integers(2, 5))
    objs: list[_Obj] = []
    for k in range(n):
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        size_word = SIZES[rng.integers(2)]
        if k > 0 and rng.random() < _SHARE_P:
            other = objs[rng.integers(k)]
            if rng.random() < 0.5:
                shape = other.shape
            else:
                colour = other.colour
        lo, hi = _SIDE[size_word]
        side = int(rng.integers(round(lo * size), round(hi * size) + 1))
        for _ in range(50):
            x0 = int(rng.integers(1, width - side - 1))
            y0 = int(rng.integers(1, height - side - 1))
            box = (x0, y0, x0 + side - 1, y0 + side - 1)
            if all(_apart(box, o.box) for o in objs):
                objs.append(_Obj(shape, colour, size_word, box))
                break
        else:
            return None
    return objs


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] + _GAP < b[0] or b[2] + _GAP < a[0] or a[3] + _GAP < b[1] or b[3] + _GAP < a[1]


def _draw(draw: ImageDraw.ImageDraw, obj: _Obj, fill) -> None:
    """The one drawing call per shape, used for both the image and the object's mask."""
    x0, y0, x1, y1 = obj.box
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    if obj.shape == "circle":
        draw.ellipse(obj.box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(obj.box, fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)


def _centre(obj: _Obj) -> tuple[float, float]:
    x0, y0, x1, y1 = obj.box
    return (x0 + x1) / 2, (y0 + y1) / 2


def _extreme(target: _Obj, group: list[_Obj], direction: str, margin: float) -> bool:
    """Whether ``target`` lies beyond every other object of ``group`` in ``direction``."""
    axis, sign = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}[direction]
    t = _centre(target)[axis]
    return all(sign * (t - _centre(o)[axis]) >= margin for o in group if o is not target)


def _describe(rng: np.random.Generator, objs: list[_Obj], k: int, size: int) -> str | None:
    """The shortest unique expression for ``objs[k]``; ties between equally short ones are broken
    at random. None when no expression is unique (the caller draws a new layout)."""
    target = objs[k]
    subsets = [list(c) for n in (1, 2, 3) for c in combinations(("size", "colour", "shape"), n)]

    def matching(attrs: list[str]) -> list[_Obj]:
        return [o for o in objs if all(getattr(o, a) == getattr(target, a) for a in attrs)]

    for n in (1, 2, 3):
        unique = [s for s in subsets if len(s) == n and len(matching(s)) == 1]
        if unique:
            return _phrase(target, unique[rng.integers(len(unique))], None)
    margin = position_margin(size)
    for n in (1, 2, 3):
        options = [
            (s, d)
            for s in subsets
            if len(s) == n
            for d in DIRECTIONS
            if _extreme(target, matching(s), d, margin)
        ]
        if options:
            attrs, direction = options[rng.integers(len(options))]
            return _phrase(target, attrs, direction)
    return None


def _phrase(target: _Obj, attrs: list[str], direction: str | None) -> str:
    words = ["the"]
    if "size" in attrs:
        words.append(target.size)
    if "colour" in attrs:
        words.append(target.colour)
    words.append(target.shape if "shape" in attrs else "shape")
    if direction is not None:
        words += ["on", "the", direction]
    return " ".join(words)
