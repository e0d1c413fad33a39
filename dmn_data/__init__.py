"""dmn_data: raw referring-segmentation datasets → deterministic WebDataset shards → batches.

Public API: :func:`make_loader` (the streaming reader used by training and evaluation),
:func:`build` with :class:`BuildConfig` (what ``dmn-data build`` runs), :func:`read_manifest`,
and :class:`DataError` (bad user input; its message is meant for the user).
"""

from .build import BuildConfig, ToyOptions, build
from .errors import DataError
from .manifest import read_manifest

__all__ = ["BuildConfig", "DataError", "ToyOptions", "build", "make_loader", "read_manifest"]


def __getattr__(name: str):
    # The stream needs torch; building and inspecting shards do not, so it is imported on first use.
    if name == "make_loader":
        from .stream import make_loader

        return make_loader
    raise AttributeError(f"module 'dmn_data' has no attribute {name!r}")
