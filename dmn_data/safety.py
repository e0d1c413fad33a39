"""Names and paths read from untrusted dataset files (refs pickles, instances.json, .mat files,
archives) must stay inside the folder they are joined onto: a split named ``u/../../victim`` or
``.build`` would otherwise write, or delete, outside the build."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import DataError

# A split name becomes a folder and a shard-name prefix: no separators, no leading dot (hidden state
# folders such as .build live next to the split folders), nothing the shell or tar would reinterpret.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,63}")


def is_safe_name(name: object) -> bool:
    """True when ``name`` may be used as one path component (a split, a folder, a shard prefix)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def safe_name(name: object, what: str) -> str:
    """``name`` unchanged when it is a safe single path component; else a DataError naming ``what``."""
    if not is_safe_name(name):
        raise DataError(f"{what} {name!r} is not a valid name (letters, digits, '_', '+', '-'; no leading dot, no '/')")
    return name  # type: ignore[return-value]


def inside(root: Path | str, relative: object) -> Path | None:
    """``root / relative`` when it is a relative path that resolves inside ``root`` (symlinks
    followed), else None. ``relative`` is untrusted: absolute paths, ``..`` and NUL are refused."""
    if not isinstance(relative, str) or not relative or "\x00" in relative or "\\" in relative:
        return None
    if os.path.isabs(relative) or any(part in ("..",) for part in Path(relative).parts):
        return None
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        return None
    return Path(root) / relative
