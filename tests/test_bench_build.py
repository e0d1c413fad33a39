"""pipelines/bench_build.py --quick end to end (~20 generated images): the REFER tree it generates,
the three pipelines agreeing on what they produced, and the report it writes."""

import importlib.util
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_build", REPO / "pipelines" / "bench_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(60)
def test_quick_benchmark_end_to_end(tmp_path):
    out = tmp_path / "bench"
    res = subprocess.run([sys.executable, str(REPO / "pipelines" / "bench_build.py"), "--quick", "--out", str(out),
                          "--profile", "never"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0, res.stderr
    results = json.loads((out / "results.json").read_text())
    spec = results["dataset"]

    # the generated tree is the real REFER layout, with photo-sized JPEGs
    data = out / "data"
    refs = pickle.loads((data / "refcoco" / "refs(unc).p").read_bytes())
    instances = json.loads((data / "refcoco" / "instances.json").read_text())
    assert spec["images"] == len(instances["images"]) == 20
    assert len(refs) == spec["refs"] and sum(len(r["sentences"]) for r in refs) == spec["sentences"]
    assert set(refs[0]) == {"ref_id", "ann_id", "image_id", "category_id", "split", "sent_ids", "file_name", "sentences"}
    assert set(refs[0]["sentences"][0]) == {"tokens", "raw", "sent_id", "sent"}
    anns = {a["id"]: a for a in instances["annotations"]}
    assert all(1 <= len(anns[r["ann_id"]]["segmentation"]) <= 3 for r in refs)
    jpgs = sorted((data / "images/mscoco/images/train2014").glob("COCO_train2014_*.jpg"))
    assert [p.name for p in jpgs] == sorted(i["file_name"] for i in instances["images"])
    assert 40_000 < spec["image_bytes"] / len(jpgs) < 160_000

    # one timed run each, all counting every sentence; the generation is cached
    assert {k: len(v) for k, v in results["trials"].items()} == {"ours1": 1, "ours2": 1, "original": 1}
    assert {t["sentences"] for v in results["trials"].values() for t in v} == {spec["sentences"]}
    before = [p.stat().st_mtime_ns for p in jpgs]
    assert _bench().generate_refcoco(data, 20) == spec
    assert [p.stat().st_mtime_ns for p in jpgs] == before

    # bytes: original layout = images + one float32 h*w mask per ref; shards hold each image once
    b = {k: v[0] for k, v in results["bytes"].items()}
    assert b["original_layout"] == b["source_images"] + b["original_masks_and_index"]
    min_mask = 424 * 612 * 4
    assert b["original_masks_and_index"] > spec["refs"] * min_mask
    assert b["source_images"] < b["ours_shards"] < b["cris_records"]
    assert not (out / "runs").exists()

    md = (out / "BENCHMARKS_build.md").read_text()
    for needle in ("| ours, `build` workers=1 |", "| ours, `build` workers=2 |", "| original DMN", "## Targets",
                   "--quick", "2 cores"):
        assert needle in md
    assert "| ours, `build` workers=1 |" in res.stdout
