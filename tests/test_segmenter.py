"""Segmenter: load from a model folder, a run, a checkpoint and a Hub cache; predictions at the
image's resolution equal dmn-eval's; several phrases = single calls; EXIF; bad inputs."""

import glob
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from dmn_data.masks import decode_rle
from dmn_model import Prediction, Segmenter
from dmn_model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dmn_train.metrics import intersection_union

from trained_model import train_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    shards, run = train_tiny(root)
    folder = Segmenter.from_pretrained(run, device="cpu").save_pretrained(root / "exported")
    return root, shards, run, folder


def _image(h=50, w=90, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_folder_run_and_checkpoint_give_the_same_predictions(trained):
    root, _, run, folder = trained
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "vocab.json"]
    image = _image()
    results = [Segmenter.from_pretrained(src, device="cpu").predict(image, "the red shape")[0]
               for src in (folder, run, run / "checkpoints" / "best.pt")]
    for r in results[1:]:
        np.testing.assert_array_equal(r.probs, results[0].probs)
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "dmn-model/1" and config["input_size"] == 64
    card = (folder / "README.md").read_text()
    assert "license: other" in card and "| test |" in card and "dmn-train --shards" in card


def test_prediction_has_the_image_size_and_lists_unknown_words(trained):
    seg = Segmenter.from_pretrained(trained[3], device="cpu")
    (pred,) = seg.predict(_image(37, 101), "the zebra shape")
    assert isinstance(pred, Prediction)
    assert pred.probs.shape == pred.mask.shape == (37, 101)
    assert pred.probs.dtype == np.float32 and pred.mask.dtype == bool
    assert pred.tokens == ["the", "zebra", "shape"] and pred.unknown_words == ["zebra"]
    expected = float(pred.probs[pred.mask].mean()) if pred.mask.any() else 0.0
    assert pred.score == pytest.approx(expected)
    tall = seg.predict(Image.fromarray(_image(120, 40)), ["the blue shape"], threshold=0.2)[0]
    assert tall.mask.shape == (120, 40)
    np.testing.assert_array_equal(tall.mask, tall.probs > 0.2)


def test_eight_phrases_equal_eight_single_calls(trained):
    seg = Segmenter.from_pretrained(trained[3], device="cpu")
    phrases = ["the red shape", "the green shape", "the blue thing on the left", "yellow",
               "the shape", "red", "the big green shape at the bottom", "blue shape"]
    image = _image(64, 80, seed=3)
    together = seg.predict(image, phrases)
    assert [p.phrase for p in together] == phrases
    for phrase, pred in zip(phrases, together):
        alone = seg.predict(image, phrase)[0]
        np.testing.assert_allclose(pred.probs, alone.probs, atol=1e-5)
        assert (pred.mask != alone.mask).sum() <= 2


def test_explain_gives_one_unit_map_per_word(trained):
    seg = Segmenter.from_pretrained(trained[3], device="cpu")
    image = _image(48, 70)
    (pred,) = seg.predict(image, "the red shape", explain=True)
    assert [w for w, _ in pred.explain] == ["the", "red", "shape"]
    for _, response in pred.explain:
        assert response.shape == (48, 70) and response.dtype == np.float32
        assert response.min() >= 0.0 and response.max() <= 1.0
    plain = seg.predict(image, "the red shape")[0]
    np.testing.assert_array_equal(plain.probs, pred.probs)  # the hook changes nothing
    assert plain.explain is None


def _test_items(shards: Path):
    """(png bytes, sentence, sent_id, gt mask) for every test sentence, from the shards."""
    for tar in sorted(glob.glob(str(shards / "test" / "*.tar"))):
        with tarfile.open(tar) as tf:
            members = {m.name: m for m in tf.getmembers()}
            for name in members:
                if name.endswith(".json"):
                    meta = json.loads(tf.extractfile(members[name]).read())
                    data = tf.extractfile(members[name[:-5] + ".png"]).read()
                    for ref in meta["refs"]:
                        for sent in ref["sentences"]:
                            yield data, sent["raw"], sent["sent_id"], decode_rle(ref["mask"])


def test_predict_equals_dmn_eval(trained, tmp_path):
    root, shards, run, folder = trained
    group = zarr.open_group(str(run / "eval" / "test" / "predictions.zarr"), mode="r")
    thresholds = torch.tensor(group.attrs["thresholds"], dtype=torch.float64)
    rows = {int(s): i for i, s in enumerate(group["sent_id"][:])}
    inter, union = group["inter"][:], group["union"][:]
    seg = Segmenter.from_pretrained(folder, device="cpu")
    checked = 0
    for data, sentence, sent_id, gt in _test_items(shards):
        path = tmp_path / f"{sent_id}.png"
        path.write_bytes(data)
        pred = seg.predict(path, sentence)[0]
        i, u = intersection_union(torch.from_numpy(pred.probs), torch.from_numpy(gt), thresholds)
        row = rows[sent_id]
        np.testing.assert_array_equal(i.numpy(), inter[row])
        np.testing.assert_array_equal(u.numpy(), union[row])
        checked += 1
    assert checked == len(rows) > 0


