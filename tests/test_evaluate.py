"""Evaluation of a checkpoint on toy shards, against a direct per-sentence reference."""

import copy
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr

from dmn_data.build import BuildConfig, ToyOptions, build
from dmn_data.errors import DataError
from dmn_data.masks import decode_rle
from dmn_data.stream import make_loader
from dmn_model import DMN, preset
from dmn_model.checkpoint import CheckpointError, save_checkpoint
from dmn_train.distributed import DistInfo
from dmn_train.evaluate import EvalConfig, evaluate, metrics_from_predictions
from dmn_train.metrics import PRECISION_CUTS, SWEEP_THRESHOLDS

SIZE = 64
CPU = torch.device("cpu")


def make_shards(root: Path) -> Path:
    build(BuildConfig(dataset="toy", out=root, shard_size=4,
                      toy=ToyOptions(train=8, val=6, test=6, size=SIZE)),
          progress=False, log=lambda m: None)
    return root / "toy"


def make_run(shards: Path, run_dir: Path, high_res: bool = True, seed: int = 0) -> Path:
    """A run directory with an (untrained, randomly initialised) checkpoint, as dmn-train writes."""
    torch.manual_seed(seed)
    vocab_bytes = (shards / "vocab.json").read_bytes()
    model_cfg = preset("tiny", high_res=high_res)
    model = DMN(model_cfg, len(json.loads(vocab_bytes)))
    path = run_dir / "checkpoints" / "last.pt"
    save_checkpoint(path, {
        "model": model.state_dict(), "step": 3, "epoch": 0,
        "model_config": dataclasses.asdict(model_cfg),
        "train_config": {"shards": str(shards), "size": SIZE},
        "vocab_sha256": hashlib.sha256(vocab_bytes).hexdigest(), "vocab_size": model.embedding.num_embeddings,
    })
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("shards"))


