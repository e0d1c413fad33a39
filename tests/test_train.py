"""The training loop on tiny toy shards: a smoke run, the LR schedule, resume after SIGKILL."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dmn_data.build import BuildConfig, ToyOptions, build
from dmn_model import DMN, DMNConfig
from dmn_model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dmn_train.distributed import DistInfo
from dmn_train.train import (TrainConfig, init_weights_from, lr_at, model_config, train,
                             train_config)

SIZE = 64


def make_shards(root: Path) -> Path:
    """A real toy build: 32 train / 8 val / 8 test images at 64 px, several shards per split."""
    build(BuildConfig(dataset="toy", out=root, shard_size=8,
                      toy=ToyOptions(train=32, val=8, test=8, size=SIZE)),
          progress=False, log=lambda m: None)
    return root / "toy"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("shards"))


def tiny_configs(shards: Path, out: Path, **overrides) -> tuple[TrainConfig, DMNConfig]:
    cfg = train_config("tiny", str(shards), out=str(out), size=SIZE, batch_size=8, workers=0,
                       log_every=2, eval_every=4, eval_batch_size=8, progress=False,
                       **overrides)
    return cfg, model_config("tiny")


def test_lr_is_a_pure_function_of_the_step():
    cfg = TrainConfig(shards="x", lr=1e-3, warmup_steps=4, schedule="cosine", min_lr=1e-5)
    lrs = [lr_at(s, cfg, 20) for s in range(20)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lr_at(20, cfg, 20) == pytest.approx(1e-5)
    assert lrs == [lr_at(s, cfg, 20) for s in range(20)]
    constant = TrainConfig(shards="x", lr=1e-5)
    assert {lr_at(s, constant, 100) for s in range(100)} == {1e-5}


def test_bad_settings_name_the_flag():
    with pytest.raises(ValueError, match="--accum-iters"):
        TrainConfig(shards="x", accum_iters=0)
    with pytest.raises(ValueError, match="--schedule"):
        TrainConfig(shards="x", schedule="step")
    with pytest.raises(ValueError, match="--preset"):
        train_config("huge", "x")


def test_smoke_training(shards, tmp_path):
    out = tmp_path / "runs" / "smoke"
    cfg, model_cfg = tiny_configs(shards, out, steps=8)
    result = train(cfg, model_cfg, DistInfo(), torch.device("cpu"), log=lambda m: None)
    assert result.step == 8

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [2, 4, 6, 8]
    assert losses[-1] < losses[0]  # BCE from ~0.69 falls fast at lr 1e-3
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8]
    assert all(0 <= r["overall_iou"] <= 1 and r["sentences"] > 0 for r in evals)

    for name in ("config.json", "curves.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (out / name).is_file(), name
    assert (out.parent / "latest").resolve() == out.resolve()
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["steps"] == 8 and config["model"]["backbone"] == "tiny_cnn"

    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == 8 and ckpt["train_config"]["size"] == SIZE
    assert ckpt["vocab_sha256"] == json.loads((shards / "manifest.json").read_text())["vocab"]["sha256"]
    model = DMN(DMNConfig.from_dict(ckpt["model_config"]), ckpt["vocab_size"])
    model.load_state_dict(ckpt["model"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, result.model.state_dict()[k])
    model.eval()
    tokens = torch.tensor([[2, 3, 0], [4, 5, 6]])
    logits = model(model.normalize(torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8)), tokens,
                   torch.tensor([2, 3]))
    assert logits.shape == (2, 1, SIZE, SIZE)


def test_existing_run_needs_resume(shards, tmp_path):
    out = tmp_path / "run"
    cfg, model_cfg = tiny_configs(shards, out, steps=1, val_split=None)
    train(cfg, model_cfg, DistInfo(), torch.device("cpu"), log=lambda m: None)
    with pytest.raises(Exception, match="--resume"):
        train(cfg, model_cfg, DistInfo(), torch.device("cpu"), log=lambda m: None)


def _cli(shards: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dmn_train.cli_train", "--shards", str(shards), "--preset", "tiny",
            "--size", str(SIZE), "--batch-size", "8", "--steps", str(steps), "--workers", "0",
            "--log-every", "1", "--save-every", "1", "--eval-every", "4", "--eval-batches", "1",
            "--no-progress", "--out", str(out), *extra]


def test_resume_after_sigkill_continues_the_same_run(shards, tmp_path):
    steps = 10
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Reference: the same run without interruption.
    subprocess.run(_cli(shards, tmp_path / "straight", steps), check=True, env=env,
                   capture_output=True, timeout=120)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(shards, out, steps), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("step      3/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(out / "checkpoints" / "last.pt")["step"]
    assert 2 <= killed_at < steps

    resumed = subprocess.run(_cli(shards, out, steps, "--resume"), env=env, capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {killed_at}" in resumed.stderr

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert train_steps == list(range(1, steps + 1))  # continued: no restart, no duplicates
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [4, 8, 10]

    # Same data order, RNG and optimizer state: the resumed run ends where the straight one does.
    final = load_checkpoint(out / "checkpoints" / "last.pt")
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    assert final["step"] == straight["step"] == steps
    for k, v in straight["model"].items():
        torch.testing.assert_close(final["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_init_from_loads_the_low_res_weights(tmp_path):
    low = DMN(model_config("tiny", high_res=False), 20)
    payload = {"model": low.state_dict(), "model_config": {}, "vocab_sha256": "a" * 64,
               "vocab_size": 20}
    save_checkpoint(tmp_path / "low.pt", payload)
    high = DMN(model_config("tiny"), 20)
    lines = []
    init_weights_from(high, str(tmp_path / "low.pt"), "a" * 64, lines.append)
    state = high.state_dict()
    for k, v in low.state_dict().items():
        assert torch.equal(state[k], v), k
    new = [k for k in state if k not in low.state_dict()]
    assert new and all(k.startswith("upsampling.") for k in new)
    assert f"loaded {len(low.state_dict())}/{len(state)} tensors" in lines[0]
    with pytest.raises(CheckpointError, match="another vocabulary"):
        init_weights_from(high, str(tmp_path / "low.pt"), "b" * 64, lines.append)


def test_init_from_another_dataset_maps_word_embeddings_by_token(tmp_path):
    """Fine-tuning on another dataset (the original's unc+ / gref from UNC): each shared token
    keeps its trained embedding row, new tokens keep their fresh rows, the rest loads as is."""
    old_vocab = ["<pad>", "<unk>", "man", "left", "red", "dog"]
    new_vocab = ["<pad>", "<unk>", "dog", "cat", "left", "horse", "man"]
    torch.manual_seed(0)
    low = DMN(model_config("tiny", high_res=False), len(old_vocab))
    save_checkpoint(tmp_path / "unc.pt", {"model": low.state_dict(), "model_config": {},
                                          "vocab_sha256": "a" * 64, "vocab_size": len(old_vocab),
                                          "vocab": old_vocab})
    torch.manual_seed(1)
    model = DMN(model_config("tiny", high_res=False), len(new_vocab))
    fresh = model.embedding.weight.detach().clone()
    lines = []
    init_weights_from(model, str(tmp_path / "unc.pt"), "b" * 64, lines.append, new_vocab)
    emb, old_emb = model.embedding.weight.detach(), low.embedding.weight.detach()
    for i, token in enumerate(new_vocab):
        expected = old_emb[old_vocab.index(token)] if token in old_vocab else fresh[i]
        assert torch.equal(emb[i], expected), token
    assert "5 word embeddings carried over by token, 2 new (e.g. ['cat', 'horse'])" in lines[0]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in low.state_dict().items() if k != "embedding.weight")
    assert f"loaded {len(state)}/{len(state)} tensors" in lines[1]
    # Without its token list (an older checkpoint), another vocabulary is refused.
    save_checkpoint(tmp_path / "old.pt", {"model": low.state_dict(), "model_config": {},
                                          "vocab_sha256": "a" * 64, "vocab_size": len(old_vocab)})
    with pytest.raises(CheckpointError, match="does not hold its token list"):
        init_weights_from(model, str(tmp_path / "old.pt"), "b" * 64, lines.append, new_vocab)


def test_paper_preset_takes_the_originals_lowres_loss():
    from dmn_train.train import train_config
    assert train_config("paper", "shards/x").lowres_loss == "upsampled"
    assert train_config("tiny", "shards/x").lowres_loss == "pooled"
    assert train_config("paper", "shards/x", lowres_loss="pooled").lowres_loss == "pooled"
    with pytest.raises(ValueError, match="--lowres-loss must be one of pooled, upsampled"):
        train_config("paper", "shards/x", lowres_loss="nearest")


def test_plateau_schedule_is_torchs_reduce_lr_on_plateau():
    """--schedule plateau drops the lr as torch's ReduceLROnPlateau (mode min on 1 − val IoU,
    the original's patience 2 and factor 0.1) would, floored at --min-lr, after the warmup."""
    from dmn_train.train import _Plateau, train_config

    cfg = train_config("paper", "shards/x", schedule="plateau", lr=1e-3, min_lr=2e-7, warmup_steps=3)
    ours = _Plateau(cfg)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1e-3)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=2,
                                                        min_lr=2e-7)
    assert [ours.lr(s, 100) for s in range(3)] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    gen = torch.Generator().manual_seed(0)
    ious = [0.2, 0.3, 0.3, 0.29, 0.3, 0.31, 0.31, 0.31, 0.31] + torch.rand(30, generator=gen).mul(0.3).tolist()
    drops = 0
    for iou in ious:
        drops += ours.observe(iou)
        theirs.step(1 - iou)
        assert ours.lr(50, 100) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
    assert drops >= 2 and ours.lr(50, 100) < 1e-4
    again = _Plateau(cfg)
    again.load_state_dict(ours.state_dict())
    assert again.lr(50, 100) == ours.lr(50, 100) and again.state_dict() == ours.state_dict()
    assert _Plateau(train_config("paper", "shards/x")).observe(0.0) is False  # constant: no drops
    with pytest.raises(ValueError, match="needs a --val-split"):
        dataclasses.replace(cfg, val_split=None)


def test_plateau_schedule_in_a_run(shards, tmp_path):
    """A run with --schedule plateau: the lr of each step follows its own validation IoUs, and
    the checkpoint holds the schedule's state for --resume."""
    from dmn_train.train import _Plateau

    out = tmp_path / "plateau"
    cfg, model_cfg = tiny_configs(shards, out, steps=8, schedule="plateau", plateau_patience=0)
    cfg = dataclasses.replace(cfg, eval_every=2, log_every=1)
    train(cfg, model_cfg, DistInfo(), torch.device("cpu"), log=lambda m: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    replay = _Plateau(cfg)
    for row in rows:
        if row["kind"] == "train":
            assert row["lr"] == pytest.approx(replay.lr(row["step"] - 1, 8)), row
        else:
            replay.observe(row["overall_iou"])
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["scheduler"]["plateau"] == replay.state_dict()
    assert replay.scale < 1  # it did drop (an 8-step model does not improve every evaluation)
