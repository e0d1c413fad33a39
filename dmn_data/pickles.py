"""Loading ``refs(*).p``: Python-2 pickles downloaded from the internet, so untrusted input."""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError


class _PlainUnpickler(pickle.Unpickler):
    """Builds only what pickle encodes natively (dict, list, tuple, str, bytes, int, float, bool,
    None). Any class or function reference is refused, so no code can run while loading."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refers to {module}.{name}; only plain containers and scalars are allowed"
        )


@dataclass
class TextReport:
    """Python-2 byte strings that were not valid UTF-8 and were read as latin-1 instead."""

    latin1: int = 0
    examples: list[str] = field(default_factory=list)  # a few, as Python literals of the bytes

    def fallback(self, raw: bytes) -> str:
        self.latin1 += 1
        if len(self.examples) < 3:
            self.examples.append(repr(raw[:60]))
        return raw.decode("latin-1")


def load_plain_pickle(path: Path, report: TextReport | None = None) -> Any:
    """Load a pickle of plain containers and scalars. Each Python-2 ``str`` is decoded on its own:
    as UTF-8, or, when that one string is not valid UTF-8, as latin-1 (counted in ``report``), so
    one stray byte does not turn every "café" of the file into "cafÃ©"."""
    report = report if report is not None else TextReport()
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err.strerror})") from None
    # Fast path (the C unpickler decodes every string as UTF-8); only a file with a string that is
    # not UTF-8 pays for the walk that decodes string by string.
    for encoding in ("utf-8", "bytes"):
        try:
            obj = _PlainUnpickler(io.BytesIO(data), encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except Exception as err:  # noqa: BLE001 - any opcode misuse (BUILD on a dict, APPEND on a str, ...)
            # nothing can have run (find_class refuses every global), so any error means a malformed file
            raise DataError(f"{path}: not a readable refs pickle ({type(err).__name__}: {str(err)[:150]})") from None
        if encoding == "utf-8":
            return obj
        try:
            return _decode(obj, report)
        except RecursionError:
            raise DataError(f"{path}: not a readable refs pickle (nested too deeply)") from None
    raise AssertionError("encoding='bytes' decodes no string")


def _decode(obj: Any, report: TextReport) -> Any:
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return report.fallback(obj)
    if isinstance(obj, list):
        return [_decode(v, report) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_decode(v, report) for v in obj)
    if isinstance(obj, dict):
        return {_decode(k, report): _decode(v, report) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return type(obj)(_decode(v, report) for v in obj)
    return obj
