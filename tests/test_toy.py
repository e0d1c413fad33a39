import hashlib
import io
from itertools import combinations

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from dmn_data.errors import DataError
from dmn_data.records import RleMask
from dmn_data.toy import COLOURS, SHAPES, generate_toy, position_margin

SIZE = 128
# pycocotools' decode trips numpy 2's __array__ copy deprecation on every call
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def toy():
    return generate_toy(seed=3, train=240, val=40, test=40, size=SIZE)


@pytest.fixture(scope="module")
def seen(toy):
    """image id -> the objects as seen in the picture (see _objects)."""
    return {item.image_id: _objects(item) for items in toy.splits.values() for item in items}


def _pixels(item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(item.data)).convert("RGB"))


def _objects(item) -> list[dict]:
    """Each ref's attributes as seen in the picture: colour from its pixels, size from its mask,
    shape from its category; independent of how the generator chose them."""
    pixels = _pixels(item)
    palette = {rgb: name for name, rgb in COLOURS.items()}
    objs = []
    for ref in item.refs:
        m = mask_utils.decode({"size": list(ref.segmentation.size), "counts": ref.segmentation.counts})
        colours = {tuple(int(c) for c in p) for p in np.unique(pixels[m.astype(bool)], axis=0)}
        assert len(colours) == 1, colours
        ys, xs = np.nonzero(m)
        side = xs.max() - xs.min() + 1
        objs.append(
            {
                "ref": ref,
                "mask": m,
                "colour": palette[colours.pop()],
                "size": "small" if side < 0.22 * SIZE else "big",
                "shape": SHAPES[ref.category_id - 1],
                "centre": ((xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2),
            }
        )
    return objs


def _constraints(tokens: tuple[str, ...]) -> tuple[dict, str | None]:
    """Parse "the [small|big] [colour] (shape-name|shape) [on the <direction>]"."""
    words = list(tokens)
    assert words.pop(0) == "the"
    direction = None
    if words[-3:-1] == ["on", "the"]:
        direction = words[-1]
        words = words[:-3]
    wanted = {}
    if words and words[0] in ("small", "big"):
        wanted["size"] = words.pop(0)
    if words and words[0] in COLOURS:
        wanted["colour"] = words.pop(0)
    noun = words.pop(0)
    assert not words, tokens
    if noun != "shape":
        assert noun in SHAPES, tokens
        wanted["shape"] = noun
    assert direction in (None, "left", "right", "top", "bottom")
    return wanted, direction


def _referents(objs: list[dict], tokens: tuple[str, ...]) -> list[dict]:
    wanted, direction = _constraints(tokens)
    group = [o for o in objs if all(o[k] == v for k, v in wanted.items())]
    if direction is None:
        return group
    axis, sign = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}[direction]
    margin = position_margin(SIZE)
    return [
        o
        for o in group
        if all(sign * (o["centre"][axis] - p["centre"][axis]) >= margin for p in group if p is not o)
    ]


def _items(source):
    return [item for items in source.splits.values() for item in items]


def test_same_seed_same_bytes_and_refs():
    a = generate_toy(seed=7, train=20, val=5, test=5)
    b = generate_toy(seed=7, train=20, val=5, test=5)
    assert a.splits == b.splits
    c = generate_toy(seed=8, train=20, val=5, test=5)
    assert [i.data for i in _items(a)] != [i.data for i in _items(c)]


def test_split_size_does_not_change_other_splits():
    small = generate_toy(seed=1, train=3, val=6, test=2)
    large = generate_toy(seed=1, train=30, val=6, test=4)
    assert small.splits["val"] == large.splits["val"]
    assert small.splits["train"] == large.splits["train"][:3]
    assert small.splits["test"] == large.splits["test"][:2]


def test_splits_and_counts(toy):
    assert toy.dataset == "toy"
    assert {k: len(v) for k, v in toy.splits.items()} == {"train": 240, "val": 40, "test": 40}
    assert all(item.split == split for split, items in toy.splits.items() for item in items)
    assert not toy.skipped