def reference_metrics(ckpt_path: Path, shards: Path, split: str, threshold: float,
                      bn_mode: str = "eval") -> dict:
    """The original evaluation, per sentence, in numpy: probability maps at the original
    resolution, then ``prob > t`` for every threshold; cum_I / cum_U and precision@X.
    ``bn_mode="per-image"``: as the original ran it, each sentence alone on its unpadded image,
    the model in training mode (BatchNorm on the image's statistics), a fresh copy each time."""
    payload = torch.load(ckpt_path, weights_only=True)
    model = DMN(preset("tiny", **{"high_res": payload["model_config"]["high_res"]}),
                payload["vocab_size"])
    model.load_state_dict(payload["model"])
    model.eval()
    thresholds = list(SWEEP_THRESHOLDS) + ([threshold] if threshold not in SWEEP_THRESHOLDS else [])
    inter, union = [], []
    loader = make_loader(str(shards), split, size=SIZE, batch_size=5, train=False, workers=0)
    with torch.no_grad():
        for batch in loader:
            logits = model(model.normalize(batch["image"]), batch["tokens"], batch["lengths"],
                           image_size=batch["resized_size"])
            logits = F.interpolate(logits, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            for b in range(len(batch["sentence"])):
                h, w = batch["resized_size"][b].tolist()
                oh, ow = batch["orig_size"][b].tolist()
                crop = logits[b:b + 1, :, :h, :w]
                if bn_mode == "per-image":
                    alone = copy.deepcopy(model).train()
                    n = int(batch["lengths"][b])
                    crop = alone(alone.normalize(batch["image"][b:b + 1, :, :h, :w]),
                                 batch["tokens"][b:b + 1, :n], batch["lengths"][b:b + 1])
                    crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
                prob = torch.sigmoid(F.interpolate(crop, size=(oh, ow), mode="bilinear",
                                                   align_corners=False))[0, 0].numpy()
                gt = decode_rle(batch["mask_rle"][b]).astype(bool)
                inter.append([np.logical_and(prob > t, gt).sum() for t in thresholds])
                union.append([np.logical_or(prob > t, gt).sum() for t in thresholds])
    inter, union = np.array(inter, dtype=np.float64), np.array(union, dtype=np.float64)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return {"overall": inter.sum(0) / union.sum(0), "mean": iou.mean(0),
            "precision": {f"{c:.1f}": (iou >= c).mean(0) for c in PRECISION_CUTS},
            "n": len(inter), "thresholds": thresholds}


@pytest.mark.parametrize("high_res", [True, False])
def test_evaluate_matches_reference(shards, tmp_path, high_res):
    run = tmp_path / "runs" / "r1"
    ckpt = make_run(shards, run, high_res=high_res)
    cfg = EvalConfig(split="val", run=str(run), threshold=0.3, batch_size=4, workers=0,
                     progress=False, grid=2)
    metrics = evaluate(cfg, DistInfo(), CPU, log=lambda m: None)
    ref = reference_metrics(ckpt, shards, "val", 0.3)
    manifest = json.loads((shards / "manifest.json").read_text())
    assert metrics["sentences"] == ref["n"] == manifest["splits"]["val"]["sentences"]
    fixed = ref["thresholds"].index(0.3)
    assert metrics["fixed"]["overall_iou"] == pytest.approx(ref["overall"][fixed], abs=1e-6)
    assert metrics["fixed"]["mean_iou"] == pytest.approx(ref["mean"][fixed], abs=1e-6)
    for cut, values in ref["precision"].items():
        assert metrics["fixed"]["precision"][cut] == pytest.approx(values[fixed])
    assert metrics["sweep"]["overall_iou"] == pytest.approx(list(ref["overall"][:39]), abs=1e-6)
    best = int(np.argmax(ref["overall"][:39]))
    assert metrics["sweep"]["best"]["threshold"] == SWEEP_THRESHOLDS[best]

    out = run / "eval" / "val"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "best_worst.png").stat().st_size > 0
    group = zarr.open_group(str(out / "predictions.zarr"), mode="r")
    n = metrics["sentences"]
    assert group["prob"].shape == (n, SIZE, SIZE) and group["prob"].dtype == np.uint8
    assert group["inter"].shape == group["union"].shape == (n, len(ref["thresholds"]))
    sent_ids = group["sent_id"][:]
    assert len(set(sent_ids.tolist())) == n  # every sentence exactly once
    assert group.attrs["thresholds"] == ref["thresholds"]

    recomputed = metrics_from_predictions(out / "predictions.zarr")
    assert recomputed == metrics
    at_best = metrics_from_predictions(out / "predictions.zarr", threshold=0.5)
    assert at_best["fixed"]["overall_iou"] == pytest.approx(ref["overall"][20], abs=1e-6)
    with pytest.raises(DataError, match="--threshold"):
        metrics_from_predictions(out / "predictions.zarr", threshold=0.33)


def test_latest_run_and_best_checkpoint_are_the_defaults(shards, tmp_path):
    runs = tmp_path / "runs"
    make_run(shards, runs / "old")
    newer = runs / "new"
    make_run(shards, newer, seed=1)
    best = newer / "checkpoints" / "best.pt"
    (newer / "checkpoints" / "last.pt").rename(best)
    (runs / "latest").symlink_to("new")
    metrics = evaluate(EvalConfig(split="test", runs_root=str(runs), workers=0, progress=False,
                                  predictions=False, grid=0), DistInfo(), CPU, log=lambda m: None)
    assert metrics["checkpoint"] == str(best)
    assert (newer / "eval" / "test" / "metrics.json").is_file()
    assert not (newer / "eval" / "test" / "predictions.zarr").exists()


