"""Where a built dataset lives, and how its files are opened: a local folder, an ``http(s)://``
URL, any fsspec URL (``s3://``, ``gs://``, ``hf://``, ``memory://``, ``file://`` …), or a
``pipe:`` command.

    Location.parse("shards/gref")                                   # a folder (or its manifest.json)
    Location.parse("https://example.org/shards/gref")               # requests, streamed
    Location.parse("s3://bucket/shards/gref")                       # fsspec (pip install 'dmn[s3]')
    Location.parse("pipe:aws s3 cp s3://bucket/shards/gref/{} -")   # {} = the file's name

Every file of a dataset (``manifest.json``, ``vocab.json``, ``<split>/<split>-NNNNNN.tar``) is
named relative to the location; names come from the manifest, an untrusted file, so they are
checked to stay below it (no absolute paths, no ``..``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .errors import DataError
from .keys import MANIFEST

#: fsspec protocols whose implementation lives in another package: what to install
_FSSPEC_EXTRAS = {"s3": "s3fs (pip install 'dmn[s3]')", "s3a": "s3fs (pip install 'dmn[s3]')",
                  "gs": "gcsfs (pip install 'dmn[gcs]')", "gcs": "gcsfs (pip install 'dmn[gcs]')",
                  "az": "adlfs (pip install adlfs)", "abfs": "adlfs (pip install adlfs)",
                  "hf": "huggingface_hub (pip install huggingface_hub)"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: seconds to wait for an HTTP server to answer (connect, then between bytes)
HTTP_TIMEOUT = (30, 120)


def _relative(name: object) -> str:
    """``name`` when it is a relative POSIX path without ``..``; else a DataError."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise DataError(f"file name {name!r} in the manifest is not a relative path; rebuild with dmn-data build")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts or any(p.startswith("~") for p in parts[:1]):
        raise DataError(f"file name {name!r} in the manifest leaves the dataset folder; rebuild with dmn-data build")
    return name


@dataclass(frozen=True)
class Location:
    """A dataset's folder. ``kind``: ``local``, ``http``, ``fsspec`` or ``pipe``; ``base``: the
    folder (local path, URL without a trailing ``/``, or the pipe command with ``{}``)."""

    kind: str
    base: str

    @classmethod
    def parse(cls, shards: str | os.PathLike) -> Location:
        """``shards`` as the CLIs take it; a trailing ``/manifest.json`` is allowed."""
        text = str(shards)
        if text.startswith("pipe:"):
            command = text[len("pipe:"):].strip()
            if "{}" not in command:
                raise DataError(f"shards {text}: a pipe: location needs {{}} where the file name goes, "
                                "e.g. 'pipe:aws s3 cp s3://bucket/shards/gref/{} -'")
            return cls("pipe", command)
        match = _SCHEME.match(text)
        if match is None:
            path = Path(text)
            if path.name == MANIFEST and path.is_file():
                path = path.parent
            return cls("local", str(path))
        scheme = match.group(1).lower()
        base = text.rstrip("/")
        if base.endswith("/" + MANIFEST):
            base = base[: -len(MANIFEST) - 1]
        if scheme in ("http", "https"):
            return cls("http", base)
        _fsspec_protocol(scheme, text)  # a missing package is an error now, not at the first shard
        return cls("fsspec", base)

    @property
    def remote(self) -> bool:
        return self.kind != "local"

    @property
    def name(self) -> str:
        """The folder's last name (``gref`` for ``s3://b/shards/gref``), for run names."""
        if self.kind == "local":
            return Path(self.base).resolve().name
        if self.kind == "pipe":
            words = [w for w in shlex.split(self.base) if "{}" in w]
            tail = words[0].split("{}")[0] if words else ""
            return PurePosixPath(tail.rstrip("/")).name or "shards"
        return PurePosixPath(self.base.split("://", 1)[1]).name or "shards"

    def canonical(self) -> str:
        """What a run records: an absolute path for a local folder (so ``dmn-eval`` finds it from
        any working directory), else the location as given."""
        if self.kind == "local":
            return str(Path(self.base).resolve())
        return f"pipe:{self.base}" if self.kind == "pipe" else self.base

    def __str__(self) -> str:
        return f"pipe:{self.base}" if self.kind == "pipe" else self.base

    def url(self, name: str) -> str:
        """The address of the file ``name`` (relative, checked) of this dataset."""
        name = _relative(name)
        if self.kind == "local":
            return str(Path(self.base) / name)
        if self.kind == "pipe":
            return "pipe:" + self.base.replace("{}", shlex.quote(name))
        return f"{self.base}/{name}"

    def open(self, name: str) -> BinaryIO:
        """A binary stream of the file ``name``; the caller closes it. Errors: DataError (one line)."""
        return open_url(self.url(name), self.kind)

    def read_bytes(self, name: str) -> bytes:
        stream = self.open(name)
        try:
            return stream.read()
        except DataError:
            raise
        except Exception as err:  # a dropped connection, a failed command
            raise DataError(f"{self.url(name)}: {_reason(err)}") from None
        finally:
            _close(stream, self.url(name))

    def exists_locally(self, name: str) -> bool:
        return self.kind != "local" or Path(self.url(name)).is_file()


