"""Checkpoint round trip (weights_only), atomic replacement, RNG restore, corrupt files."""

import random

import numpy as np
import pytest
import torch

from dmn_model import checkpoint as ckpt
from dmn_model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _payload():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt, {
        "model": model.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": {"kind": "constant", "lr": 1e-3}, "step": 7, "epoch": 1, "best_val_iou": 0.25,
        "model_config": {"backbone": "tiny_cnn", "tiny_cnn_channels": [8, 8]},
        "train_config": {"lr": 1e-3, "val_split": None}, "vocab_sha256": "ab" * 32,
        "vocab_size": 12, "rng": ckpt.rng_state(),
    }


def test_round_trip_weights_only(tmp_path):
    model, opt, payload = _payload()
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, payload)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind
    got = load_checkpoint(path)
    assert got["format"] == ckpt.FORMAT
    for k in ("step", "epoch", "best_val_iou", "model_config", "train_config", "vocab_sha256",
              "scheduler"):
        assert got[k] == payload[k]
    for k, v in payload["model"].items():
        assert torch.equal(got["model"][k], v)
    opt2 = torch.optim.Adam(torch.nn.Linear(4, 3).parameters(), lr=1e-3)
    opt2.load_state_dict(got["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_rng_states_restore(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    save_checkpoint(tmp_path / "a.pt", {**_payload()[2], "rng": ckpt.rng_state()})
    want = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand()
    ckpt.set_rng_state(load_checkpoint(tmp_path / "a.pt")["rng"])
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], want[0]) and got[1:] == want[1:]


def test_replace_is_atomic_on_failure(tmp_path, monkeypatch):
    _, _, payload = _payload()
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload)
    before = path.read_bytes()

    def boom(obj, f, *a, **k):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {**payload, "step": 8})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_corrupt_and_foreign_files(tmp_path):
    _, _, payload = _payload()
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a dmn checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_code_in_a_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "model": Evil()}, path)
    with pytest.raises(CheckpointError, match="was refused and not loaded: it refers to print.*not trusted"):
        load_checkpoint(path)


def test_load_weights_names_what_does_not_fit():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    ckpt.load_weights(model, torch.nn.Sequential(torch.nn.Linear(4, 3),
                                                 torch.nn.Linear(3, 2)).state_dict(), "ok.pt")
    other = {"0.weight": torch.zeros(3, 5), "0.bias": torch.zeros(3), "9.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError) as err:
        ckpt.load_weights(model, other, "old.pt")
    message = str(err.value)
    assert "\n" not in message and message.startswith("old.pt: ")
    assert "2 missing (e.g. 1.weight)" in message and "1 unexpected (e.g. 9.weight)" in message
    assert "1 of another shape (e.g. 0.weight)" in message