def test_held_out_images_never_in_train(toy):
    digest = {s: {hashlib.sha256(i.data).hexdigest() for i in items} for s, items in toy.splits.items()}
    assert len(digest["train"]) == 240
    assert not digest["train"] & digest["val"]
    assert not digest["train"] & digest["test"]
    assert not digest["val"] & digest["test"]


def test_ids_unique_across_dataset(toy):
    items = _items(toy)
    refs = [r for i in items for r in i.refs]
    sents = [s for r in refs for s in r.sentences]
    assert len({i.image_id for i in items}) == len(items)
    assert len({i.file_name for i in items}) == len(items)
    assert len({r.ref_id for r in refs}) == len({r.ann_id for r in refs}) == len(refs)
    assert len({s.sent_id for s in sents}) == len(sents)
    assert all(i.file_name == f"toy_{i.image_id:06d}.png" and i.path is None for i in items)


def test_image_sizes(toy):
    orientations = set()
    for item in _items(toy):
        w, h = item.width, item.height
        assert max(w, h) == SIZE and 3 * SIZE / 4 <= min(w, h) <= SIZE
        image = Image.open(io.BytesIO(item.data))
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (w, h)
        assert all(r.segmentation.size == (h, w) for r in item.refs)
        orientations.add(w >= h)
    assert orientations == {True, False}


def test_masks_are_the_drawn_pixels(toy, seen):
    palette = np.array(list(COLOURS.values()))
    for item in _items(toy):
        pixels = _pixels(item)
        objs = seen[item.image_id]  # _objects checked one exact palette colour under each mask
        union = sum(o["mask"].astype(int) for o in objs)
        assert union.max() == 1, "masks overlap"
        coloured = (pixels[:, :, None, :] == palette[None, None]).all(-1).any(-1)
        np.testing.assert_array_equal(coloured, union.astype(bool))
        for o in objs:
            ref = o["ref"]
            assert isinstance(ref.segmentation, RleMask) and isinstance(ref.segmentation.counts, str)
            ys, xs = np.nonzero(o["mask"])
            x0, y0 = xs.min(), ys.min()
            assert ref.bbox == (x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1)
            assert min(ref.bbox[2:]) >= 14  # large enough to learn at 128 px


def test_every_expression_names_exactly_its_object(toy, seen):
    for item in _items(toy):
        objs = seen[item.image_id]
        assert 2 <= len(objs) <= 4
        for o in objs:
            for sent in o["ref"].sentences:
                assert sent.raw == sent.raw.lower() and sent.tokens == tuple(sent.raw.split())
                assert " ".join(sent.tokens) == sent.raw
                found = _referents(objs, sent.tokens)
                assert [f["ref"].ref_id for f in found] == [o["ref"].ref_id], (item.image_id, sent.raw)


def test_expressions_use_fewest_attribute_words(toy, seen):
    for item in _items(toy):
        objs = seen[item.image_id]
        for o in objs:
            wanted, direction = _constraints(o["ref"].sentences[0].tokens)
            # a position word only when no attribute words alone would do
            longest = 3 if direction else len(wanted) - 1
            shorter = [a for n in range(1, longest + 1) for a in combinations(("size", "colour", "shape"), n)]
            for attrs in shorter:
                matches = [p for p in objs if all(p[a] == o[a] for a in attrs)]
                assert len(matches) > 1, (item.image_id, o["ref"].sentences[0].raw, attrs)


def test_distractors_share_shape_or_colour_often(toy, seen):
    shared = pairs = 0
    words = set()
    for item in _items(toy):
        objs = seen[item.image_id]
        for target, other in ((a, b) for a in objs for b in objs if a is not b):
            pairs += 1
            shared += target["shape"] == other["shape"] or target["colour"] == other["colour"]
        words |= {w for o in objs for w in o["ref"].sentences[0].tokens}
    # independent attributes would share 1 - 3/4 * 5/6 = 0.375 of the time
    assert shared / pairs > 0.45
    assert set(COLOURS) | set(SHAPES) | {"small", "big", "left", "right", "top", "bottom"} <= words


@pytest.mark.parametrize("bad", [{"size": 10}, {"train": -1}, {"val": 2.5}])
def test_bad_arguments_name_the_value(bad):
    with pytest.raises(DataError, match=str(list(bad.values())[0])):
        generate_toy(**bad)
