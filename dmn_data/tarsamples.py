"""A shard's tar → samples, with the rules that both the training stream and ``dmn-data verify``
apply (one function, so that verify accepts exactly what training accepts).

Rules: every member is a regular file (no links, directories, FIFOs, devices); every member name
is ``<key>.<ext>``; a sample's members are adjacent and each extension appears once; a key appears
in one sample only; a sample is one image (``.jpg`` or ``.png``) and its ``.json``, nothing else.
Extensions are compared in lower case, as webdataset does.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import BinaryIO

import webdataset as wds

from .errors import DataError
from .keys import IMAGE_EXTS, META_EXT


def _members(stream: BinaryIO, url: str) -> Iterator[dict]:
    """``{"fname", "data", "__url__"}`` per member, read in one pass (stream mode)."""
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if not member.isreg():
                raise DataError(f"shard {url}: member {member.name!r} is not a regular file; rebuild it with dmn-data build")
            if wds.tariterators.base_plus_ext(member.name)[0] is None:
                # webdataset would skip it silently
                raise DataError(f"shard {url}: member {member.name!r} is not named <key>.<ext>; rebuild it with dmn-data build")
            yield {"fname": member.name, "data": tar.extractfile(member).read(), "__url__": url}
            tar.members = []  # stream mode: do not keep every header in memory


def iter_samples(stream: BinaryIO, url: str) -> Iterator[dict]:
    """``{"__key__", "__url__", "<image ext>": bytes, "json": bytes}`` per sample of the tar read
    from ``stream``. Raises DataError (naming ``url``) for a member or sample that breaks a rule."""
    keys: set[str] = set()
    try:
        for sample in wds.tariterators.group_by_keys(_members(stream, url)):
            key = sample["__key__"]
            if key in keys:
                raise DataError(f"shard {url}: sample {key} appears twice; rebuild it with dmn-data build")
            keys.add(key)
            exts = sorted(k for k in sample if not k.startswith("__"))
            if len([e for e in exts if e in IMAGE_EXTS]) != 1 or META_EXT not in exts or len(exts) != 2:
                raise DataError(f"shard {url}: sample {key} has members {exts}, expected one of "
                                f".{'/.'.join(IMAGE_EXTS)} and .{META_EXT}; rebuild it with dmn-data build")
            yield sample
    except ValueError as err:  # group_by_keys: a member name twice in one sample
        raise DataError(f"shard {url}: duplicate member ({str(err.args[0]).split(':')[0]}); rebuild it with dmn-data build") from None
