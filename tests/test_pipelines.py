"""The recipes in pipelines/ run end to end on toy-sized stand-ins, so they cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

from refer_fixtures import make_refer_root

REPO = Path(__file__).resolve().parents[1]
# Tiny-model flags that make any recipe finish in seconds on a CPU.
FAST = ["--preset", "tiny", "--size", "32", "--batch-size", "4", "--steps", "2", "--eval-every", "2",
        "--eval-batches", "1", "--workers", "0", "--no-progress"]
# paper.sh sets --batch-size/--accum-iters itself (from its --batch, --micro-batch).
PAPER_FAST = [f for f in FAST if f not in ("--batch-size", "4")]


def _run(args, cwd, env_extra=None):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           **(env_extra or {})}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_paper_recipe_says_what_is_missing(tmp_path):
    r = _run(["bash", REPO / "pipelines/paper_unc.sh", "--data-root", tmp_path / "data", "--shards", tmp_path / "shards"], tmp_path)
    assert r.returncode == 2
    assert f"{tmp_path}/data/refcoco/refs(unc).p" in r.stderr
    assert "images/mscoco/images/train2014" in r.stderr
    assert "dmn-data download --dataset unc" in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing long started


def test_paper_recipe_end_to_end_on_a_stand_in(tmp_path):
    make_refer_root(tmp_path / "data", "refcoco", "unc", images_per_split=3)
    r = _run(["bash", REPO / "pipelines/paper_unc.sh", "--data-root", "data", "--allow-cpu",
              "--batch", "4", "--micro-batch", "2", "--", *PAPER_FAST], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "4 sentences per optimizer step = 1 process(es) x micro-batch 2 x 2 accumulated" in out
    assert out.count("optimizer step: 4 sentences (--batch-size 2 × --accum-iters 2 × 1 process)") == 2
    for split in ("val", "testA", "testB"):
        assert (tmp_path / "runs/unc-high/eval" / split / "metrics.json").is_file()
    table = [ln for ln in r.stdout.splitlines() if ln.startswith("| testA")]
    assert table and "54.84" in table[0]
    low = json.loads((tmp_path / "runs/unc-low/config.json").read_text())
    high = json.loads((tmp_path / "runs/unc-high/config.json").read_text())
    assert json.dumps(high).count("init_from") and "unc-low" in json.dumps(high)
    assert low != high
    assert [(c["train"]["batch_size"], c["train"]["accum_iters"]) for c in (low, high)] == [(2, 2)] * 2

    # unc+ fine-tunes the UNC low-res weights, as the original did (words mapped by token).
    make_refer_root(tmp_path / "data", "refcoco+", "unc", images_per_split=3, seed=5)
    r = _run(["bash", REPO / "pipelines/paper.sh", "unc+", "--data-root", "data", "--allow-cpu",
              "--runs", "elsewhere", "--", *PAPER_FAST], tmp_path)
    assert r.returncode == 2 and "fine-tuned it from the UNC low-res weights" in r.stderr
    assert not (tmp_path / "elsewhere").exists()
    r = _run(["bash", REPO / "pipelines/paper.sh", "unc+", "--data-root", "data", "--allow-cpu",
              "--", *PAPER_FAST], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    plus = json.loads((tmp_path / "runs/uncplus-low/config.json").read_text())
    assert plus["train"]["init_from"].endswith("unc-low/checkpoints/best.pt")
    assert plus["train"]["epochs"] == 10 and "--init-from" in r.stderr + r.stdout


def test_paper_recipe_keeps_the_batch_it_is_given(tmp_path):
    """--nproc never multiplies the batch: a batch that does not split is refused up front."""
    for args, says in ((["--nproc", "2"], "--batch 1 sentences per step cannot be split over --nproc 2"),
                       (["--nproc", "2", "--batch", "8", "--micro-batch", "3"], "--micro-batch 3 must divide the 4"),
                       (["--batch", "0"], "--batch 0: give a positive integer"),
                       (["--", "--batch-size", "8"], "--batch-size: paper.sh sets the batch itself")):
        r = _run(["bash", REPO / "pipelines/paper_unc.sh", "--data-root", "data", *args], tmp_path)
        assert r.returncode == 2 and says in r.stderr, (args, r.stderr)
        assert r.stderr.count("error:") == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "shards").exists()


def test_toy_run_recipe(tmp_path):
    r = _run(["bash", REPO / "pipelines/toy_run.sh", "--toy-train", "40", "--steps", "2", "--picture", "pic.png",
              "--", "--size", "32", "--batch-size", "4", "--eval-batches", "1", "--workers", "0", "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "toy test overall IoU" in r.stdout and (tmp_path / "pic.png").is_file()
    assert (tmp_path / "runs/toy/eval/test-ablate-language/metrics.json").is_file()
    again = _run(["bash", REPO / "pipelines/toy_run.sh", "--toy-train", "40", "--steps", "2"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "up to date" in again.stderr + again.stdout


def test_colour_probe_runs_on_toy_shards(tmp_path):
    r = _run(["dmn-data", "build", "--dataset", "toy", "--out", "shards", "--toy-train", "40",
              "--toy-val", "4", "--toy-test", "4", "--workers", "1"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run([sys.executable, REPO / "pipelines/probe_colour.py", "--shards", "shards/toy",
              "--batches", "2", "--size", "64"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    stages = [ln for ln in r.stdout.splitlines() if "held-out accuracy" in ln]
    assert len(stages) == 5 and "stride 16" in stages[-1]
    assert all(0.0 <= float(ln.split()[-1]) <= 1.0 for ln in stages)
    # Colour is plain to read at the first stage, even untrained.
    assert float(stages[0].split()[-1]) >= 0.8


def test_bench_predict_quick(tmp_path):
    r = _run([sys.executable, REPO / "pipelines/bench_predict.py", "--quick", "--threads", "1"],
             tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    timed, counted = [ln for ln in r.stdout.splitlines() if ln.startswith("| tiny")]
    assert len(timed.split("|")) == 11
    # the arithmetic table: backbone < 1 phrase < 8 phrases, and the ratio is their quotient
    backbone, one, eight, _, ratio = (float(x) for x in counted.split("|")[3:8])
    assert 0 < backbone < one < eight and abs(ratio / (eight / one) - 1) < 0.05


def test_paper_recipe_checks_backbone_weights_first(tmp_path):
    """Offline without cached weights: one line naming the fix, before any shard or run."""
    make_refer_root(tmp_path / "data", "refcoco", "unc", images_per_split=3)
    (tmp_path / "hf").mkdir()
    env_extra = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    r = _run(["bash", REPO / "pipelines/paper_unc.sh", "--data-root", "data", "--allow-cpu",
              "--", *PAPER_FAST, "--backend", "resnet18"], tmp_path, env_extra)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "resnet18.a1_in1k" in errors[0] and "--fetch-weights" in errors[0]
    assert not (tmp_path / "shards").exists() and not (tmp_path / "runs").exists()


def test_gpu_check_refuses_without_cuda_and_bad_options(tmp_path):
    # The full --cpu dry run takes minutes on 2 cores (docs/gpu.md): here only its guards.
    r = _run(["bash", REPO / "pipelines/gpu_check.sh", "--bogus"], tmp_path)
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr
    import torch
    if not torch.cuda.is_available():
        r = _run(["bash", REPO / "pipelines/gpu_check.sh", "--work", tmp_path / "gc",
                  "--python", sys.executable], REPO)
        assert r.returncode == 2
        assert r.stderr.strip().splitlines()[-1] == (
            f"error: {sys.executable} sees no CUDA device (use --cpu for a dry run on the CPU)")
        assert not (tmp_path / "gc" / "summary.md").exists()
