"""One-line errors for the dmn_serve CLIs (the same contract as dmn-train / dmn-eval)."""

from __future__ import annotations

import functools

import typer
from rich.console import Console

from dmn_data.errors import DataError
from dmn_model.checkpoint import CheckpointError

err_console = Console(stderr=True)


def user_errors(fn):
    """Expected failures: one line on stderr, exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (DataError, CheckpointError, ValueError) as err:
            err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper
