"""``dmn-data info / verify / show``: read a finished build without the training stream."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from .errors import DataError, SkipItem
from .images import to_rgb
from .keys import IMAGE_EXTS, MANIFEST, META_EXT, VOCAB
from .location import Location
from .manifest import check_manifest, read_manifest
from .masks import check_rle_counts, decode_rle
from .safety import inside
from .tarsamples import iter_samples
from .tokens import valid_token_ids


def iter_tar_samples(path: Path) -> Iterator[tuple[str, str, bytes, dict]]:
    """``(key, image_ext, image_bytes, meta)`` for each sample of one shard, in file order, under
    the training stream's rules (:mod:`dmn_data.tarsamples`). Raises ``DataError`` for a tar that
    is unreadable or breaks a rule."""
    try:
        with open(path, "rb") as f:
            for sample in iter_samples(f, str(path)):
                key = sample["__key__"]
                ext = next(e for e in IMAGE_EXTS if e in sample)
                try:
                    meta = json.loads(sample[META_EXT])
                except (ValueError, RecursionError) as err:
                    raise DataError(f"{path}: sample {key}: bad JSON ({type(err).__name__}: {str(err)[:150]})") from None
                yield key, ext, sample[ext], meta
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: unreadable shard ({err})") from None


def info_rows(dataset_dir: Path) -> tuple[dict, list[list[str]]]:
    """The manifest and one table row per split: split, shards, images, refs, sentences, size."""
    manifest = read_manifest(dataset_dir)
    rows = [[name, str(len(s["shards"])), str(s["images"]), str(s["refs"]), str(s["sentences"]), _size(s["bytes"])]
            for name, s in manifest["splits"].items()]
    t = manifest["totals"]
    rows.append(["total", str(sum(len(s["shards"]) for s in manifest["splits"].values())), str(t["images"]),
                 str(t["refs"]), str(t["sentences"]), _size(t["bytes"])])
    return manifest, rows


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def verify(dataset_dir: Path | str, *, progress: bool = True) -> list[str]:
    """Check every shard against the manifest (size, sha256, counts) and decode every sample
    (image, masks, token ids). Returns the problems found, one line each (empty: all good).

    ``dataset_dir`` may be remote (an http(s)/fsspec URL or ``pipe:``, see
    :mod:`dmn_data.location`): each shard is then fetched into a temporary folder, checked and
    deleted, one at a time."""
    location = Location.parse(dataset_dir)
    if location.remote:
        with tempfile.TemporaryDirectory(prefix="dmn-verify-") as tmp:
            return _verify(location, Path(tmp), progress)
    return _verify(location, None, progress)


def _verify(location: Location, scratch: Path | None, progress: bool) -> list[str]:
    if scratch is None:
        manifest = read_manifest(Path(location.base))
    else:
        manifest = check_manifest(location.read_bytes(MANIFEST), location.url(MANIFEST))
    problems: list[str] = []
    try:
        vocab_raw = location.read_bytes(VOCAB)
        vocab = json.loads(vocab_raw)
    except (DataError, ValueError) as err:
        return [f"{VOCAB}: unreadable ({err})"]
    try:
        if hashlib.sha256(vocab_raw).hexdigest() != manifest["vocab"]["sha256"]:
            problems.append(f"{VOCAB}: sha256 differs from the manifest")
        shards = [(split, sh) for split, s in manifest["splits"].items() for sh in s["shards"]]
    except (KeyError, TypeError, AttributeError) as err:
        return [*problems, f"{MANIFEST}: malformed ({type(err).__name__}: {err}); rebuild with dmn-data build"]
    for split, sh in tqdm(shards, desc="verify", unit="shard", disable=not progress):
        # the same rule as the stream: a shard name must stay inside the dataset folder
        name = sh.get("name") if isinstance(sh, dict) else None
        try:
            location.url(name)
        except DataError:
            problems.append(f"{MANIFEST}: shard entry {str(sh)[:80]} has no valid name inside {location.base}")
            continue
        try:
            expected = (int(sh["images"]), int(sh["refs"]), int(sh["sentences"]))
            size, sha256 = int(sh["bytes"]), str(sh["sha256"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{MANIFEST}: shard entry {name!r} lacks images/refs/sentences/bytes/sha256")
            continue
        if scratch is None:
            path = inside(location.base, name)  # symlinks followed: still inside
            if path is None:
                problems.append(f"{MANIFEST}: shard entry {name!r} has no valid name inside {location.base}")
                continue
            if not path.is_file():
                problems.append(f"{name}: missing")
                continue
            data = path.read_bytes()
        else:
            try:
                data = location.read_bytes(name)
            except DataError as err:
                problems.append(f"{name}: {err}")
                continue
            path = scratch / Path(name).name
            path.write_bytes(data)
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
            problems.append(f"{sh['name']}: size or sha256 differs from the manifest")
        try:
            counts = _check_samples(path, split, len(vocab), problems)
        except DataError as err:
            problems.append(str(err))
            continue
        if counts != expected:
            problems.append(f"{sh['name']}: holds {counts} images/refs/sentences, manifest says {expected}")
        if scratch is not None:
            path.unlink(missing_ok=True)
    return problems


def _check_samples(path: Path, split: str, vocab_size: int, problems: list[str]) -> tuple[int, int, int]:
    images = refs = sentences = 0
    for key, _, img, meta in iter_tar_samples(path):
        where = f"{path.name}: sample {key}"
        try:
            counted = _check_sample(where, img, meta, split, key, vocab_size, problems)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            # the stream refuses such a sample too ("bad annotation")
            raise DataError(f"{where}: bad annotation ({type(err).__name__}: {str(err)[:150]})") from None
        images += 1
        refs += counted[0]
        sentences += counted[1]
    return images, refs, sentences


def _check_sample(where: str, img: bytes, meta: dict, split: str, key: str, vocab_size: int,
                  problems: list[str]) -> tuple[int, int]:
    """Check one sample (problems appended); return its (refs, sentences)."""
    refs = sentences = 0
    try:
        with Image.open(io.BytesIO(img)) as im:
            im.load()
            to_rgb(im)  # as the training stream converts it
            if im.size != (meta["width"], meta["height"]):
                problems.append(f"{where}: image is {im.size}, JSON says {(meta['width'], meta['height'])}")
    except (OSError, SyntaxError, ValueError) as err:
        problems.append(f"{where}: image does not decode ({err})")
    if str(meta.get("image_id")) != key or meta.get("split") != split:
        problems.append(f"{where}: JSON image_id/split do not match the key/split")
    for ref in meta["refs"]:
        refs += 1
        try:
            check_rle_counts(ref["mask"]["counts"], meta["height"], meta["width"])
            m = decode_rle(ref["mask"])
            if m.shape != (meta["height"], meta["width"]) or not m.any():
                problems.append(f"{where}: ref {ref['ref_id']} mask is {m.shape} with {int(m.sum())} pixels")
        except (KeyError, TypeError, ValueError, SkipItem) as err:
            problems.append(f"{where}: ref {ref.get('ref_id')} mask does not decode ({err})")
        for s in ref["sentences"]:
            sentences += 1
            if not valid_token_ids(s["ids"], vocab_size) or len(s["ids"]) != len(s["tokens"]):
                problems.append(f"{where}: sentence {s['sent_id']} has bad token ids")
    return refs, sentences


def show_grid(dataset_dir: Path, split: str, n: int, out: Path, *, seed: int = 0, tile: int = 256) -> int:
    """Write a PNG grid of ``n`` (image, ref, sentence) examples of ``split``: each image with the
    ref's mask overlaid in red and the sentence below. Returns the number of tiles drawn."""
    manifest = read_manifest(dataset_dir)
    if split not in manifest["splits"]:
        raise DataError(f"no split {split!r} in {dataset_dir}; choose from {', '.join(manifest['splits'])}")
    if n < 1:
        raise DataError(f"-n must be >= 1, got {n}")
    out = Path(out)
    if out.is_dir():
        raise DataError(f"-o {out} is a folder; pass a file name such as {out / 'grid.png'}")
    if out.suffix.lower() not in Image.registered_extensions():
        raise DataError(f"-o {out}: PIL cannot write {out.suffix or 'a file without extension'}; use .png or .jpg")
    examples = []
    for sh in manifest["splits"][split]["shards"]:
        path = inside(dataset_dir, sh.get("name") if isinstance(sh, dict) else None)
        if path is None:
            raise DataError(f"{Path(dataset_dir) / MANIFEST}: shard entry {str(sh)[:80]} has no valid name inside {dataset_dir}")
        for key, _, img, meta in iter_tar_samples(path):
            try:
                examples.extend((img, ref, str(s["raw"])) for ref in meta["refs"] for s in ref["sentences"])
            except (KeyError, TypeError) as err:
                raise DataError(f"{path}: sample {key}: bad annotation ({type(err).__name__}: {err}); "
                                "check the build with dmn-data verify") from None
        if len(examples) >= 4 * n:
            break
    if not examples:
        raise DataError(f"split {split!r} of {dataset_dir} holds no example")
    rng = np.random.default_rng(seed)
    picked = [examples[i] for i in sorted(rng.choice(len(examples), size=min(n, len(examples)), replace=False))]
    font = ImageFont.load_default(size=max(10, tile // 20))
    text_h = tile // 4
    cols = int(np.ceil(np.sqrt(len(picked))))
    rows = int(np.ceil(len(picked) / cols))
    sheet = Image.new("RGB", (cols * tile, rows * (tile + text_h)), "white")
    for i, (img, ref, sentence) in enumerate(picked):
        try:
            with Image.open(io.BytesIO(img)) as opened:
                im = to_rgb(opened)
            mask = decode_rle(ref["mask"]).astype(bool)
            arr = np.asarray(im).copy()
            arr[mask] = (0.45 * arr[mask] + 0.55 * np.array([255, 30, 30])).astype(np.uint8)
        except (OSError, SyntaxError, ValueError, KeyError, TypeError, IndexError) as err:
            raise DataError(f"{dataset_dir}: ref {ref.get('ref_id') if isinstance(ref, dict) else ref!r} of {split} cannot be "
                            f"drawn ({type(err).__name__}: {str(err)[:100]}); check the build with dmn-data verify") from None
        im = Image.fromarray(arr)
        im.thumbnail((tile, tile))
        x, y = (i % cols) * tile, (i // cols) * (tile + text_h)
        sheet.paste(im, (x + (tile - im.width) // 2, y + (tile - im.height) // 2))
        wrapped = textwrap.fill(sentence, width=max(10, int(tile / (font.size * 0.55))))
        ImageDraw.Draw(sheet).multiline_text((x + 4, y + tile + 2), wrapped, fill="black", font=font)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(out)
    except OSError as err:  # unwritable folder, full disk
        raise DataError(f"-o {out}: cannot write it ({err.strerror or err})") from None
    return len(picked)
