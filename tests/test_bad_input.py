"""Every kind of bad input is skipped and counted by reason (or stops the build under --strict)."""

import json
from pathlib import Path

import pytest

from dmn_data.build import BuildConfig, build
from dmn_data.errors import DataError
from refer_fixtures import make_refer_root, py2_pickle


def _break_things(root: Path, src: dict) -> None:
    refs, inst = src["refs"], src["instances"]
    imgs = {im["id"]: im for im in inst["images"]}
    img_dir = root / "images/mscoco/images/train2014"
    train = [r for r in refs if r["split"] == "train"]
    # 1. a missing image file (both refs of that image go with it)
    (img_dir / imgs[train[0]["image_id"]]["file_name"]).unlink()
    # 2. a truncated JPEG
    p = img_dir / imgs[train[2]["image_id"]]["file_name"]
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    # 3. a ref pointing at an annotation that does not exist
    refs[4]["ann_id"] = 999999
    # 4. a degenerate polygon
    # 4. degenerate polygons: one ref of an image, then both refs of another image
    for k in (6, 10, 11):
        ann = next(a for a in inst["annotations"] if a["id"] == refs[k]["ann_id"])
        ann["segmentation"] = [[1.0, 1.0, 2.0, 2.0]]
    # 5. an empty sentence next to a good one, and a ref whose only sentence is blank
    refs[7]["sentences"].append({"tokens": [], "raw": "  ", "sent_id": 77777, "sent": ""})
    refs[8]["sentences"] = [{"tokens": [], "raw": "", "sent_id": 88888, "sent": ""}]
    (root / "refcoco" / "refs(unc).p").write_bytes(py2_pickle(refs))
    (root / "refcoco" / "instances.json").write_text(json.dumps(inst))


def test_bad_inputs_are_counted_by_reason(tmp_path):
    src = make_refer_root(tmp_path / "data", images_per_split=3)
    _break_things(tmp_path / "data", src)
    manifest = build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=tmp_path / "data"), progress=False)
    assert manifest["skipped"] == {"corrupt_image": 1, "degenerate_polygon": 3, "empty_sentence": 2,
                                   "missing_annotation": 1, "missing_image": 1, "no_sentences": 1,
                                   "no_usable_ref": 1}
    assert all(manifest["skipped_examples"][k] for k in manifest["skipped"])
    # 12 images, 24 refs: three images lost (6 refs), plus 3 single refs
    assert manifest["totals"]["images"] == 9
    assert manifest["totals"]["refs"] == 24 - 6 - 3


def test_strict_stops_at_first_problem(tmp_path):
    src = make_refer_root(tmp_path / "data", images_per_split=3)
    _break_things(tmp_path / "data", src)
    with pytest.raises(DataError, match="--strict: "):
        build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=tmp_path / "data", strict=True), progress=False)
    assert not (tmp_path / "out" / "unc" / "manifest.json").exists()


def test_strict_on_writer_side_problem(tmp_path):
    src = make_refer_root(tmp_path / "data", images_per_split=3)
    img = src["instances"]["images"][0]["file_name"]
    (tmp_path / "data/images/mscoco/images/train2014" / img).unlink()
    with pytest.raises(DataError, match="--strict: missing_image"):
        build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=tmp_path / "data", strict=True, workers=2), progress=False)
    assert not list((tmp_path / "out" / "unc" / "train").glob("*.tar"))  # the failed shard never got its final name
    assert not (tmp_path / "out" / "unc" / "manifest.json").exists()


def test_unknown_split_and_missing_files(tmp_path):
    make_refer_root(tmp_path / "data", splits=("train", "val"))
    with pytest.raises(DataError, match=r"no split 'testC'; choose from train, val"):
        build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=tmp_path / "data", splits=("train", "testC")), progress=False)
    with pytest.raises(DataError, match=r"refs\(google\).p not found"):
        build(BuildConfig(dataset="gref", out=tmp_path / "out", data_root=tmp_path / "data"), progress=False)
    with pytest.raises(DataError, match="not a directory"):
        build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=tmp_path / "nope"), progress=False)
    with pytest.raises(DataError, match="neither"):
        build(BuildConfig(dataset="referit", out=tmp_path / "out", data_root=tmp_path / "data"), progress=False)


def test_output_dir_with_foreign_content(tmp_path):
    make_refer_root(tmp_path / "data")
    (tmp_path / "out" / "unc").mkdir(parents=True)
    (tmp_path / "out" / "unc" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a dmn-data build"):
        build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=tmp_path / "data"), progress=False)
    assert (tmp_path / "out" / "unc" / "precious.txt").read_text() == "keep me"
