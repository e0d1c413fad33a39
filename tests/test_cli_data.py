"""The dmn-data CLI: exit codes, one-line errors (never a traceback), info/verify/show."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from dmn_data.cli import app
from refer_fixtures import make_fixture_root

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(result, code=2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    r = _run("build", "--dataset", "toy", "--out", out, "--toy-train", 40, "--toy-val", 10, "--toy-test", 10,
             "--toy-size", 64, "--shard-size", 16, "--workers", 2, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "next: dmn-train --shards" in r.output
    return out / "toy"


def test_toy_build_via_cli(toy_dir):
    manifest = json.loads((toy_dir / "manifest.json").read_text())
    assert manifest["dataset"] == "toy" and manifest["splits"]["train"]["images"] == 40
    assert len(manifest["splits"]["train"]["shards"]) == 3


def test_info_and_verify(toy_dir):
    r = _run("info", toy_dir)
    assert r.exit_code == 0 and "train" in r.output and "total" in r.output
    r = _run("verify", toy_dir, "--no-progress")
    assert r.exit_code == 0, r.output


def test_verify_detects_corruption(toy_dir, tmp_path):
    import shutil

    copy = tmp_path / "toy"
    shutil.copytree(toy_dir, copy)
    shard = next((copy / "val").glob("*.tar"))
    data = bytearray(shard.read_bytes())
    data[1500] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = _run("verify", copy, "--no-progress")
    assert r.exit_code == 1
    assert "sha256" in r.output


def test_show_writes_png(toy_dir, tmp_path):
    out = tmp_path / "grid.png"
    r = _run("show", toy_dir, "--split", "val", "-n", 4, "-o", out)
    assert r.exit_code == 0, r.output
    with Image.open(out) as im:
        assert im.width >= 2 * 256
    assert "no split 'nope'" in _one_line_error(_run("show", toy_dir, "--split", "nope", "-o", out))


def test_real_subset_via_refer_names(tmp_path):
    make_fixture_root(tmp_path / "data")
    r = _run("build", "--dataset", "refcocog", "--split-by", "umd", "--data-root", tmp_path / "data",
             "--out", tmp_path / "out", "--no-progress")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "gref-umd" / "manifest.json").is_file()


@pytest.mark.parametrize("args,needle", [
    (("build", "--dataset", "unc", "--data-root", "/nonexistent"), "not a directory"),
    (("build", "--dataset", "refcocog", "--split-by", "berkeley", "--data-root", "."), "--split-by 'berkeley'"),
    (("build", "--dataset", "toy", "--workers", 0), "--workers must be >= 1"),
    (("build", "--dataset", "toy", "--splits", "testA", "--toy-train", 4, "--toy-val", 1, "--toy-test", 1), "no split 'testA'"),
    (("info", "/nonexistent"), "no manifest.json"),
    (("verify", "/nonexistent"), "no manifest.json"),
])
def test_bad_arguments_give_one_line(tmp_path, args, needle):
    line = _one_line_error(_run(*args, *(() if args[0] != "build" else ("--out", tmp_path))))
    assert needle in line


def test_unknown_dataset_is_a_usage_error():
    r = _run("build", "--dataset", "coco-stuff")
    assert r.exit_code == 2 and "Traceback" not in r.output