def test_exif_orientation_is_ignored_unless_asked(trained, tmp_path):
    seg = Segmenter.from_pretrained(trained[3], device="cpu")
    stored = _image(40, 90, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    pixels = np.asarray(Image.open(path).convert("RGB"))
    default = seg.predict(path, "the red shape")[0]
    assert default.mask.shape == (40, 90)  # the stored pixel grid, as the datasets
    np.testing.assert_array_equal(default.probs, seg.predict(pixels, "the red shape")[0].probs)
    turned = seg.predict(path, "the red shape", exif_transpose=True)[0]
    assert turned.mask.shape == (90, 40)


def test_hub_repo_from_a_local_cache_offline(trained, tmp_path):
    folder = trained[3]
    snapshot = tmp_path / "hub" / "models--someone--dmn-toy" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    refs = tmp_path / "hub" / "models--someone--dmn-toy" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0123abc")
    code = ("import numpy as np; from dmn_model import Segmenter\n"
            "seg = Segmenter.from_pretrained('someone/dmn-toy', device='cpu')\n"
            "p = seg.predict(np.full((30, 50, 3), 90, np.uint8), 'the red shape')[0]\n"
            "print(p.mask.shape, len(seg.vocab))\n"
            "try:\n    Segmenter.from_pretrained('someone/absent')\n"
            "except Exception as e:\n    print(type(e).__name__, str(e))\n")
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.splitlines()
    vocab = json.loads((folder / "vocab.json").read_text())
    assert out[0] == f"(30, 50) {len(vocab)}"
    assert out[1].startswith("CheckpointError someone/absent is not a local path")
    assert "local Hugging Face cache" in out[1]


def test_push_to_hub_uploads_the_model_folder(trained, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["repo"] = repo_id

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            return "commit"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    seg = Segmenter.from_pretrained(trained[3], device="cpu")
    assert seg.push_to_hub("me/dmn", token="t") == "commit"
    assert calls == {"token": "t", "repo": "me/dmn", "files": [
        "README.md", "config.json", "model.safetensors", "vocab.json"]}


def test_old_checkpoint_without_vocabulary(trained, tmp_path):
    root, shards, run, _ = trained
    payload = load_checkpoint(run / "checkpoints" / "best.pt")
    del payload["vocab"]
    old = tmp_path / "old.pt"
    save_checkpoint(old, {k: v for k, v in payload.items() if k != "format"})
    seg = Segmenter.from_pretrained(old, device="cpu")  # finds the training shards' vocab.json
    assert seg.vocab == json.loads((shards / "vocab.json").read_text())
    payload["train_config"]["shards"] = str(tmp_path / "gone")
    save_checkpoint(old, {k: v for k, v in payload.items() if k != "format"})
    with pytest.raises(CheckpointError, match="--vocab FILE"):
        Segmenter.from_pretrained(old, device="cpu")
    wrong = tmp_path / "vocab.json"
    wrong.write_text('["<pad>", "<unk>", "zebra"]\n')
    with pytest.raises(CheckpointError, match="does not match"):
        Segmenter.from_pretrained(old, device="cpu", vocab=wrong)
    assert Segmenter.from_pretrained(old, device="cpu", vocab=shards / "vocab.json").vocab


def test_bad_inputs_raise_one_line_errors(trained, tmp_path):
    folder = trained[3]
    seg = Segmenter.from_pretrained(folder, device="cpu")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    cases = [
        (lambda: seg.predict(bad, "x"), ValueError, "cannot read image"),
        (lambda: seg.predict(tmp_path / "none.png", "x"), ValueError, "cannot read image"),
        (lambda: seg.predict(_image(), "   "), ValueError, "is empty"),
        (lambda: seg.predict(_image(), []), ValueError, "at least one phrase"),
        (lambda: seg.predict(np.zeros((4, 4), np.float32), "x"), ValueError, "uint8"),
        (lambda: Segmenter.from_pretrained(tmp_path / "nowhere" / "x"), CheckpointError,
         "does not exist"),
        (lambda: Segmenter.from_pretrained(tmp_path), CheckpointError, "neither"),
    ]
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in ("config.json", "model.safetensors"):
        (partial / f).write_bytes((folder / f).read_bytes())
    cases.append((lambda: Segmenter.from_pretrained(partial), CheckpointError,
                  "incomplete: it lacks vocab.json"))
    for call, kind, needle in cases:
        with pytest.raises(kind) as err:
            call()
        assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_bf16_autocast_runs_and_stays_close(trained):
    image = _image(40, 60, seed=9)
    fp32 = Segmenter.from_pretrained(trained[3], device="cpu").predict(image, "the red shape")[0]
    bf16 = Segmenter.from_pretrained(trained[3], device="cpu", dtype="bf16")
    pred = bf16.predict(image, "the red shape")[0]
    assert pred.probs.dtype == np.float32 and pred.probs.shape == (40, 60)
    assert np.abs(pred.probs - fp32.probs).max() < 0.05
    with pytest.raises(ValueError, match="dtype"):
        Segmenter.from_pretrained(trained[3], device="cpu", dtype="fp16")


def test_sixteen_bit_grey_png_reads_as_its_high_byte(trained, tmp_path):
    """A 16-bit greyscale PNG (mode I;16): PIL's convert("RGB") clipped it to white; the
    Segmenter (file, PIL image, EXIF path) and dmn-predict's picture read it as the shards do."""
    from dmn_serve.render import as_rgb

    grey = np.random.default_rng(3).integers(0, 65536, (40, 60), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")  # uint16 → mode I;16
    Image.fromarray((grey >> 8).astype(np.uint8)).save(tmp_path / "g8.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    seg = Segmenter.from_pretrained(trained[3], device="cpu")
    want = seg.predict(tmp_path / "g8.png", "the red shape")[0].probs
    for source, kw in ((tmp_path / "g16.png", {}), (tmp_path / "g16.png", {"exif_transpose": True}),
                       (Image.open(tmp_path / "g16.png"), {})):
        np.testing.assert_array_equal(seg.predict(source, "the red shape", **kw)[0].probs, want)
    np.testing.assert_array_equal(as_rgb(tmp_path / "g16.png"), as_rgb(tmp_path / "g8.png"))
