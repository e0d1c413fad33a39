"""``dmn-predict`` as a function: (image, phrase) queries → mask and overlay PNGs, explanation
figures and ``predictions.jsonl``.

Per (image, phrase), with ``nn`` the phrase's index among that image's phrases::

    <out>/<image-stem>__<nn>_mask.png      binary mask (0/255) at the image's resolution
    <out>/<image-stem>__<nn>_overlay.png   the image with the mask and the phrase
    <out>/<image-stem>__<nn>_explain.png   with explain: one panel per word
    <out>/predictions.jsonl                {"image", "phrase", "mask": COCO RLE (ascii counts),
                                            "score", "unknown_words", "mask_png", "overlay_png"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from dmn_data.images import to_rgb
from dmn_data.tokens import tokenize
from dmn_data.transforms import encode_rle
from dmn_model.segmenter import Segmenter

from .render import explain_figure, overlay


@dataclass(frozen=True)
class PredictConfig:
    """What ``dmn-predict`` runs."""

    model: str  # model folder, run directory, checkpoint file or Hub repo id
    out: str
    images: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()  # asked of every image in ``images``
    queries: str | None = None  # a .jsonl file of {"image": ..., "phrase": ...}
    threshold: float | None = None  # default: the model's
    explain: bool = False
    exif_transpose: bool = False
    device: str | None = None
    dtype: str | None = None
    local_files_only: bool = False
    revision: str | None = None
    progress: bool = True


def read_queries(path: Path) -> list[tuple[str, str]]:
    """``(image, phrase)`` pairs from a JSONL file; relative image paths are taken from the
    file's folder.

    Raises:
        ValueError: unreadable file, or a line that is not ``{"image": str, "phrase": str}``.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--queries {path}: cannot read ({err})") from None
    pairs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image, phrase = row["image"], row["phrase"]
            if not isinstance(image, str) or not isinstance(phrase, str):
                raise TypeError("image and phrase must be strings")
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"--queries {path} line {n}: expected "
                             f'{{"image": ..., "phrase": ...}} ({type(err).__name__}: {err})'
                             ) from None
        image_path = Path(image)
        if not image_path.is_absolute():
            image_path = Path(path).parent / image_path
        pairs.append((str(image_path), phrase))
    if not pairs:
        raise ValueError(f"--queries {path} holds no queries")
    return pairs


def gather_queries(cfg: PredictConfig) -> dict[str, list[str]]:
    """image → its phrases, in first-seen order, checked before the model loads.

    Raises:
        ValueError: no queries, an empty phrase, or a missing image file.
    """
    pairs = [(img, p) for img in cfg.images for p in cfg.phrases]
    if cfg.images and not cfg.phrases:
        raise ValueError("give at least one --phrase for the images")
    if cfg.phrases and not cfg.images:
        raise ValueError("give at least one IMAGE for the --phrase(s)")
    if cfg.queries is not None:
        pairs += read_queries(Path(cfg.queries))
    if not pairs:
        raise ValueError("nothing to predict: pass IMAGE... --phrase TEXT, or --queries FILE")
    grouped: dict[str, list[str]] = {}
    for image, phrase in pairs:
        if not tokenize(phrase):
            raise ValueError(f"phrase {phrase!r} is empty: give at least one word")
        if not Path(image).is_file():
            raise ValueError(f"image {image} does not exist")
        grouped.setdefault(image, []).append(phrase)
    return grouped


def predict_files(cfg: PredictConfig, warn: Callable[[str], None] = print) -> list[dict]:
    """Run ``cfg``'s queries and write the outputs; returns the ``predictions.jsonl`` rows.

    Raises:
        CheckpointError: the model cannot be loaded. ValueError: bad queries or images.
    """
    grouped = gather_queries(cfg)
    seg = Segmenter.from_pretrained(cfg.model, device=cfg.device, dtype=cfg.dtype,
                                    local_files_only=cfg.local_files_only, revision=cfg.revision)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    stems: dict[str, str] = {}
    items = list(grouped.items())
    if cfg.progress and len(items) > 1:
        from tqdm import tqdm

        items = tqdm(items, desc="predict", unit="image", dynamic_ncols=True, leave=False)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as jsonl:
        for image, phrases in items:
            preds = seg.predict(image, phrases, explain=cfg.explain, threshold=cfg.threshold,
                                exif_transpose=cfg.exif_transpose)
            picture = _picture(image, cfg.exif_transpose)
            stem = _unique_stem(image, stems)
            for n, pred in enumerate(preds):
                if pred.unknown_words:
                    warn(f"warning: {pred.phrase!r}: unknown words {', '.join(pred.unknown_words)}"
                         " (read as <unk>; the model never saw them)")
                base = f"{stem}__{n:02d}"
                Image.fromarray(pred.mask.astype(np.uint8) * 255).save(out / f"{base}_mask.png")
                Image.fromarray(overlay(picture, [pred.mask], labels=[pred.phrase])).save(
                    out / f"{base}_overlay.png")
                if cfg.explain:
                    Image.fromarray(explain_figure(picture, pred)).save(
                        out / f"{base}_explain.png")
                row = {"image": image, "phrase": pred.phrase,
                       "mask": encode_rle(pred.mask.astype(np.uint8)),
                       "score": round(pred.score, 6), "unknown_words": pred.unknown_words,
                       "mask_png": f"{base}_mask.png", "overlay_png": f"{base}_overlay.png"}
                jsonl.write(json.dumps(row) + "\n")
                rows.append(row)
    return rows


def _picture(image: str, exif_transpose: bool) -> np.ndarray:
    from PIL import ImageOps

    with Image.open(image) as im:
        return np.asarray(to_rgb(ImageOps.exif_transpose(im) if exif_transpose else im))


def _unique_stem(image: str, seen: dict[str, str]) -> str:
    """The file's stem, made unique among the images of this run (a.jpg, b/a.jpg → a, a-2)."""
    stem, k = Path(image).stem, 1
    candidate = stem
    while candidate in seen and seen[candidate] != image:
        k += 1
        candidate = f"{stem}-{k}"
    seen[candidate] = image
    return candidate
