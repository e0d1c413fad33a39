"""A tiny DMN trained for a few steps on real toy shards, evaluated with dmn-eval: what the
serving tests load, export and compare against."""

from pathlib import Path

from typer.testing import CliRunner

from dmn_train.cli_eval import app as eval_app
from dmn_train.cli_train import app as train_app

from test_train import SIZE, make_shards


def train_tiny(root: Path) -> tuple[Path, Path]:
    """(shards, run directory): 4 steps of the tiny preset, then dmn-eval on the test split."""
    runner = CliRunner()
    shards = make_shards(root / "shards")
    run = root / "runs" / "tiny"
    result = runner.invoke(train_app, [
        "--shards", str(shards), "--preset", "tiny", "--size", str(SIZE), "--batch-size", "8",
        "--steps", "4", "--eval-every", "4", "--log-every", "2", "--workers", "0",
        "--no-progress", "--out", str(run)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(eval_app, ["--split", "test", "--run", str(run), "--workers", "0",
                                      "--no-progress", "--batch-size", "4", "--grid", "0"])
    assert result.exit_code == 0, result.output
    return shards, run
