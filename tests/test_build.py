"""dmn-data build end to end on real-format trees: round trips, determinism, resume, bad input."""

import hashlib
import importlib
import json
import multiprocessing
import os
import signal
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as cocomask

from dmn_data.build import BuildConfig, build, dataset_dir, resolve_dataset
from dmn_data.errors import DataError
from dmn_data.inspect import iter_tar_samples, verify
from dmn_data.masks import decode_rle
from refer_fixtures import make_fixture_root, make_refer_root


def _samples(ddir: Path, split: str) -> list[dict]:
    manifest = json.loads((ddir / "manifest.json").read_text())
    return [meta for sh in manifest["splits"][split]["shards"] for _, _, _, meta in iter_tar_samples(ddir / sh["name"])]


def _tree_digest(ddir: Path) -> dict[str, str]:
    return {str(p.relative_to(ddir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ddir.rglob("*")) if p.is_file()}


def test_real_refcocog_umd_subset_round_trip(tmp_path):
    root = tmp_path / "data"
    instances = make_fixture_root(root)
    from dmn_data.pickles import load_plain_pickle

    refs = load_plain_pickle(root / "refcocog" / "refs(umd).p")
    manifest = build(BuildConfig(dataset="gref-umd", out=tmp_path / "out", data_root=root, shard_size=2), progress=False)
    ddir = tmp_path / "out" / "gref-umd"
    assert manifest["totals"] == {**manifest["totals"], "images": 15, "refs": 15, "sentences": 28}
    assert {s: manifest["splits"][s]["refs"] for s in manifest["splits"]} == {"train": 5, "val": 5, "test": 5}
    assert manifest["skipped"] == {}
    vocab = json.loads((ddir / "vocab.json").read_text())
    assert vocab[:2] == ["<pad>", "<unk>"]
    anns = {a["id"]: a for a in instances["annotations"]}
    by_ref = {r["ref_id"]: r for r in refs}
    seen = 0
    for split in ("train", "val", "test"):
        for meta in _samples(ddir, split):
            for ref in meta["refs"]:
                src = by_ref[ref["ref_id"]]
                assert src["split"] == split and src["image_id"] == meta["image_id"]
                ann = anns[src["ann_id"]]
                h, w = meta["height"], meta["width"]
                expected = cocomask.decode(cocomask.frPyObjects(ann["segmentation"], h, w)).max(axis=2)
                np.testing.assert_array_equal(decode_rle(ref["mask"]), expected)
                assert [s["sent_id"] for s in ref["sentences"]] == [s["sent_id"] for s in src["sentences"]]
                for s, s0 in zip(ref["sentences"], src["sentences"]):
                    assert s["raw"] == s0["raw"] and s["tokens"] == s0["tokens"]
                    expected_ids = [vocab.index(t) if t in vocab else 1 for t in s0["tokens"]]
                    assert s["ids"] == expected_ids
                    if split == "train":
                        assert 1 not in s["ids"]  # vocab comes from train
                seen += 1
    assert seen == 15
    assert verify(ddir, progress=False) == []


@pytest.mark.parametrize("name,refer,split_by,splits,rle", [
    ("unc", "refcoco", "unc", ("train", "val", "testA", "testB"), False),
    ("unc+", "refcoco+", "unc", ("train", "val", "testA", "testB"), False),
    ("gref", "refcocog", "google", ("train", "val"), False),
    ("referit", "refclef", "berkeley", ("train", "val", "test"), True),
])
def test_every_refer_dataset(tmp_path, name, refer, split_by, splits, rle):
    src = make_refer_root(tmp_path / "data", refer, split_by, splits=splits, rle=rle)
    assert resolve_dataset(refer) == name
    manifest = build(BuildConfig(dataset=name, out=tmp_path / "out", data_root=tmp_path / "data"), progress=False)
    assert sorted(manifest["splits"]) == sorted(splits)
    assert manifest["totals"]["refs"] == len(src["refs"])
    assert manifest["totals"]["sentences"] == sum(len(r["sentences"]) for r in src["refs"])
    assert manifest["totals"]["images"] == len(src["instances"]["images"])
    ddir = dataset_dir(tmp_path / "out", name)
    anns = {a["id"]: a for a in src["instances"]["annotations"]}
    for split in splits:
        for meta in _samples(ddir, split):
            for ref in meta["refs"]:
                ann_seg = anns[ref["ann_id"]]["segmentation"]
                h, w = meta["height"], meta["width"]
                rles = [ann_seg] if isinstance(ann_seg, dict) else cocomask.frPyObjects(ann_seg, h, w)
                expected = cocomask.decode(rles if isinstance(rles, list) else [rles]).max(axis=2)
                np.testing.assert_array_equal(decode_rle(ref["mask"]), expected)
    assert verify(ddir, progress=False) == []


def test_image_stored_once_per_split_with_all_its_refs(tmp_path):
    make_refer_root(tmp_path / "data", splits=("train", "val"), images_per_split=2)
    build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=tmp_path / "data"), progress=False)
    metas = _samples(tmp_path / "out" / "unc", "train")
    assert len(metas) == 2 and all(len(m["refs"]) == 2 for m in metas)
    with tarfile.open(next((tmp_path / "out" / "unc" / "train").glob("*.tar"))) as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tar.getmembers())
    assert names == sorted(names, key=lambda n: (int(n.split(".")[0]), n))
    assert len(names) == len(set(names)) == 4


