import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from dmn_data.errors import DataError, SkipItem
from dmn_data.records import MatMask
from dmn_data.referit import load_mat_mask, read_referit_dmn


def tokenize(text: str) -> tuple[str, ...]:
    return tuple(text.lower().split())


IMAGES = {"100": (40, 30), "2001": (24, 36), "7": (20, 20)}  # name -> (w, h)
QUERIES = {
    "train": {"100_1": ["The sky", "blue sky "], "100_12": ["man on left"], "2001_3": ["tree"]},
    "val": {"7_1": ["dog"]},
    "test": {"7_2": ["cat", "   "]},
}


def _segimg(w: int, h: int, obj: int) -> np.ndarray:
    """A label image like ReferIt's: the object is 0, the rest other region labels."""
    seg = np.full((h, w), 3, dtype=np.uint8)
    seg[:, : w // 2] = 7
    seg[obj % h : obj % h + 4, 1 : 1 + obj % w + 2] = 0
    return seg


def _write_tree(root: Path, queries: dict, *, split_parent: Path | None = None) -> None:
    images, masks = root / "referit" / "images", root / "referit" / "mask"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for name, (w, h) in IMAGES.items():
        Image.new("RGB", (w, h), (10, 120, 200)).save(images / f"{name}.jpg", quality=90)
    splits = (split_parent or root / "referit") / "splits" / "referit"
    splits.mkdir(parents=True)
    for split, qs in queries.items():
        (splits / f"referit_query_{split}.json").write_text(json.dumps(qs))
        for key in qs:
            w, h = IMAGES[key.split("_")[0]]
            scipy.io.savemat(masks / f"{key}.mat", {"segimg_t": _segimg(w, h, int(key.split("_")[1]))})


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    _write_tree(tmp_path, QUERIES)
    return tmp_path


def test_round_trip(tree: Path):
    source = read_referit_dmn(tree, tokenize=tokenize)
    assert source.dataset == "referit"
    assert sorted(source.splits) == ["test", "train", "val"]
    train = source.splits["train"]
    assert [i.image_id for i in train] == [100, 2001]
    img = train[0]
    assert (img.file_name, img.split, img.width, img.height) == ("100.jpg", "train", 40, 30)
    assert img.path == str(tree / "referit" / "images" / "100.jpg") and img.data is None
    assert [r.ref_id for r in img.refs] == [100_001, 100_012]
    ref = img.refs[0]
    assert ref.ann_id == ref.ref_id and ref.category_id == 0 and ref.bbox == (0, 0, 0, 0)
    assert ref.segmentation == MatMask(path=str(tree / "referit" / "mask" / "100_1.mat"))
    assert [(s.sent_id, s.raw, s.tokens) for s in ref.sentences] == [
        (100_001_00, "The sky", ("the", "sky")),
        (100_001_01, "blue sky ", ("blue", "sky")),
    ]
    assert train[1].refs[0].ref_id == 2001_003 and (train[1].width, train[1].height) == (24, 36)
    assert source.skipped == {"empty_sentence": 1}  # test 7_2's "   "
    assert [s.sent_id for s in source.splits["test"][0].refs[0].sentences] == [7_002_00]


def test_masks_round_trip(tree: Path):
    source = read_referit_dmn(tree, tokenize=tokenize)
    for items in source.splits.values():
        for item in items:
            for ref in item.refs:
                image, obj = divmod(ref.ref_id, 1000)
                m = load_mat_mask(ref.segmentation.path)
                assert m.dtype == np.uint8 and m.shape == (item.height, item.width)
                np.testing.assert_array_equal(m, _segimg(item.width, item.height, obj) == 0)
                assert set(np.unique(m)) == {0, 1}


def test_trainval_only_when_present(tree: Path):
    assert "trainval" not in read_referit_dmn(tree, tokenize=tokenize).splits
    trainval = {**QUERIES["train"], **QUERIES["val"]}
    (tree / "referit" / "splits" / "referit" / "referit_query_trainval.json").write_text(json.dumps(trainval))
    source = read_referit_dmn(tree, tokenize=tokenize)
    assert sorted(source.splits) == ["test", "train", "trainval", "val"]
    ids = {s: {r.ref_id: r for i in items for r in i.refs} for s, items in source.splits.items()}
    assert ids["trainval"] == {**ids["train"], **ids["val"]}  # same ids and sentences in every split
    assert all(i.split == "trainval" for i in source.splits["trainval"])


def test_split_files_under_root_accepted(tmp_path: Path):
    _write_tree(tmp_path, QUERIES, split_parent=tmp_path)
    assert sorted(read_referit_dmn(tmp_path, tokenize=tokenize).splits) == ["test", "train", "val"]


def test_image_root_override(tree: Path, tmp_path: Path):
    moved = tmp_path / "elsewhere"
    (tree / "referit" / "images").rename(moved)
    source = read_referit_dmn(tree, image_root=moved, tokenize=tokenize)
    assert source.splits["train"][0].path == str(moved / "100.jpg")


def test_skips_counted_by_reason(tree: Path):
    (tree / "referit" / "images" / "2001.jpg").unlink()
    (tree / "referit" / "mask" / "100_12.mat").unlink()
    queries = {**QUERIES["train"], "100_5": [" ", ""], "abc": ["x"], "100_1000": ["too big"]}
    (tree / "referit" / "splits" / "referit" / "referit_query_train.json").write_text(json.dumps(queries))
    (tree / "referit" / "images" / "7.jpg").write_bytes(b"not a jpeg")
    source = read_referit_dmn(tree, tokenize=tokenize)
    # image 7 (val and test) is counted once; 100_5's empty queries are not reached: no mask
    assert source.skipped == {"missing_image": 1, "missing_mask": 2, "bad_key": 2, "corrupt_image": 1}
    assert sorted(source.splits) == ["train"]
    assert [r.ref_id for i in source.splits["train"] for r in i.refs] == [100_001]
    assert all(len(v) <= 3 for v in source.examples.values())


def test_empty_queries(tree: Path):
    scipy.io.savemat(tree / "referit" / "mask" / "100_5.mat", {"segimg_t": _segimg(40, 30, 5)})
    queries = {"100_1": ["sky", "  ", ""], "100_5": ["", " \t"], "7_2": ["?!"]}
    (tree / "referit" / "splits" / "referit" / "referit_query_train.json").write_text(json.dumps(queries))
    source = read_referit_dmn(tree, tokenize=lambda s: tuple(w for w in s.split() if w.isalpha()))
    assert source.skipped == {"empty_sentence": 5 + 1, "no_sentences": 2}  # + test 7_2's "   "
    refs = [r for i in source.splits["train"] for r in i.refs]
    assert [(r.ref_id, [s.sent_id for s in r.sentences]) for r in refs] == [(100_001, [100_001_00])]


def test_load_mat_mask_errors(tmp_path: Path):
    with pytest.raises(SkipItem) as err:
        load_mat_mask(tmp_path / "absent.mat")
    assert err.value.reason == "missing_mask"
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 3)
    wrong_key = tmp_path / "wrong_key.mat"
    scipy.io.savemat(wrong_key, {"mask": np.zeros((3, 3))})
    truncated = tmp_path / "truncated.mat"
    scipy.io.savemat(truncated, {"segimg_t": np.zeros((50, 50))})
    truncated.write_bytes(truncated.read_bytes()[:200])
    for path in (garbage, wrong_key, truncated):
        with pytest.raises(SkipItem) as err:
            load_mat_mask(path)
        assert err.value.reason == "corrupt_mask" and str(path) in err.value.detail


def test_no_split_files_is_a_data_error(tmp_path: Path):
    (tmp_path / "referit" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="referit_query_"):
        read_referit_dmn(tmp_path, tokenize=tokenize)


def test_malformed_query_file_is_a_data_error(tree: Path):
    (tree / "referit" / "splits" / "referit" / "referit_query_val.json").write_text('{"7_1": "dog"}')
    with pytest.raises(DataError, match="referit_query_val.json"):
        read_referit_dmn(tree, tokenize=tokenize)
