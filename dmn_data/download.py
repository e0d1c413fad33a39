"""``dmn-data download``: fetch a dataset's raw archives and lay them out as ``dmn-data build`` expects.

For each archive the dataset needs (sources.py; shared ones such as COCO train2014 once):
skip it when its target folder is already there → otherwise try ``--mirror`` then every known
location in turn: pooch fetches into ``<data-root>/downloads/`` with :class:`ResumingDownloader`
(continues a ``.part`` file left by an interrupted run) and checks the checksum; the size is checked
too → check every member's name and the total uncompressed size from the archive's headers
(:func:`extract_checked`) → extract into a temporary folder inside ``downloads/`` → rename the archive's folder into place
(one rename: a target folder is either complete or absent) → write ``downloads/<name>.json``
(the marker: where it came from, its size and SHA-256) → delete the archive unless asked to keep it.
When every location fails, the error names the file, each location and its error, and the manual step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pooch
import requests
from tqdm import tqdm

from . import sources
from .errors import DataError
from .sources import PLACE_BY_HAND, Archive

DOWNLOADS = "downloads"
CHUNK = 1 << 16  # an interrupted read loses at most this much of what it received
#: The most an archive may expand (uncompressed / compressed size). JPEG archives barely compress
#: and the REFER annotation zips expand about 10×; a zip bomb expands 1000× and more.
MAX_EXPANSION = 100.0


@dataclass(frozen=True)
class DownloadConfig:
    datasets: tuple[str, ...]  # keys of sources.DATASET_ARCHIVES
    data_root: Path = Path("data")
    mirror: str | None = None  # base URL tried first for every file (file name appended)
    retries: int = 2  # extra attempts per location; an interrupted transfer resumes where it stopped
    keep_archives: bool = False  # keep downloads/<archive> after extraction
    timeout: float = 60.0  # seconds to connect, and between two received chunks
    max_expansion: float = MAX_EXPANSION  # refuse an archive that unpacks to more than this × its size


class ResumingDownloader:
    """A pooch downloader that continues ``part`` (an earlier, interrupted transfer) with an HTTP
    ``Range: bytes=N-`` request and appends to it; starts over when the server ignores the range.
    pooch then checks the checksum of the finished file."""

    def __init__(self, part: Path, size: int | None, *, timeout: float, progress: bool):
        self.part, self.size, self.timeout, self.progress = part, size, timeout, progress

    def __call__(self, url: str, output_file: str, pooch_instance: object) -> None:
        have = self.part.stat().st_size if self.part.exists() else 0
        if self.size is not None and have > self.size:
            self.part.unlink()
            have = 0
        if not (self.size is not None and have == self.size):
            self._fetch(url, have)
        got = self.part.stat().st_size
        if self.size is not None and got != self.size:
            if got < self.size:  # the server closed early: keep the bytes, the next attempt resumes
                raise requests.ConnectionError(f"transfer ended after {got} of {self.size} bytes")
            self.part.unlink()
            raise ValueError(f"size mismatch: got {got} bytes, expected {self.size}")
        try:  # a hard link keeps the .part should the checksum pass (minutes for COCO) be interrupted
            os.unlink(output_file)
            os.link(self.part, output_file)
        except OSError:
            os.replace(self.part, output_file)

    def _fetch(self, url: str, have: int) -> None:
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as r:
            if have and r.status_code == 416:  # the partial file does not fit this file: start over
                self.part.unlink()
                raise requests.ConnectionError(f"{url}: server refused to resume at byte {have}")
            r.raise_for_status()
            if r.status_code != 206:
                have = 0
            length = int(r.headers.get("Content-Length", 0))
            total = have + length if length else self.size
            with open(self.part, "ab" if have else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=self.part.name.removesuffix(".part"), disable=not self.progress, dynamic_ncols=True,
            ) as bar:
                for chunk in r.iter_content(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))


def locations(archive: Archive, mirror: str | None) -> list[str]:
    """Where ``archive`` is looked for, in order: the mirror first, then the table's locations."""
    urls = list(archive.urls)
    if mirror:
        urls.insert(0, mirror.rstrip("/") + "/" + urllib.parse.quote(archive.name))
    return urls


def download(
    cfg: DownloadConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    table: Mapping[str, Archive] | None = None,
) -> list[str]:
    """Fetch and extract every archive of ``cfg.datasets`` under ``cfg.data_root``; return the
    ``dmn-data build`` commands to run next. Raises :class:`DataError` when a file cannot be had."""
    table = sources.ARCHIVES if table is None else table
    unknown = [d for d in cfg.datasets if d not in sources.DATASET_ARCHIVES]
    if unknown or not cfg.datasets:
        raise DataError(f"--dataset {', '.join(unknown) or '(none)'}: choose from {', '.join(sources.DATASET_ARCHIVES)}")
    if cfg.retries < 0:
        raise DataError(f"--retries must be >= 0, got {cfg.retries}")
    if not cfg.max_expansion >= 1:
        raise DataError(f"--max-expansion must be >= 1, got {cfg.max_expansion}")
    if Path(cfg.data_root).exists() and not Path(cfg.data_root).is_dir():
        raise DataError(f"--data-root {cfg.data_root} is not a directory")
    # Absolute from here on: a relative folder handed to a library that joins it onto another
    # folder (pooch did, for its extract dir) lands somewhere else and is never cleaned up.
    root = Path(cfg.data_root).absolute()
    _remove_misplaced_extracts(Path(cfg.data_root), log)
    names = list(dict.fromkeys(n for d in cfg.datasets for n in sources.DATASET_ARCHIVES[d]))
    for name in names:
        fetch_archive(table[name], root, cfg, progress=progress, log=log)
    return [f"dmn-data build --dataset {d} --data-root {cfg.data_root}" for d in cfg.datasets]


