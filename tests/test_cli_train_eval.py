"""dmn-train / dmn-eval through Typer's CliRunner: a tiny run end to end, and exit codes."""

import hashlib
import json

import pytest
from typer.testing import CliRunner

from dmn_train.cli_eval import app as eval_app
from dmn_train.cli_train import app as train_app

from test_train import SIZE, make_shards

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """cwd-independent paths: a toy build and one 4-step tiny run in <tmp>/runs/."""
    root = tmp_path_factory.mktemp("cli")
    shards = make_shards(root / "shards")
    out = root / "runs" / "tiny"
    result = runner.invoke(train_app, [
        "--shards", str(shards), "--preset", "tiny", "--size", str(SIZE), "--batch-size", "8",
        "--steps", "4", "--eval-every", "4", "--log-every", "2", "--workers", "0",
        "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return root, shards, out


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_train_then_eval_with_no_flags(trained, monkeypatch):
    root, shards, out = trained
    assert (root / "runs" / "latest").resolve() == out.resolve()
    monkeypatch.chdir(root)  # dmn-eval finds runs/latest from here
    result = runner.invoke(eval_app, ["--split", "test", "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "overall IoU" in result.stdout and "precision@0.9" in result.stdout
    metrics = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    assert metrics["checkpoint"].endswith("best.pt") and metrics["shards"] == str(shards.resolve())
    again = runner.invoke(eval_app, ["--from-predictions",
                                     str(out / "eval" / "test" / "predictions.zarr")])
    assert again.exit_code == 0, again.output
    assert f"{metrics['fixed']['overall_iou']:.4f}" in again.stdout


def test_help_explains_the_original_flags():
    text = runner.invoke(train_app, ["--help"], env={"COLUMNS": "200"}).stdout
    for flag in ("--backend", "--num-filters", "--lang-layers", "--mix-we", "--lstm", "--high-res",
                 "--upsamp-amplification", "--accum-iters", "--lr", "--epochs", "--dmn-freeze",
                 "--init-from", "--resume", "--compile"):
        assert flag in text, flag


def test_eval_errors(trained, tmp_path, monkeypatch):
    root, shards, out = trained
    monkeypatch.chdir(tmp_path)
    _one_line_error(runner.invoke(eval_app, ["--split", "val"]), "run dmn-train first")
    _one_line_error(runner.invoke(eval_app, ["--split", "testA", "--run", str(out)]),
                    "'testA'", "test, train, val")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    _one_line_error(runner.invoke(eval_app, ["--split", "val", "--checkpoint", str(bad)]),
                    "corrupt")
    other = make_shards(tmp_path / "other")
    (other / "vocab.json").write_text(json.dumps(["<pad>", "<unk>", "zebra"]))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["vocab"]["sha256"] = hashlib.sha256((other / "vocab.json").read_bytes()).hexdigest()
    (other / "manifest.json").write_text(json.dumps(manifest))
    _one_line_error(runner.invoke(eval_app, ["--split", "val", "--run", str(out),
                                             "--shards", str(other)]), "vocabulary")
    _one_line_error(runner.invoke(eval_app, ["--split", "val", "--run", str(out),
                                             "--shards", str(tmp_path / "missing")]),
                    "manifest.json")


def test_train_errors(trained, tmp_path):
    root, shards, out = trained
    _one_line_error(runner.invoke(train_app, ["--shards", str(tmp_path / "nope"),
                                              "--pretrained", "none"]), "manifest.json")
    _one_line_error(runner.invoke(train_app, ["--shards", str(shards), "--split", "bogus",
                                              "--pretrained", "none",
                                              "--out", str(tmp_path / "r")]), "'bogus'")
    _one_line_error(runner.invoke(train_app, ["--shards", str(shards), "--out", str(out)]),
                    "--resume")
    _one_line_error(runner.invoke(train_app, ["--shards", str(shards), "--preset", "tiny",
                                              "--upsamp-amplification", "3"]),
                    "upsamp_amplification")
    _one_line_error(runner.invoke(train_app, ["--resume", "--out", str(out), "--num-filters", "3"]),
                    "num_filters")
