"""Per-example transforms of the shard stream: decode, resize, mirror, and collate into a batch.

Used by :mod:`dmn_data.stream`; every function here is pure (given its ``rng``) and runs inside the
DataLoader workers. Shapes: ``S`` = the target side, ``(h', w')`` = the resized image (longest
side ``S``), ``T`` = the longest sentence of a batch.
"""

from __future__ import annotations

import io
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info
from pycocotools import mask as cocomask

from .images import to_rgb
from .keys import PAD_ID
from .masks import decode_rle


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """``(h', w')`` with the longest side exactly ``size`` and the aspect ratio kept (≥ 1 px)."""
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def decode_resized(data: bytes, height: int, width: int, size: int) -> np.ndarray:
    """The image in ``data`` as ``(h', w', 3) uint8`` RGB, longest side ``size`` (bilinear).

    A JPEG is decoded in draft mode: libjpeg scales by 1/2, 1/4 or 1/8 while decoding (the largest
    factor that keeps the result at least ``h' × w'``, so only when shrinking by ≥ 2×), which skips
    most of the IDCT work. EXIF orientation is ignored on purpose: annotations use the stored grid.

    Raises:
        ValueError: the image is not ``width × height`` as the annotation says.
    """
    th, tw = resized_shape(height, width, size)
    with Image.open(io.BytesIO(data)) as im:
        if im.size != (width, height):
            raise ValueError(f"image is {im.size[0]}x{im.size[1]}, its annotation says {width}x{height}")
        scale = _draft_scale(height, width, th, tw)
        if im.format == "JPEG" and scale > 1:
            # PIL picks the factor from integer quotients: asking for (w // scale, h // scale) gets
            # exactly ``scale`` (asking for (w', h') misses it for odd sizes, e.g. 427 → 214).
            im.draft("RGB", (width // scale, height // scale))
        rgb = to_rgb(im)
    if rgb.size != (tw, th):
        rgb = rgb.resize((tw, th), Image.BILINEAR)
    return np.asarray(rgb)


def _draft_scale(height: int, width: int, th: int, tw: int) -> int:
    """The largest JPEG DCT scaling factor whose output (ceil(h / s), ceil(w / s)) still covers
    ``(th, tw)``."""
    return next(s for s in (8, 4, 2, 1) if s == 1 or (height // s >= 1 and width // s >= 1
                                                       and -(-height // s) >= th and -(-width // s) >= tw))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """``(h, w) uint8`` 0/1 mask → ``(h', w') uint8`` 0/1, nearest neighbour (stays binary)."""
    th, tw = resized_shape(mask.shape[0], mask.shape[1], size)
    if mask.flags.f_contiguous and not mask.flags.c_contiguous:
        # pycocotools decodes column-major: resizing the (C-contiguous) transpose saves a copy;
        # nearest neighbour maps each axis independently, so the result is the same
        return np.asarray(Image.fromarray(mask.T).resize((th, tw), Image.NEAREST)).T
    return np.asarray(Image.fromarray(mask).resize((tw, th), Image.NEAREST))


def encode_rle(mask: np.ndarray) -> dict:
    """``(h, w) uint8`` 0/1 → ``{"size": [h, w], "counts": str}`` (COCO compressed RLE)."""
    rle = cocomask.encode(np.asfortranarray(mask))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


_SIDES = ("left", "right")
_RAW_SIDE = re.compile(r"\b(left|right)", re.IGNORECASE)


class Mirror:
    """Horizontal flips that keep a sentence true: "left" and "right" words swap with the image.

    A token is a side word when it starts with "left" or "right" ("left", "rightmost",
    "lefthand"…); its mirror swaps that prefix. An example may be flipped only when each of its
    side words and the word's mirror are both in the vocabulary — otherwise the flipped sentence
    could not be written in token ids ("leftover", or a word that maps to ``<unk>``), and the
    example is left unflipped.
    """

    def __init__(self, vocab: list[str]):
        index = {tok: i for i, tok in enumerate(vocab)}
        self.swap = np.arange(len(vocab), dtype=np.int64)
        self.mirrors: dict[str, str] = {}
        for tok, i in index.items():
            other = _mirror_word(tok)
            if other is not None and other in index:
                self.swap[i] = index[other]
                self.mirrors[tok] = other

    def can_flip(self, tokens: list[str]) -> bool:
        return all(t in self.mirrors for t in tokens if _mirror_word(t) is not None)

    def ids(self, ids: list[int]) -> list[int]:
        return self.swap[np.asarray(ids, dtype=np.int64)].tolist()

    @staticmethod
    def raw(text: str) -> str:
        """The raw sentence with side words swapped (best effort: first-letter case kept)."""
        def repl(m: re.Match) -> str:
            word = m.group(1)
            other = "right" if word.lower() == "left" else "left"
            return other.capitalize() if word[0].isupper() else other
        return _RAW_SIDE.sub(repl, text)


def _mirror_word(tok: str) -> str | None:
    for side, other in (_SIDES, _SIDES[::-1]):
        if tok.startswith(side):
            return other + tok[len(side):]
    return None


@dataclass(frozen=True)
class Example:
    """One (image, ref, sentence) after decoding: what the collate function pads and stacks."""

    image: np.ndarray  # (h', w', 3) uint8
    mask: np.ndarray  # (h', w') uint8 0/1
    ids: list[int]  # token ids, ≥ 1 of them
    orig_size: tuple[int, int]  # (h, w)
    image_id: int
    ref_id: int
    sent_id: int
    sentence: str
    mask_rle: dict  # original resolution, {"size": [h, w], "counts": str}


def make_examples(item: dict, size: int, mirror: Mirror | None, rng: random.Random | None
                  ) -> Iterator[Example]:
    """Every sentence of one image (an item of ``stream._image_items``) as :class:`Example` objects.

    The image is decoded and resized **once** and shared by all its examples (they hold the same
    array; ``collate`` copies it into the batch); each ref's mask is decoded and resized once.
    With ``mirror`` and ``rng`` given, each example is flipped with probability 1/2 (when its
    sentence allows it): image (a view), mask and ``mask_rle`` mirrored, side words swapped. The
    flip happens before padding, so the valid region stays top-left.

    Raises:
        ValueError: an image or mask that does not decode to the annotated size (the message
            names the ref).
    """
    h, w = item["height"], item["width"]
    image = decode_resized(item["data"], h, w, size)
    flipped_image = image[:, ::-1]
    for ref in item["refs"]:
        full = decode_rle(ref["mask"])
        if full.shape != (h, w):
            raise ValueError(f"ref {ref['ref_id']}: mask is {full.shape[1]}x{full.shape[0]}, image is {w}x{h}")
        small = flipped = None  # resized lazily, once per ref and side
        for sent in ref["sentences"]:
            ids, raw = sent["ids"], sent["raw"]
            common = dict(orig_size=(h, w), image_id=item["image_id"], ref_id=ref["ref_id"],
                          sent_id=sent["sent_id"])
            if mirror is not None and rng is not None and rng.random() < 0.5 and mirror.can_flip(sent["tokens"]):
                if flipped is None:
                    mirrored = np.asfortranarray(full[:, ::-1])
                    flipped = (resize_mask(mirrored, size), encode_rle(mirrored))
                yield Example(image=flipped_image, mask=flipped[0], ids=mirror.ids(ids),
                              sentence=mirror.raw(raw), mask_rle=flipped[1], **common)
            else:
                if small is None:
                    small = resize_mask(full, size)
                yield Example(image=image, mask=small, ids=list(ids), sentence=raw,
                              mask_rle=ref["mask"], **common)


def _arena(parts: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
    """Zero tensors of the given shapes and dtypes, all in **one** storage.

    In a DataLoader worker the storage is shared memory, as torch's own ``default_collate`` does,
    so sending a batch to the main process passes one handle instead of copying each tensor into
    shared memory first. Few storages per batch rather than one per tensor matters: each shared
    storage costs a file, a mapping and messages to torch's shm manager (~0.2–1 ms, BENCHMARKS.md,
    "Training stream"). Fresh shared memory is zero-filled (a new file extended by ``ftruncate``),
    so only the in-process storage is zeroed explicitly.
    """
    offsets, total = {}, 0
    for name, (shape, dtype) in parts.items():
        total = -(-total // 8) * 8  # every part starts 8-byte aligned (int64 views)
        offsets[name] = total
        total += math.prod(shape) * dtype.itemsize
    if get_worker_info() is None:
        storage = torch.zeros(total, dtype=torch.uint8).untyped_storage()
    else:
        storage = torch.UntypedStorage._new_shared(total)
    return {name: torch.empty(0, dtype=dtype).set_(storage, offsets[name] // dtype.itemsize, shape)
            for name, (shape, dtype) in parts.items()}


def collate(examples: list[Example], size: int) -> dict:
    """Pad each example to ``size × size`` (bottom/right, zeros) and stack; see the batch
    contract in :mod:`dmn_data.stream`."""
    b = len(examples)
    longest = max(len(e.ids) for e in examples)
    # Two storages: the maps, and the small ids/sizes, so that keeping a batch's ids does not keep
    # its maps alive. The image is stored channels-last (B, S, S, 3) and handed over as its
    # (B, 3, S, S) view: each example's rows are copied as they are, without de-interleaving the
    # channels, and the network takes channels_last anyway (dmn_train.train).
    maps = _arena({"image": ((b, size, size, 3), torch.uint8), "mask": ((b, size, size), torch.uint8),
                   "valid": ((b, size, size), torch.bool)})
    small = _arena({"tokens": ((b, longest), torch.int64), "lengths": ((b,), torch.int64),
                    "orig_size": ((b, 2), torch.int64), "resized_size": ((b, 2), torch.int64),
                    "image_id": ((b,), torch.int64), "ref_id": ((b,), torch.int64),
                    "sent_id": ((b,), torch.int64)})
    image, mask, valid = (maps[k].numpy() for k in ("image", "mask", "valid"))
    tokens = small["tokens"].numpy()
    if PAD_ID:
        tokens.fill(PAD_ID)
    for i, e in enumerate(examples):
        h, w = e.mask.shape
        image[i, :h, :w] = e.image
        mask[i, :h, :w] = e.mask
        valid[i, :h, :w] = True
        tokens[i, :len(e.ids)] = e.ids
    small["lengths"][:] = torch.tensor([len(e.ids) for e in examples])
    small["orig_size"][:] = torch.tensor([e.orig_size for e in examples])
    small["resized_size"][:] = torch.tensor([e.mask.shape for e in examples])
    for key in ("image_id", "ref_id", "sent_id"):
        small[key][:] = torch.tensor([getattr(e, key) for e in examples])
    return {
        "image": maps["image"].permute(0, 3, 1, 2),
        "valid": maps["valid"],
        "mask": maps["mask"],
        **small,
        "sentence": [e.sentence for e in examples],
        "mask_rle": [e.mask_rle for e in examples],
    }