def fetch_archive(archive: Archive, root: Path, cfg: DownloadConfig, *, progress: bool, log: Callable[[str], None]) -> None:
    target = root / archive.target
    downloads = root / DOWNLOADS
    marker = downloads / f"{archive.name}.json"
    if target.exists():
        how = "downloaded earlier" if marker.is_file() else "not downloaded by dmn-data; left as it is"
        log(f"{archive.name}: {target} is already there ({how})")
        return
    downloads.mkdir(parents=True, exist_ok=True)
    path = downloads / archive.name
    if path.exists() and archive.size is not None and path.stat().st_size != archive.size:
        log(f"{archive.name}: {path} has {path.stat().st_size} bytes, expected {archive.size}; fetching it again")
        path.unlink()
    url = _retrieve(archive, path, cfg, progress=progress, log=log)
    _extract(archive, path, root, max_expansion=cfg.max_expansion, log=log)
    sha256 = archive.known_hash.split(":")[-1] if archive.known_hash else _sha256(path)  # pooch checked it
    marker.write_text(json.dumps({"file": archive.name, "url": url or str(path), "size": path.stat().st_size,
                                  "sha256": sha256, "target": archive.target}, indent=1) + "\n")
    if not cfg.keep_archives:
        path.unlink()
    log(f"{archive.name}: extracted to {target}")


def _retrieve(archive: Archive, path: Path, cfg: DownloadConfig, *, progress: bool, log: Callable[[str], None]) -> str | None:
    """Download ``archive`` to ``path`` (or keep the copy already there when it checks out); return
    the URL used, None for a kept copy."""
    if path.exists():
        if archive.known_hash is None or _sha256(path) == archive.known_hash.split(":")[-1]:
            log(f"{archive.name}: using {path}")
            return None
        log(f"{archive.name}: {path} does not match its checksum; fetching it again")
        path.unlink()
    part = path.with_name(path.name + ".part")
    _check_space(archive, path.parent, part)
    downloader = ResumingDownloader(part, archive.size, timeout=cfg.timeout, progress=progress)
    failures: dict[str, str] = {}  # location -> its last error
    for url in locations(archive, cfg.mirror):
        for attempt in range(cfg.retries + 1):
            before = part.stat().st_size if part.exists() else 0
            try:
                log(f"{archive.name}: downloading {url}")
                pooch.retrieve(url, archive.known_hash, fname=path.name, path=path.parent, downloader=downloader)
                part.unlink(missing_ok=True)
                return url
            except requests.HTTPError as err:
                failures[url] = _short(err)
                if err.response is not None and 400 <= err.response.status_code < 500:
                    break  # the file is not there: next location
            except ValueError as err:  # checksum or size mismatch: the next attempt starts from zero
                part.unlink(missing_ok=True)
                failures[url] = _short(err)
            except (requests.RequestException, OSError) as err:
                failures[url] = _short(err)
            if attempt < cfg.retries:
                grew = part.exists() and part.stat().st_size > before
                log(f"{archive.name}: {url}: {failures[url]}; retrying" + (" where it stopped" if grew else ""))
                if not grew:
                    time.sleep(min(2 ** attempt, 10))
    kept = f" The partial download {part} is kept and resumed next time." if part.exists() else ""
    raise DataError(
        f"could not download {archive.name}; tried {'; '.join(f'{u} ({e})' for u, e in failures.items())}.{kept} "
        f"By hand: {archive.manual}; {PLACE_BY_HAND.format(archive=path)}"
    )