def _fsspec_protocol(scheme: str, text: str):
    try:
        import fsspec
    except ImportError:
        raise DataError(f"shards {text}: {scheme}:// locations need fsspec (pip install fsspec)") from None
    try:
        return fsspec.get_filesystem_class(scheme)
    except ImportError:
        package = _FSSPEC_EXTRAS.get(scheme, f"the fsspec package for {scheme}://")
        raise DataError(f"shards {text}: {scheme}:// needs {package}") from None
    except ValueError:
        raise DataError(f"shards {text}: unknown protocol {scheme}:// (local folders, http(s)://, "
                        "pipe: and the fsspec protocols are supported)") from None


class _HttpStream:
    """A ``requests`` response body as a file (``read(n)``), closed with the response."""

    def __init__(self, url: str):
        import requests

        try:
            self.response = requests.get(url, stream=True, timeout=HTTP_TIMEOUT)
        except requests.RequestException as err:
            raise DataError(f"{url}: {_reason(err)}") from None
        if self.response.status_code != 200:
            code = self.response.status_code
            self.response.close()
            raise DataError(f"{url}: HTTP {code} {self.response.reason or ''}".rstrip())
        self.response.raw.decode_content = True  # a gzip Content-Encoding is undone, like a browser

    def read(self, n: int = -1) -> bytes:
        return self.response.raw.read(None if n is None or n < 0 else n)

    def close(self) -> None:
        self.response.close()


def open_url(url: str, kind: str | None = None) -> BinaryIO:
    """Open ``url`` (a path, ``http(s)://``, an fsspec URL or ``pipe:CMD``) for reading."""
    kind = kind or Location.parse(url).kind
    try:
        if kind == "local":
            return open(url, "rb")  # noqa: SIM115 - the caller closes it
        if kind == "http":
            return _HttpStream(url)  # type: ignore[return-value]
        if kind == "pipe":
            import webdataset as wds

            return wds.gopen(url, "rb")
        import fsspec

        return fsspec.open(url, "rb").open()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{url}: not found") from None
    except Exception as err:
        raise DataError(f"{url}: {_reason(err)}") from None


def _reason(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"{type(err).__name__}: {text[:200]}"


def _close(stream: BinaryIO, url: str) -> None:
    """Close, turning a failed ``pipe:`` command's exit status into one line."""
    try:
        stream.close()
    except Exception as err:
        raise DataError(f"{url}: {_reason(err)}") from None


def cache_path(cache_dir: str | os.PathLike, location: Location, name: str, sha256: str | None) -> Path:
    """Where a remote file is kept in ``cache_dir``: one folder per dataset location (a hash of
    it), the file under its own name; the manifest's sha256, when known, is part of the name, so a
    rebuilt dataset never reads a stale copy."""
    key = hashlib.sha256(str(location).encode()).hexdigest()[:16]
    stem = f"{name}.{sha256[:16]}" if sha256 else name
    return Path(cache_dir) / f"{location.name}-{key}" / _relative(stem)
