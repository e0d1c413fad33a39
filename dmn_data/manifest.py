"""``manifest.json``: the record of a finished build, written last (atomically)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import DataError
from .keys import FORMAT, MANIFEST


def write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(dataset_dir: Path) -> dict:
    """Load and check ``<dataset_dir>/manifest.json``."""
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        hint = ""
        if Path(dataset_dir).is_dir():
            subs = sorted(p.name for p in Path(dataset_dir).iterdir() if (p / MANIFEST).is_file())
            if subs:
                hint = f"; it holds built datasets: {', '.join(subs)} (pass {Path(dataset_dir) / subs[0]})"
        raise DataError(f"{dataset_dir}: no {MANIFEST} (not a finished dmn-data build{hint or '; run dmn-data build first'})")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err})") from None
    return check_manifest(data, str(path))


def check_manifest(data: bytes, path: str) -> dict:
    """Parse and check a manifest's bytes (read from ``path``, named in errors)."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except ValueError as err:
        raise DataError(f"{path}: unreadable ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"{path}: format {found!r}, expected {FORMAT!r} (rebuild with this version of dmn-data)")
    return manifest
