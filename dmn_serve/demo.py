"""The web demo (``dmn-demo``): a Gradio page around :class:`dmn_model.Segmenter`.

One image and one or more phrases (one per line) in; per phrase, in its own colour: the overlay,
the masks, the probability heat map, what each word's dynamic filters responded to, the words the
model does not know, and how long it took. Bad input (no image, no phrase, a file that is not an
image, an image over ``max_pixels``) is a message in the page; the server keeps serving.

Gradio is an optional extra (``pip install 'dmn[demo]'``): it is imported by :func:`build_demo`
only, so the rest of ``dmn_serve`` works without it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from dmn_data.images import to_rgb
from dmn_data.toy import generate_toy

from .render import PALETTE, explain_figure, heatmap, overlay

if TYPE_CHECKING:
    import gradio as gr

    from dmn_model import Segmenter

#: the largest image the demo segments, in pixels (a 50 MP photo decodes to 150 MB of RGB)
MAX_PIXELS = 50_000_000
#: the largest upload the server accepts
MAX_FILE_SIZE = "50mb"
MAX_PHRASES = 8


class DemoInputError(ValueError):
    """Input the page reports back to the user as a message."""


@dataclass
class DemoResult:
    """What one submission shows: ``(H, W, 3) uint8`` pictures and binary mask files."""

    overlay: np.ndarray
    masks: np.ndarray
    heatmaps: list[tuple[np.ndarray, str]]
    explain: list[tuple[np.ndarray, str]]
    mask_files: list[str]
    summary: str


def parse_phrases(text: str | None) -> list[str]:
    """One phrase per non-blank line; refuses none and more than :data:`MAX_PHRASES`."""
    phrases = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not phrases:
        raise DemoInputError("type a phrase (one per line), e.g. “the red circle”")
    if len(phrases) > MAX_PHRASES:
        raise DemoInputError(f"{len(phrases)} phrases; give at most {MAX_PHRASES}, one per line")
    return phrases


def load_image(path: str | Path | None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The uploaded file as an RGB image, EXIF orientation applied (as the browser shows it)."""
    if path is None:
        raise DemoInputError("upload an image first (or pick an example below)")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise DemoInputError(f"the image is {w}×{h} = {w * h / 1e6:.1f} MP; "
                                     f"this demo takes at most {max_pixels / 1e6:.1f} MP")
            from PIL import ImageOps

            return to_rgb(ImageOps.exif_transpose(im))
    except DemoInputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DemoInputError(f"{Path(path).name} is not an image this demo can read "
                             f"({type(exc).__name__})") from None
    except OSError as exc:
        raise DemoInputError(f"{Path(path).name} could not be decoded: {exc}") from None


def run_demo(seg: Segmenter, image_path: str | Path | None, text: str | None, out_dir: Path,
             max_pixels: int = MAX_PIXELS) -> DemoResult:
    """Segment every phrase of ``text`` in the image at ``image_path``; binary mask PNGs go to
    ``out_dir``. Raises :class:`DemoInputError` for input the user must fix."""
    phrases = parse_phrases(text)
    image = load_image(image_path, max_pixels)
    rgb = np.asarray(image)
    start = time.perf_counter()
    preds = seg.predict(rgb, phrases, explain=True)
    elapsed = time.perf_counter() - start
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(preds))]
    over = overlay(rgb, [p.mask for p in preds], colours, [p.phrase for p in preds])
    masks = np.zeros_like(rgb)
    for p, colour in zip(preds, colours):
        masks[p.mask] = colour
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, p in enumerate(preds):
        f = out_dir / f"mask_{i + 1}.png"
        Image.fromarray(p.mask.astype(np.uint8) * 255).save(f)
        files.append(str(f))
    rows = ["| | phrase | mean probability in mask | unknown words |", "|---|---|---|---|"]
    for p, colour in zip(preds, colours):
        swatch = f'<span style="color:rgb{tuple(colour)}">■</span>'
        unknown = ", ".join(f"**{w}**" for w in p.unknown_words) or "–"
        rows.append(f"| {swatch} | {p.phrase} | {p.score:.2f} | {unknown} |")
    note = ""
    if any(p.unknown_words for p in preds):
        note = ("\n\nWords in **bold** are not in the model's vocabulary: the model reads them "
                "as one unknown token.")
    summary = (f"{len(preds)} phrase(s) on a {rgb.shape[1]}×{rgb.shape[0]} image in "
               f"{elapsed * 1000:.0f} ms ({seg.device}).\n\n" + "\n".join(rows) + note)
    return DemoResult(
        overlay=over,
        masks=masks,
        heatmaps=[(heatmap(p.probs), p.phrase) for p in preds],
        explain=[(explain_figure(rgb, p), p.phrase) for p in preds],
        mask_files=files,
        summary=summary,
    )