def test_deterministic_across_rebuilds_and_worker_counts(tmp_path):
    make_refer_root(tmp_path / "data", images_per_split=4)
    build(BuildConfig(dataset="unc", out=tmp_path / "a", data_root=tmp_path / "data", shard_size=3, workers=1), progress=False)
    build(BuildConfig(dataset="unc", out=tmp_path / "b", data_root=tmp_path / "data", shard_size=3, workers=2), progress=False)
    a, b = _tree_digest(tmp_path / "a" / "unc"), _tree_digest(tmp_path / "b" / "unc")
    assert a == b and len(a) > 6


def test_second_run_is_up_to_date_and_other_options_need_overwrite(tmp_path):
    make_refer_root(tmp_path / "data")
    cfg = BuildConfig(dataset="unc", out=tmp_path / "out", data_root=tmp_path / "data")
    build(cfg, progress=False)
    before = _tree_digest(tmp_path / "out" / "unc")
    logs = []
    build(cfg, progress=False, log=logs.append)
    assert "up to date" in logs[0] and _tree_digest(tmp_path / "out" / "unc") == before
    other = BuildConfig(dataset="unc", out=tmp_path / "out", data_root=tmp_path / "data", shard_size=1)
    with pytest.raises(DataError, match="--overwrite"):
        build(other, progress=False)
    assert _tree_digest(tmp_path / "out" / "unc") == before  # nothing lost
    build(BuildConfig(**{**other.__dict__, "overwrite": True}), progress=False)
    assert len(list((tmp_path / "out" / "unc" / "train").glob("*.tar"))) == 3
    with pytest.raises(DataError, match="itself a built dataset"):
        build(BuildConfig(dataset="unc", out=tmp_path / "out" / "unc", data_root=tmp_path / "data"), progress=False)


def _slow_build(cfg: BuildConfig) -> None:
    """Runs in a forked child: the real build, each shard slowed down so the parent can kill it midway."""
    b = importlib.import_module("dmn_data.build")  # the module (dmn_data.build is also the function)

    real = b.write_shard

    def slow(task):
        time.sleep(0.05)
        return real(task)

    b.write_shard = slow
    build(cfg, progress=False)


def test_resume_after_kill_is_identical(tmp_path):
    make_refer_root(tmp_path / "data", images_per_split=10)
    build(BuildConfig(dataset="unc", out=tmp_path / "clean", data_root=tmp_path / "data", shard_size=1), progress=False)
    cfg = BuildConfig(dataset="unc", out=tmp_path / "killed", data_root=tmp_path / "data", shard_size=1)
    child = multiprocessing.get_context("fork").Process(target=_slow_build, args=(cfg,))
    child.start()
    state = tmp_path / "killed" / "unc" / ".build"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(state.rglob("*.tar.json"))) < 5:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert not (tmp_path / "killed" / "unc" / "manifest.json").exists()
    n_done = len(list(state.rglob("*.tar.json")))
    assert 5 <= n_done < 40, "the build must be killed midway for this test to mean anything"
    finals = list((tmp_path / "killed" / "unc").rglob("*.tar"))
    for tar in finals:  # whatever has a final name is complete
        assert tarfile.open(tar).getnames()
    build(cfg, progress=False)  # the same command again: resumes
    assert _tree_digest(tmp_path / "killed" / "unc") == _tree_digest(tmp_path / "clean" / "unc")
