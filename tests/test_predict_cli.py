"""dmn-export and dmn-predict through Typer's CliRunner: files written, RLE = mask PNG, queries,
explanation figures, render helpers, and one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dmn_data.masks import decode_rle
from dmn_serve.cli_export import app as export_app
from dmn_serve.cli_predict import app as predict_app
from dmn_serve.render import PALETTE, explain_figure, heatmap, overlay
from dmn_model import Segmenter

from trained_model import train_tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    _, run = train_tiny(root)
    result = runner.invoke(export_app, [str(run), "--out", str(root / "model"), "--license", "mit"])
    assert result.exit_code == 0, result.output
    images = []
    for i, (h, w) in enumerate([(50, 90), (80, 40)]):
        path = root / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
                        ).save(path)
        images.append(path)
    return root, root / "model", images


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_export_writes_a_complete_folder(exported):
    _, model, _ = exported
    assert sorted(p.name for p in model.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "vocab.json"]
    assert "license: mit" in (model / "README.md").read_text()


def test_predict_writes_masks_overlays_and_jsonl(exported, tmp_path):
    _, model, images = exported
    result = runner.invoke(predict_app, [
        "--model", str(model), *map(str, images), "--phrase", "the red shape",
        "--phrase", "the zebra", "--out", str(tmp_path), "--no-progress", "--explain"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [(r["image"], r["phrase"]) for r in rows] == [
        (str(i), p) for i in images for p in ("the red shape", "the zebra")]
    assert result.stderr.count("unknown words zebra") == 2
    seg = Segmenter.from_pretrained(model, device="cpu")
    for row in rows:
        mask_png = np.asarray(Image.open(tmp_path / row["mask_png"])) > 0
        np.testing.assert_array_equal(decode_rle(row["mask"]).astype(bool), mask_png)
        expected = seg.predict(row["image"], row["phrase"])[0]
        np.testing.assert_array_equal(mask_png, expected.mask)
        assert row["score"] == pytest.approx(expected.score, abs=1e-6)
        assert row["unknown_words"] == expected.unknown_words
        size = Image.open(row["image"]).size
        assert Image.open(tmp_path / row["overlay_png"]).size == size
    assert (tmp_path / "img1__01_explain.png").is_file()


def test_predict_from_queries(exported, tmp_path):
    root, model, images = exported
    queries = root / "queries.jsonl"
    queries.write_text("\n".join(json.dumps({"image": p.name, "phrase": ph}) for p, ph in
                                 [(images[0], "blue"), (images[1], "the green shape")]) + "\n")
    result = runner.invoke(predict_app, ["--model", str(model), "--queries", str(queries),
                                         "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*_mask.png")) == [
        "img0__00_mask.png", "img1__00_mask.png"]


def test_predict_errors(exported, tmp_path):
    root, model, images = exported
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    base = ["--out", str(tmp_path / "o"), "--no-progress"]
    _one_line_error(runner.invoke(predict_app, ["--model", str(model), str(bad), "-p", "x", *base]),
                    "cannot read image")
    _one_line_error(runner.invoke(predict_app, ["--model", str(model), str(images[0]), "-p", " ",
                                                *base]), "empty")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_bytes((model / "config.json").read_bytes())
    _one_line_error(runner.invoke(predict_app, ["--model", str(partial), str(images[0]), "-p", "x",
                                                *base]), "incomplete", "model.safetensors")
    _one_line_error(runner.invoke(predict_app, ["--model", str(tmp_path / "nope"),
                                                str(images[0]), "-p", "x", *base]),
                    "does not exist")
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"img": "a.png"}\n')
    _one_line_error(runner.invoke(predict_app, ["--model", str(model), "--queries", str(queries),
                                                *base]), "line 1")
    _one_line_error(runner.invoke(export_app, [str(tmp_path / "nope"), "--out", str(tmp_path)]),
                    "does not exist")


def test_render_helpers(exported):
    _, model, images = exported
    image = np.asarray(Image.open(images[0]).convert("RGB"))
    a = np.zeros(image.shape[:2], bool)
    a[5:20, 5:30] = True
    b = np.zeros_like(a)
    b[25:45, 40:80] = True
    out = overlay(image, [a, b], labels=["one", "two"])
    assert out.shape == image.shape and out.dtype == np.uint8
    assert tuple(out[19, 29]) == PALETTE[0] and tuple(out[35, 40]) == PALETTE[1]  # outlines
    np.testing.assert_array_equal(out[48, 2], image[48, 2])  # untouched outside masks/labels
    hm = heatmap(np.linspace(0, 1, 20).reshape(4, 5))
    assert hm.shape == (4, 5, 3) and not np.array_equal(hm[0, 0], hm[-1, -1])
    pred = Segmenter.from_pretrained(model, device="cpu").predict(image, "the red shape",
                                                                  explain=True)[0]
    fig = explain_figure(image, pred)
    assert fig.ndim == 3 and fig.dtype == np.uint8 and fig.shape[1] > 4 * fig.shape[0] // 2
    assert len(PALETTE) == len(set(PALETTE)) >= 8