def toy_examples(folder: Path, count: int = 4) -> list[list[str]]:
    """``count`` held-out toy images (the toy test split's first ones) written to ``folder``, each
    with its objects' phrases: ``[[image path, phrases], ...]`` for ``gr.Examples``."""
    folder.mkdir(parents=True, exist_ok=True)
    source = generate_toy(train=0, val=0, test=count)
    examples = []
    for item in source.splits["test"]:
        path = folder / item.file_name
        if not path.is_file():
            path.write_bytes(item.data)
        phrases = "\n".join(s.raw for ref in item.refs for s in ref.sentences)
        examples.append([str(path), phrases])
    return examples


def build_demo(seg: Segmenter, *, model_name: str = "a DMN", max_pixels: int = MAX_PIXELS,
               work_dir: Path | None = None) -> gr.Blocks:
    """The Gradio app; call ``.launch()`` on it (see :func:`serve`). Results (the binary mask
    PNGs offered for download) go under ``work_dir`` (default: a new temporary folder)."""
    import gradio as gr

    work = Path(work_dir or tempfile.mkdtemp(prefix="dmn-demo-"))
    examples = toy_examples(work / "examples")
    counter = iter(range(10**9))

    def submit(image_path, text):
        try:
            r = run_demo(seg, image_path, text, work / "results" / f"{next(counter):06d}", max_pixels)
        except DemoInputError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return r.overlay, r.masks, r.heatmaps, r.explain, r.mask_files, r.summary

    with gr.Blocks(title="DMN referring segmentation", analytics_enabled=False) as demo:
        gr.Markdown("# DMN: segment what a phrase names\n"
                    f"Model: `{model_name}` on {seg.device}. Upload an image (or pick an "
                    "example), write one phrase per line, press **Segment**.")
        with gr.Row():
            with gr.Column():
                image = _image_input(gr)
                text = gr.Textbox(label="Phrases (one per line)", lines=3, elem_id="phrases",
                                  placeholder="the red circle")
                button = gr.Button("Segment", variant="primary", elem_id="submit")
                gr.Examples(examples, inputs=[image, text], label="Toy examples")
            with gr.Column():
                over = gr.Image(label="Overlay", type="numpy", format="png", elem_id="overlay",
                               interactive=False, height=360)
                summary = gr.Markdown(elem_id="summary")
        with gr.Row():
            masks = gr.Image(label="Masks", type="numpy", format="png", elem_id="masks",
                             interactive=False, height=300)
            heat = gr.Gallery(label="Probability", elem_id="heatmaps", columns=4, format="png",
                              object_fit="contain", height=300)
        explain = gr.Gallery(label="What each word's dynamic filters responded to",
                             elem_id="explain", columns=1, format="png",
                             object_fit="contain", height=360)
        files = gr.File(label="Binary masks (PNG, image resolution)", file_count="multiple",
                        elem_id="mask_files")
        button.click(submit, [image, text], [over, masks, heat, explain, files, summary],
                     api_name="segment")
        text.submit(submit, [image, text], [over, masks, heat, explain, files, summary],
                    api_name=False)
    return demo


def _image_input(gr):
    """An upload box that hands over the file's path, so that a file PIL cannot open becomes our
    one-line message (:func:`load_image`) instead of Gradio's generic error.

    The instance's ``preprocess`` is replaced rather than subclassing ``gr.Image``: Gradio writes a
    ``.pyi`` stub next to the source of every component subclass, i.e. into the installed package.
    """
    image = gr.Image(label="Image", type="filepath", sources=["upload"], elem_id="image",
                     height=360)
    default = image.preprocess

    def preprocess(payload):
        if payload is None or payload.path is None or (payload.url or "").startswith("data:"):
            return default(payload)
        return payload.path

    image.preprocess = preprocess
    return image


def serve(seg: Segmenter, host: str = "127.0.0.1", port: int = 7860, *,
          model_name: str = "a DMN", max_pixels: int = MAX_PIXELS, block: bool = True,
          work_dir: Path | None = None):
    """Build and launch the demo, one request at a time (the model is not re-entrant on one
    device); returns the app (with ``block=False``) for the caller to ``.close()``."""
    demo = build_demo(seg, model_name=model_name, max_pixels=max_pixels, work_dir=work_dir)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True,
                max_file_size=MAX_FILE_SIZE, footer_links=["api"])
    return demo
