"""dmn_model.pretrained and dmn-train --pretrained / --fetch-weights.

The Hub is never reached: the hub tests build a real Hugging Face cache layout themselves
(``$HF_HOME/hub/models--timm--resnet18.a1_in1k/snapshots/<rev>/model.safetensors`` + refs/main)
and run the CLI in a subprocess with ``HF_HUB_OFFLINE=1`` (huggingface_hub reads its settings
when imported).
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from dmn_model import DMN, DMNConfig
from dmn_model.backbone import create_backbone
from dmn_model.checkpoint import load_checkpoint, model_from_checkpoint
from dmn_model.config import preset
from dmn_model.pretrained import PretrainedWeightsError, load_backbone_weights, resolve_weights

from test_train import make_shards

REV = "0123456789abcdef0123456789abcdef01234567"


def _random_resnet18(seed: int) -> dict:
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}


def _hf_cache(home: Path, repo: str, state: dict) -> Path:
    """``state`` as ``model.safetensors`` where huggingface_hub looks for ``repo``'s main."""
    base = home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / REV
    snap.mkdir(parents=True)
    save_file(state, str(snap / "model.safetensors"))
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(REV)
    return snap / "model.safetensors"


def _cli(args, home: Path, cwd: Path):
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(["dmn-train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fresh_run_starts_from_timm_hub_weights_in_the_cache(tmp_path):
    """auto → timm's default tag resnet18.a1_in1k → timm loads it from the HF cache (offline) →
    the tensors arrive in the DMN's backbone; the checkpoint says where they came from."""
    state = _random_resnet18(seed=3)
    file = _hf_cache(tmp_path / "hf", "timm/resnet18.a1_in1k", state)
    shards = make_shards(tmp_path / "shards")
    out = tmp_path / "run"
    # lr ~0: one optimizer step, so the checkpoint's conv weights are the starting ones
    r = _cli(["--shards", str(shards), "--preset", "tiny", "--backend", "resnet18", "--size",
              "64", "--batch-size", "2", "--steps", "1", "--lr", "1e-12", "--no-val",
              "--workers", "0", "--no-progress", "--out", str(out)], tmp_path / "hf", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"backbone weights: resnet18.a1_in1k from timm/resnet18.a1_in1k" in r.stderr
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    record = ckpt["backbone_weights"]
    assert record == {"requested": "auto", "name": "resnet18.a1_in1k",
                      "hub_id": "timm/resnet18.a1_in1k", "file": str(file.resolve()),
                      "sha256": _sha(file)}
    assert json.loads((out / "config.json").read_text())["backbone_weights"] == record
    for key in ("conv1.weight", "layer4.1.conv2.weight", "layer2.0.downsample.0.weight"):
        torch.testing.assert_close(ckpt["model"]["backbone." + key], state[key],
                                   atol=1e-6, rtol=0)


def test_loading_a_trained_model_never_loads_backbone_weights(tmp_path, monkeypatch):
    import huggingface_hub
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError("a trained model's backbone must come from its state dict")

    monkeypatch.setattr(builder, "load_pretrained", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    cfg = preset("tiny", backbone="resnet18")
    state = DMN(cfg, vocab_size=5).state_dict()
    ckpt = {"model": state, "model_config": cfg.__dict__ | {"pretrained_path": "/gone.pth"},
            "vocab_size": 5}
    model = model_from_checkpoint(ckpt, "ckpt")
    torch.testing.assert_close(model.backbone.conv1.weight, state["backbone.conv1.weight"])


def test_offline_without_weights_is_one_line_before_any_data(tmp_path):
    (tmp_path / "hf").mkdir()
    r = _cli(["--shards", str(tmp_path / "no-shards-here"), "--preset", "tiny", "--backend",
              "resnet18", "--workers", "0"], tmp_path / "hf", tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    line = lines[0]
    for needle in ("resnet18.a1_in1k", "timm/resnet18.a1_in1k", "HF_HUB_OFFLINE=1",
                   "dmn-train --fetch-weights", "--pretrained FILE", "--pretrained none"):
        assert needle in line, (needle, line)
    assert "shards" not in line  # the weights were checked first
    assert not (tmp_path / "runs").exists()


def test_fetch_weights_reports_the_cached_file(tmp_path):
    file = _hf_cache(tmp_path / "hf", "timm/resnet18.tv_in1k", _random_resnet18(seed=4))
    r = _cli(["--preset", "tiny", "--backend", "resnet18", "--pretrained", "resnet18.tv_in1k",
              "--fetch-weights"], tmp_path / "hf", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _sha(file)[:12] in r.stdout and "loads into the backbone" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == str(file.resolve())
    r = _cli(["--preset", "tiny", "--fetch-weights"], tmp_path / "hf", tmp_path)
    assert r.returncode == 0 and "random init" in r.stdout and "nothing to fetch" in r.stdout


def test_local_file_goes_through_timm_and_arrives(tmp_path):
    state = _random_resnet18(seed=5)
    path = tmp_path / "r18.safetensors"
    save_file(state, str(path))
    cfg = preset("tiny", backbone="resnet18")
    weights = resolve_weights(cfg.backbone, str(path))
    assert (weights.name, weights.hub_id, weights.sha256) == (str(path), None, _sha(path))
    model = DMN(cfg, vocab_size=5)
    load_backbone_weights(model.backbone, cfg, weights)
    loaded = model.backbone.state_dict()
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key])


def test_local_file_fills_the_final_norm_too(tmp_path):
    """resnetv2's final norm (the module dpn92's conv5_bn_ac stands for) comes from the file."""
    torch.manual_seed(6)
    full = timm.create_model("resnetv2_18")
    torch.nn.init.uniform_(full.norm.weight, 2, 3)
    path = tmp_path / "r2.pth"
    torch.save(full.state_dict(), path)
    cfg = preset("tiny", backbone="resnetv2_18")
    net = create_backbone(cfg)
    load_backbone_weights(net, cfg, resolve_weights(cfg.backbone, str(path)))
    torch.testing.assert_close(net.norm.weight, full.norm.weight)


@pytest.mark.parametrize("backbone, requested, message", [
    ("tiny_cnn", "resnet18.a1_in1k", "no pretrained weights"),
    ("resnet18", "dpn92.mx_in1k", "not a timm tag of 'resnet18'"),
    ("resnet18", "resnet18.no_such_tag", "no such tag"),
    ("resnet18", "/nowhere/weights.pth", "no such file"),
])
def test_bad_requests_name_the_fix(backbone, requested, message):
    with pytest.raises(PretrainedWeightsError, match=message):
        resolve_weights(backbone, requested)


def test_none_and_tiny_auto_mean_random_init():
    assert resolve_weights("resnet18", "none") is None
    assert resolve_weights("tiny_cnn", "auto") is None


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "r18.safetensors"
    save_file(_random_resnet18(seed=7), str(path))
    cfg = preset("tiny", backbone="resnetv2_18")
    with pytest.raises(PretrainedWeightsError, match="do not fit"):
        load_backbone_weights(create_backbone(cfg), cfg, resolve_weights(cfg.backbone, str(path)))


def test_old_config_loads_without_the_final_norm():
    """A config stored before backbone_final_norm existed (with the retired pretrained_path)
    rebuilds the model it was trained as: no final-norm tensors, so strict loading works."""
    old = {k: v for k, v in preset("tiny", backbone="resnetv2_18").__dict__.items()
           if k != "backbone_final_norm"}
    old["pretrained_path"] = "/gone/weights.pth"
    cfg = DMNConfig.from_dict(old)
    assert cfg.backbone_final_norm is False
    assert DMNConfig.from_dict({**old, "backbone_final_norm": True}).backbone_final_norm
    state = create_backbone(cfg).state_dict()
    assert not any(k.startswith("norm.") for k in state)
    assert any(k.startswith("norm.") for k in create_backbone(cfg.replace(
        backbone_final_norm=True)).state_dict())