def test_errors(shards, tmp_path):
    run = tmp_path / "runs" / "r"
    ckpt = make_run(shards, run)
    base = EvalConfig(split="val", run=str(run), workers=0, progress=False)
    with pytest.raises(DataError, match="choose one of test, train, val"):
        evaluate(dataclasses.replace(base, split="testA"), DistInfo(), CPU, log=lambda m: None)
    with pytest.raises(CheckpointError, match="run dmn-train first"):
        evaluate(dataclasses.replace(base, run=None, runs_root=str(tmp_path / "none")),
                 DistInfo(), CPU, log=lambda m: None)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        evaluate(dataclasses.replace(base, checkpoint=str(corrupt)), DistInfo(), CPU,
                 log=lambda m: None)
    other = make_shards(tmp_path / "other")
    (other / "vocab.json").write_text(json.dumps(["<pad>", "<unk>", "zebra"]))
    # a vocab.json that its own manifest does not list: the shards are broken
    with pytest.raises(DataError, match="does not match the sha256"):
        evaluate(dataclasses.replace(base, shards=str(other)), DistInfo(), CPU, log=lambda m: None)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["vocab"]["sha256"] = hashlib.sha256((other / "vocab.json").read_bytes()).hexdigest()
    (other / "manifest.json").write_text(json.dumps(manifest))
    # consistent shards with another vocabulary than the checkpoint's
    with pytest.raises(CheckpointError, match="vocabulary"):
        evaluate(dataclasses.replace(base, shards=str(other)), DistInfo(), CPU, log=lambda m: None)


@pytest.mark.parametrize("high_res", [True, False])
def test_per_image_batchnorm_is_the_original_evaluation(shards, tmp_path, high_res):
    """--bn-mode per-image: each sentence alone on its unpadded image with BatchNorm on that
    image's statistics, as the original evaluated; the running statistics stay untouched."""
    run = tmp_path / "runs" / "r"
    ckpt = make_run(shards, run, high_res=high_res, seed=1)
    # Running statistics unlike any image's, so the two modes must differ.
    payload = torch.load(ckpt, weights_only=True)
    for k in payload["model"]:
        if k.endswith("running_mean"):
            payload["model"][k] += 0.5
    torch.save(payload, ckpt)
    cfg = EvalConfig(split="val", run=str(run), threshold=0.3, batch_size=4, workers=0,
                     progress=False, grid=0, bn_mode="per-image")
    metrics = evaluate(cfg, DistInfo(), CPU, log=lambda m: None)
    assert metrics["bn_mode"] == "per-image"
    assert (run / "eval" / "val-bn-per-image" / "metrics.json").is_file()
    ref = reference_metrics(ckpt, shards, "val", 0.3, bn_mode="per-image")
    fixed = ref["thresholds"].index(0.3)
    assert metrics["fixed"]["overall_iou"] == pytest.approx(ref["overall"][fixed], abs=1e-6)
    assert metrics["sweep"]["overall_iou"] == pytest.approx(list(ref["overall"][:39]), abs=1e-6)
    batched = evaluate(dataclasses.replace(cfg, bn_mode="eval"), DistInfo(), CPU, log=lambda m: None)
    assert batched["sweep"]["overall_iou"] != pytest.approx(metrics["sweep"]["overall_iou"], abs=1e-3)
    with pytest.raises(ValueError, match="--bn-mode must be one of eval, per-image"):
        EvalConfig(split="val", bn_mode="train")
    from dmn_train.evaluate import _per_image_batchnorm
    model = DMN(preset("tiny"), 30).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad(), _per_image_batchnorm(model):
        model(model.normalize(torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)),
              torch.tensor([[3, 4], [5, 0]]), torch.tensor([2, 1]))
    assert not any(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_language_ablation_writes_its_own_folder(shards, tmp_path):
    run = tmp_path / "runs" / "r"
    make_run(shards, run)
    metrics = evaluate(EvalConfig(split="val", run=str(run), workers=0, progress=False, grid=0,
                                  predictions=False, ablate_language=True),
                       DistInfo(), CPU, log=lambda m: None)
    assert metrics["ablate_language"] is True
    assert (run / "eval" / "val-ablate-language" / "metrics.json").is_file()
    assert 0 < metrics["sentences"] <= json.loads((shards / "manifest.json").read_text())[
        "splits"]["val"]["sentences"]
