"""Loading ``refs(*).p``: Python-2 pickles downloaded from the internet, so untrusted input."""

from __future__ import annotations

import io
import pickle
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


def load_plain_pickle(path: Path) -> Any:
    """Load a pickle of plain containers and scalars. Python-2 ``str`` objects are decoded as
    UTF-8, falling back to latin-1 when a file is not valid UTF-8."""
    data = Path(path).read_bytes()
    for encoding in ("utf-8", "latin-1"):
        try:
            return _PlainUnpickler(io.BytesIO(data), encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as err:
            raise DataError(f"{path}: not a readable refs pickle ({err})") from None
    raise AssertionError("latin-1 decodes any byte string")