def _extract(archive: Archive, path: Path, root: Path, *, max_expansion: float, log: Callable[[str], None]) -> None:
    """Extract into a temporary folder inside ``downloads/`` (every member checked first, see
    :func:`extract_checked`), then rename the member folder into place."""
    downloads = path.parent
    for stale in downloads.glob(f".extract-{archive.name}-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{archive.name}-", dir=downloads))
    try:
        log(f"{archive.name}: extracting")
        try:
            extract_checked(path, tmp, max_expansion=max_expansion)
        except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, NotImplementedError) as err:  # a damaged archive
            path.unlink(missing_ok=True)  # must be fetched again, not reused
            raise DataError(f"{archive.name}: cannot extract {path} ({_short(err)}); it was deleted, run the same command again") from None
        except OSError as err:  # e.g. a full disk: the archive is fine and kept
            raise DataError(f"{archive.name}: cannot extract {path} into {downloads} ({_short(err)})") from None
        member = tmp / archive.member
        if not member.is_dir():
            member = tmp  # the archive holds the folder's contents rather than the folder
        if not any(member.iterdir()):
            raise DataError(f"{archive.name}: the archive is empty")
        target = root / archive.target
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(member, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _member_problem(name: str) -> str | None:
    """Why an archive member's name may not be extracted (None: it may)."""
    if not name or "\x00" in name:
        return "has an invalid name"
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "leaves the extraction folder ('..')"
    return None


def extract_checked(path: Path, dest: Path, *, max_expansion: float = MAX_EXPANSION) -> int:
    """Extract the zip or tar ``path`` into ``dest``; return the bytes written.

    Every member is checked from the archive's headers before anything is written: no absolute
    names, no ``..``, no links (symbolic or hard) and no devices or FIFOs, and the total
    uncompressed size must stay within ``max_expansion`` × the archive's size and within the free
    space of ``dest``. zipfile and tarfile never produce more bytes for a member than its header
    states, so the header sum bounds what lands on disk (a zip bomb is refused unopened).

    Raises:
        DataError: a member or the total size is refused (the message names the member).
        zipfile.BadZipFile, tarfile.TarError: not a readable archive.
    """
    path, dest = Path(path), Path(dest).absolute()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            for info in infos:
                mode = info.external_attr >> 16
                problem = _member_problem(info.filename)
                if problem is None and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                    problem = "is a link or a special file"
                if problem:
                    raise DataError(f"{path}: member {info.filename!r} {problem}; refusing to extract it")
            total = sum(i.file_size for i in infos)
            _check_total(path, dest, total, max_expansion)
            for info in infos:
                z.extract(info, dest)
        return total
    try:
        tar = tarfile.open(path)
    except tarfile.ReadError:
        raise zipfile.BadZipFile("neither a zip nor a tar archive") from None
    with tar:
        members = tar.getmembers()
        for m in members:
            problem = _member_problem(m.name)
            if problem is None and not (m.isfile() or m.isdir()):
                problem = "is a link or a special file"
            if problem:
                raise DataError(f"{path}: member {m.name!r} {problem}; refusing to extract it")
        total = sum(m.size for m in members if m.isfile())
        _check_total(path, dest, total, max_expansion)
        tar.extractall(dest, members=members, filter="data")  # the data filter checks names again
    return total


def _check_total(path: Path, dest: Path, total: int, max_expansion: float) -> None:
    size = path.stat().st_size
    if total > max_expansion * max(size, 1):
        raise DataError(f"{path}: unpacks to {total / 1e6:.1f} MB, more than {max_expansion:g} × its "
                        f"{size / 1e6:.1f} MB (a zip bomb?); refusing to extract it (--max-expansion raises the limit)")
    free = shutil.disk_usage(dest).free
    if total > free:
        raise DataError(f"{path}: unpacks to {total / 1e9:.1f} GB, only {free / 1e9:.1f} GB are free in {dest}; "
                        "free some space or choose another --data-root")


def _remove_misplaced_extracts(data_root: Path, log: Callable[[str], None]) -> None:
    """Earlier versions extracted a relative ``--data-root`` (the default ``data``) into
    ``<root>/downloads/<root>/downloads/.extract-*`` and never removed it: a full copy of the
    archive per attempt (13.5 GB for COCO train2014). Remove those folders."""
    if data_root.is_absolute():
        return
    nested = data_root / DOWNLOADS / data_root / DOWNLOADS
    stale = sorted(nested.glob(".extract-*")) if nested.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    if stale:
        log(f"removed {len(stale)} leftover extraction folder(s) of an earlier version from {nested}")
        for folder in (nested, *nested.parents):  # the now empty chain up to <root>/downloads
            if folder == data_root / DOWNLOADS:
                break
            try:
                folder.rmdir()
            except OSError:
                break


def _check_space(archive: Archive, folder: Path, part: Path) -> None:
    """Fail before a long download that cannot fit: the rest of the archive plus its extracted copy."""
    if archive.size is None:
        return
    have = part.stat().st_size if part.exists() else 0
    need = archive.size - have + archive.size
    free = shutil.disk_usage(folder).free
    if free < need:
        raise DataError(f"{archive.name}: needs at least {need / 1e9:.1f} GB free in {folder}, "
                        f"{free / 1e9:.1f} GB are; free some space or choose another --data-root")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _short(err: BaseException) -> str:
    """One line for an exception. requests wraps the cause (refused, name not resolved, timed out)
    in a MaxRetryError; report the cause."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    text = " ".join(str(reason or err).split())
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>: ", "", text)
    if isinstance(err, ValueError) and "does not match the known hash" in text:  # pooch's long message
        return "checksum mismatch: " + text[text.index("expected"):].split(". ")[0]
    return text if len(text) <= 200 else text[:197] + "..."
