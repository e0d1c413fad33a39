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
from .keys import IMAGE_EXTS, MANIFEST, META_EXT, VOCAB
from .location import Location
from .manifest import check_manifest, read_manifest
from .masks import check_rle_counts, decode_rle


def iter_tar_samples(path: Path) -> Iterator[tuple[str, str, bytes, dict]]:
    """``(key, image_ext, image_bytes, meta)`` for each sample of one shard, in file order.
    Raises ``DataError`` for a tar that is unreadable or whose members do not pair up."""
    try:
        with tarfile.open(path, "r") as tar:
            pending: dict[str, bytes] = {}
            key = None
            for member in tar:
                k, _, ext = member.name.partition(".")
                if key is not None and k != key:
                    yield _pair(path, key, pending)
                    pending = {}
                # the same rules as the training stream: regular files only, each name once
                if not member.isfile():
                    raise DataError(f"{path}: member {member.name!r} is not a regular file; rebuild the shard with dmn-data build")
                if ext in pending and k == key:
                    raise DataError(f"{path}: duplicate member {member.name!r} (training refuses this shard); rebuild it with dmn-data build")
                key = k
                pending[ext] = tar.extractfile(member).read()
            if key is not None:
                yield _pair(path, key, pending)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: unreadable shard ({err})") from None


def _pair(path: Path, key: str, members: dict[str, bytes]) -> tuple[str, str, bytes, dict]:
    exts = [e for e in IMAGE_EXTS if e in members]
    if len(exts) != 1 or META_EXT not in members or len(members) != 2:
        raise DataError(f"{path}: sample {key} has members {sorted(members)}, expected one image and .{META_EXT}")
    try:
        meta = json.loads(members[META_EXT])
    except ValueError as err:
        raise DataError(f"{path}: sample {key}: bad JSON ({err})") from None
    return key, exts[0], members[exts[0]], meta


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
    if hashlib.sha256(vocab_raw).hexdigest() != manifest["vocab"]["sha256"]:
        problems.append(f"{VOCAB}: sha256 differs from the manifest")
    shards = [(split, sh) for split, s in manifest["splits"].items() for sh in s["shards"]]
    for split, sh in tqdm(shards, desc="verify", unit="shard", disable=not progress):
        try:
            url = location.url(sh["name"])
        except DataError as err:
            problems.append(str(err))
            continue
        if scratch is None:
            path = Path(url)
            if not path.is_file():
                problems.append(f"{sh['name']}: missing")
                continue
            data = path.read_bytes()
        else:
            try:
                data = location.read_bytes(sh["name"])
            except DataError as err:
                problems.append(f"{sh['name']}: {err}")
                continue
            path = scratch / Path(sh["name"]).name
            path.write_bytes(data)
        if len(data) != sh["bytes"] or hashlib.sha256(data).hexdigest() != sh["sha256"]:
            problems.append(f"{sh['name']}: size or sha256 differs from the manifest")
        try:
            counts = _check_samples(path, split, len(vocab), problems)
        except DataError as err:
            problems.append(str(err))
            continue
        if counts != (sh["images"], sh["refs"], sh["sentences"]):
            problems.append(f"{sh['name']}: holds {counts} images/refs/sentences, manifest says "
                            f"{(sh['images'], sh['refs'], sh['sentences'])}")
        if scratch is not None:
            path.unlink(missing_ok=True)
    return problems


def _check_samples(path: Path, split: str, vocab_size: int, problems: list[str]) -> tuple[int, int, int]:
    images = refs = sentences = 0
    for key, _, img, meta in iter_tar_samples(path):
        where = f"{path.name}: sample {key}"
        try:
            with Image.open(io.BytesIO(img)) as im:
                im.load()
                if im.size != (meta["width"], meta["height"]):
                    problems.append(f"{where}: image is {im.size}, JSON says {(meta['width'], meta['height'])}")
        except (OSError, SyntaxError, ValueError) as err:
            problems.append(f"{where}: image does not decode ({err})")
        if str(meta.get("image_id")) != key or meta.get("split") != split:
            problems.append(f"{where}: JSON image_id/split do not match the key/split")
        images += 1
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
                if not s["ids"] or len(s["ids"]) != len(s["tokens"]) or max(s["ids"]) >= vocab_size or min(s["ids"]) < 1:
                    problems.append(f"{where}: sentence {s['sent_id']} has bad token ids")
    return images, refs, sentences


def show_grid(dataset_dir: Path, split: str, n: int, out: Path, *, seed: int = 0, tile: int = 256) -> int:
    """Write a PNG grid of ``n`` (image, ref, sentence) examples of ``split``: each image with the
    ref's mask overlaid in red and the sentence below. Returns the number of tiles drawn."""
    manifest = read_manifest(dataset_dir)
    if split not in manifest["splits"]:
        raise DataError(f"no split {split!r} in {dataset_dir}; choose from {', '.join(manifest['splits'])}")
    if n < 1:
        raise DataError(f"-n must be >= 1, got {n}")
    examples = []
    for sh in manifest["splits"][split]["shards"]:
        for _, _, img, meta in iter_tar_samples(Path(dataset_dir) / sh["name"]):
            examples.extend((img, ref, s["raw"]) for ref in meta["refs"] for s in ref["sentences"])
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
        im = Image.open(io.BytesIO(img)).convert("RGB")
        mask = decode_rle(ref["mask"]).astype(bool)
        arr = np.asarray(im).copy()
        arr[mask] = (0.45 * arr[mask] + 0.55 * np.array([255, 30, 30])).astype(np.uint8)
        im = Image.fromarray(arr)
        im.thumbnail((tile, tile))
        x, y = (i % cols) * tile, (i // cols) * (tile + text_h)
        sheet.paste(im, (x + (tile - im.width) // 2, y + (tile - im.height) // 2))
        wrapped = textwrap.fill(sentence, width=max(10, int(tile / (font.size * 0.55))))
        ImageDraw.Draw(sheet).multiline_text((x + 4, y + tile + 2), wrapped, fill="black", font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return len(picked)
