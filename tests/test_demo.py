"""dmn-demo: the page's logic, its API through gradio_client on a loopback server, and the page
itself in a real headless Chromium. The server is started inside the tests and stopped after.

The README's screenshot comes from the browser test:
``DMN_DEMO_SCREENSHOT=1 DMN_DEMO_MODEL=runs/toy pytest tests/test_demo.py -k chromium``
(``DMN_DEMO_MODEL``: serve that model instead of the 4-step one the tests train)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmn_model import Segmenter
from dmn_serve.demo import DemoInputError, load_image, parse_phrases, run_demo, toy_examples

from trained_model import train_tiny

gradio = pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")

ROOT = Path(__file__).resolve().parents[1]
#: the README's screenshot; the browser test rewrites it when DMN_DEMO_SCREENSHOT=1
SCREENSHOT = ROOT / "docs" / "images" / "demo.png"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    if os.environ.get("DMN_DEMO_MODEL"):
        return Segmenter.from_pretrained(os.environ["DMN_DEMO_MODEL"], device="cpu"), root
    _, run = train_tiny(root)
    folder = Segmenter.from_pretrained(run, device="cpu").save_pretrained(root / "model")
    return Segmenter.from_pretrained(folder, device="cpu"), root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model):
    from dmn_serve.demo import serve

    seg, root = model
    # A small pixel limit so that "a huge image" is cheap to make here.
    demo = serve(seg, "127.0.0.1", _free_port(), model_name="toy (test)", block=False,
                 max_pixels=200 * 200, work_dir=root / "work")
    try:
        yield demo, seg, root
    finally:
        demo.close()


# ---- the page's logic, without a server ---------------------------------------------------------

def test_parse_phrases():
    assert parse_phrases("the red circle\n\n  left square \n") == ["the red circle", "left square"]
    for text in (None, "", " \n\t\n"):
        with pytest.raises(DemoInputError, match="type a phrase"):
            parse_phrases(text)
    with pytest.raises(DemoInputError, match="at most 8"):
        parse_phrases("\n".join(f"p{i}" for i in range(9)))


def test_load_image_refuses_with_one_line(tmp_path):
    with pytest.raises(DemoInputError, match="upload an image"):
        load_image(None)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(DemoInputError, match="notes.png is not an image"):
        load_image(text)
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(DemoInputError, match="cut.png"):
        load_image(truncated)
    big = tmp_path / "big.png"
    Image.new("L", (300, 200)).save(big)
    with pytest.raises(DemoInputError, match=r"300×200 = 0\.1 MP.*at most 0\.0 MP"):
        load_image(big, max_pixels=10_000)
    grey = load_image(big)
    assert grey.mode == "RGB" and grey.size == (300, 200)


def test_run_demo_matches_segmenter(model, tmp_path):
    seg, _ = model
    image_path, phrases = toy_examples(tmp_path / "examples", count=1)[0]
    text = phrases + "\nthe zebra unicorn"
    result = run_demo(seg, image_path, text, tmp_path / "out")
    lines = parse_phrases(text)
    expected = seg.predict(np.asarray(Image.open(image_path).convert("RGB")), lines)
    assert len(result.mask_files) == len(lines) == len(result.heatmaps) == len(result.explain)
    for file, pred in zip(result.mask_files, expected):
        mask = np.asarray(Image.open(file)) > 0
        assert mask.shape == pred.mask.shape
        assert np.array_equal(mask, pred.mask)
    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    assert result.overlay.shape == rgb.shape and not np.array_equal(result.overlay, rgb)
    # Unknown words are flagged in the summary, known ones are not.
    assert "**zebra**" in result.summary and "**unicorn**" in result.summary
    assert "**the**" not in result.summary
    assert " ms (cpu)" in result.summary


# ---- the API, through gradio_client on a loopback server ----------------------------------------

def test_api_mask_equals_segmenter_and_bad_input_keeps_serving(server, tmp_path):
    from gradio_client import Client, handle_file

    demo, seg, root = server
    client = Client(demo.local_url, verbose=False, download_files=str(tmp_path / "dl"))
    image_path, phrases = toy_examples(root / "work" / "examples", count=1)[0]
    lines = parse_phrases(phrases)
    out = client.predict(handle_file(image_path), phrases, api_name="/segment")
    overlay_file, _masks, heatmaps, explain, mask_files, summary = out
    expected = seg.predict(np.asarray(Image.open(image_path).convert("RGB")), lines)
    assert len(mask_files) == len(expected) == len(heatmaps) == len(explain)
    for file, pred in zip(mask_files, expected):
        assert np.array_equal(np.asarray(Image.open(file)) > 0, pred.mask)
    shown = np.asarray(Image.open(overlay_file).convert("RGB"))
    source = np.asarray(Image.open(image_path).convert("RGB"))
    assert shown.shape == source.shape and not np.array_equal(shown, source)
    assert f"{len(lines)} phrase(s)" in summary

    not_image = tmp_path / "holiday.jpg"
    not_image.write_bytes(b"%PDF-1.4 definitely not a JPEG")
    huge = tmp_path / "huge.png"
    Image.new("RGB", (400, 300)).save(huge)
    over_limit = tmp_path / "scan.png"  # over the 50 MB upload limit: Gradio refuses it
    with open(over_limit, "wb") as f:
        f.truncate(51 * 1024 * 1024)
    cases = [(None, phrases, "upload an image"),
             (handle_file(str(over_limit)), phrases, "(?i)exceeds|too large|size"),
             (handle_file(image_path), "  \n ", "type a phrase"),
             (handle_file(str(not_image)), phrases, "holiday.jpg is not an image"),
             (handle_file(str(huge)), phrases, "400×300")]
    for image, text, message in cases:
        with pytest.raises(Exception, match=message) as info:
            client.predict(image, text, api_name="/segment")
        assert "Traceback" not in str(info.value)
    # Gradio writes .pyi stubs next to component subclasses: none may land in our package.
    assert not list((ROOT / "dmn_serve").glob("*.pyi"))
    # Still serving, same answer.
    again = client.predict(handle_file(image_path), phrases, api_name="/segment")
    assert np.array_equal(np.asarray(Image.open(again[4][0])) > 0, expected[0].mask)


# ---- the page, in a real headless Chromium ------------------------------------------------------

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    # CI installs Debian's chromium and sets DMN_REQUIRE_BROWSER=1: there, a missing browser fails.
    required = os.environ.get("DMN_REQUIRE_BROWSER") == "1"
    if required:
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    executable = _chromium()
    if executable is None:
        if required:
            pytest.fail("DMN_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


def test_page_in_chromium(server, browser, tmp_path):
    demo, _, root = server
    image_path, phrases = toy_examples(root / "work" / "examples", count=1)[0]
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.set_default_timeout(60_000)
    page.goto(demo.local_url)

    # Bad input first: no image → a message in the page, no stack trace.
    page.locator("#phrases textarea").fill(phrases)
    page.locator("#submit").click()
    error = page.get_by_text("upload an image first")
    error.first.wait_for(state="visible")
    assert "Traceback" not in page.content()
    page.goto(demo.local_url)  # a fresh page: the screenshot shows no stale message

    page.locator("#image input[type=file]").set_input_files(image_path)
    page.locator("#image img").first.wait_for(state="visible")
    page.locator("#phrases textarea").fill(phrases)
    page.locator("#submit").click()
    shown = page.locator("#overlay img").first
    shown.wait_for(state="visible")
    page.get_by_text(" ms (cpu)").first.wait_for(state="visible")
    src = shown.get_attribute("src")
    response = page.request.get(src if src.startswith("http") else demo.local_url.rstrip("/") + src)
    assert response.ok
    got = tmp_path / "overlay.png"
    got.write_bytes(response.body())
    out = np.asarray(Image.open(got).convert("RGB"))
    source = np.asarray(Image.open(image_path).convert("RGB"))
    assert out.shape == source.shape and not np.array_equal(out, source)

    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] == 1280
    if os.environ.get("DMN_DEMO_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
    page.close()
