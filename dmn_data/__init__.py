"""dmn_data: raw referring-segmentation datasets → deterministic WebDataset shards → batches.

Public API: :func:`make_loader` (the streaming reader used by training and evaluation),
:func:`build` with :class:`BuildConfig` (what ``dmn-data build`` runs), :func:`read_manifest`,
and :class:`DataError` (bad user input; its message is meant for the user).
"""

from .build import BuildConfig, ToyOptions, build
from .errors import DataError
from .manifest import read_manifest
from .stream import make_loader

__all__ = ["BuildConfig", "DataError", "ToyOptions", "build", "make_loader", "read_manifest"]
