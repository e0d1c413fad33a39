"""The attack list of issue 15: hostile or careless inputs, each refused with one line or counted,
never written outside the folder it belongs to. Fixtures are built here, small and bounded."""

import json
from pathlib import Path

import pytest

from dmn_data.build import BuildConfig, build
from dmn_data.errors import DataError
from dmn_data.safety import inside, is_safe_name, safe_name
from refer_fixtures import make_refer_root, py2_pickle


def _rewrite(root: Path, refs: list, inst: dict) -> None:
    (root / "refcoco" / "refs(unc).p").write_bytes(py2_pickle(refs))
    (root / "refcoco" / "instances.json").write_text(json.dumps(inst))


@pytest.mark.parametrize("name", ["u/../../victim", "../x", ".build", ".", "..", "", "a b", "a\\b", "x/y", "\x00", 3, None])
def test_unsafe_names_refused(name):
    assert not is_safe_name(name)
    with pytest.raises(DataError, match="split"):
        safe_name(name, "split")


@pytest.mark.parametrize("name", ["train", "testA", "val", "train+val", "umd-1", "a_b"])
def test_safe_names_accepted(name):
    assert safe_name(name, "split") == name


def test_inside(tmp_path):
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "outside.jpg").write_bytes(b"x")
    (tmp_path / "root" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    assert inside(tmp_path / "root", "sub/a.jpg") == tmp_path / "root" / "sub/a.jpg"
    for bad in ("../outside.jpg", "sub/../../outside.jpg", str(tmp_path / "outside.jpg"), "link.jpg", "", "a\x00b", None, 7):
        assert inside(tmp_path / "root", bad) is None, bad


def test_split_names_that_are_paths_never_leave_out(tmp_path):
    """Issue 15 item 1: a split named u/../../…/victim or .build is counted, nothing is written
    outside --out, an existing file there is untouched, and the build state is not deleted."""
    root = tmp_path / "data"
    src = make_refer_root(root, images_per_split=2)
    refs = src["refs"]
    victim = tmp_path / "victim-000000.tar"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    refs[0]["split"] = "u/../../../victim"
    refs[1]["split"] = ".build"
    refs[2]["split"] = "../escape"
    _rewrite(root, refs, src["instances"])
    manifest = build(BuildConfig(dataset="unc", out=out, data_root=root), progress=False)
    assert manifest["skipped"]["bad_split_name"] == 3
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out", "victim-000000.tar"]
    assert sorted(manifest["splits"]) == ["testA", "testB", "train", "val"]
    assert all(".." not in str(p.relative_to(out)) for p in out.rglob("*"))


def test_image_file_names_that_leave_the_image_root_are_counted(tmp_path):
    root = tmp_path / "data"
    src = make_refer_root(root, images_per_split=2)
    inst = src["instances"]
    secret = tmp_path / "secret.jpg"
    img_dir = root / "images/mscoco/images/train2014"
    secret.write_bytes((img_dir / inst["images"][0]["file_name"]).read_bytes())
    inst["images"][0]["file_name"] = "../../../../../secret.jpg"
    inst["images"][2]["file_name"] = str(secret)
    _rewrite(root, src["refs"], inst)
    manifest = build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=root), progress=False)
    assert manifest["skipped"]["unsafe_path"] == 2
    assert manifest["totals"]["images"] == 4 * 2 - 2


def test_build_where_every_image_is_skipped_fails(tmp_path):
    """Issue 15 item 6: a wrong --image-root skips every image; no manifest, one-line error."""
    root = tmp_path / "data"
    make_refer_root(root, images_per_split=1)
    with pytest.raises(DataError, match="every image was skipped .*missing_image"):
        build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=root, image_root=tmp_path / "nowhere"), progress=False)
    assert not (tmp_path / "out" / "unc" / "manifest.json").exists()


@pytest.mark.parametrize("field,value", [("grad_clip", -1.0), ("aux_weight", -0.5), ("grad_clip", float("nan")),
                                         ("aux_weight", float("inf"))])
def test_train_refuses_negative_clip_and_weight(field, value):
    from dmn_train.train import TrainConfig

    with pytest.raises(ValueError, match=f"--{field.replace('_', '-')} must be a finite number >= 0"):
        TrainConfig(shards="x", **{field: value})


@pytest.mark.parametrize("field,value", [("size", 0), ("grid", -1), ("batch_size", 0), ("workers", -1)])
def test_eval_refuses_nonsense_numbers(field, value):
    from dmn_train.evaluate import EvalConfig

    with pytest.raises(ValueError, match=f"--{field.replace('_', '-')} must be >= "):
        EvalConfig(split="val", **{field: value})
