"""Image pixels as 8-bit RGB, the same way at build time, in the training stream and in ``show``.

PIL's ``convert("RGB")`` is right for every 8-bit mode a JPEG or PNG opens as (1, L, P, RGB, RGBA,
LA, CMYK, YCbCr; 16-bit RGB(A) and LA PNGs are already reduced to 8 bits by PIL, high byte), but
it clips a 16-bit greyscale PNG (mode ``I;16``) at 255, which turns almost every pixel white.
Those are reduced to their high byte like PIL's other 16-bit modes. Alpha is dropped (the stored
colour is kept), as for COCO's few RGBA files.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# float and other modes hold no agreed pixel scale: refused instead of guessed
_REFUSED = ("F",)


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as an ``RGB`` image (8 bits per channel).

    Raises:
        ValueError: a mode whose pixels have no defined 8-bit RGB meaning (``F``) or that PIL
            cannot convert.
    """
    if im.mode in _SIXTEEN_BIT:
        grey = np.asarray(im).astype(np.int64).clip(0, 65535) >> 8
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    if im.mode in _REFUSED:
        raise ValueError(f"image mode {im.mode} has no defined 8-bit RGB meaning")
    return im.convert("RGB")
