"""Pictures of predictions: mask overlays with phrase labels, heatmaps, per-word panels.

All functions take and return ``(H, W, 3) uint8`` RGB arrays (images as PIL, path or array).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from dmn_data.images import to_rgb

#: distinct colours for up to ten masks on one image (then they repeat)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128))


def as_rgb(image: Any) -> np.ndarray:
    """A path, PIL image or array → ``(H, W, 3) uint8`` (stored pixel grid, no EXIF rotation)."""
    if isinstance(image, np.ndarray):
        return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image))
    with Image.open(image) as im:
        return np.asarray(to_rgb(im))


def overlay(image: Any, masks: Sequence[np.ndarray] | np.ndarray,
            colors: Sequence[tuple[int, int, int]] | None = None,
            labels: Sequence[str] | None = None, alpha: float = 0.5) -> np.ndarray:
    """Blend each ``(H, W)`` bool mask onto the image in its own colour, outline it, and write
    its label (at the top-left, in the same colour) → ``(H, W, 3) uint8``."""
    rgb = as_rgb(image).astype(np.float32)
    masks = [masks] if isinstance(masks, np.ndarray) and masks.ndim == 2 else list(masks)
    colors = list(colors) if colors is not None else [PALETTE[i % len(PALETTE)]
                                                      for i in range(len(masks))]
    for mask, color in zip(masks, colors):
        m = np.asarray(mask, dtype=bool)
        if m.shape != rgb.shape[:2]:
            raise ValueError(f"mask is {m.shape}, image is {rgb.shape[:2]}")
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(color, dtype=np.float32)
        edge = m & ~_erode(m)
        rgb[edge] = color
    out = Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8))
    if labels:
        draw = ImageDraw.Draw(out)
        font = ImageFont.load_default()
        y = 2
        for label, color in zip(labels, colors):
            box = draw.textbbox((2, y), label, font=font)
            draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(0, 0, 0))
            draw.text((2, y), label, fill=tuple(color), font=font)
            y = box[3] + 3
    return np.asarray(out)


def heatmap(probs: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] → ``(H, W, 3) uint8`` (viridis)."""
    values = np.clip(np.asarray(probs, dtype=np.float32), 0.0, 1.0)
    return (colormaps["viridis"](values)[..., :3] * 255).round().astype(np.uint8)


def explain_figure(image: Any, prediction: Any, panel: int = 160) -> np.ndarray:
    """One panel per word (the image dimmed under that word's dynamic-filter response), after
    the image with the mask, each titled → ``uint8`` RGB. ``prediction`` needs ``explain``."""
    if prediction.explain is None:
        raise ValueError("the prediction has no explanation: predict with explain=True")
    rgb = as_rgb(image)
    panels = [(f'"{prediction.phrase}"', overlay(rgb, [prediction.mask]))]
    for word, response in prediction.explain:
        blend = 0.35 * rgb.astype(np.float32) + 0.65 * heatmap(response).astype(np.float32)
        panels.append((word, blend.round().astype(np.uint8)))
    h, w = rgb.shape[:2]
    scale = panel / max(h, w)
    ph, pw = max(1, round(h * scale)), max(1, round(w * scale))
    title = 14
    sheet = Image.new("RGB", (len(panels) * (pw + 4) + 4, ph + title + 6), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (name, picture) in enumerate(panels):
        x = 4 + i * (pw + 4)
        sheet.paste(Image.fromarray(picture).resize((pw, ph), Image.BILINEAR), (x, title + 2))
        text = name if len(name) <= 24 else name[:23] + "…"
        draw.text((x, 1), text, fill=(0, 0, 0), font=font)
    return np.asarray(sheet)


def _erode(mask: np.ndarray) -> np.ndarray:
    """3×3 binary erosion (pixels outside the image count as background)."""
    p = np.pad(mask, 1)
    out = np.ones_like(mask)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out &= p[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
    return out
