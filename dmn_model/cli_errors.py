"""One-line errors for every dmn CLI that loads a model (dmn-train, dmn-eval, dmn-predict,
dmn-export): expected failures print one line on stderr and exit 2, never a traceback."""

from __future__ import annotations

import functools

import typer
from rich.console import Console

from dmn_data.errors import DataError

from .checkpoint import CheckpointError

err_console = Console(stderr=True)


def user_errors_with(interrupt_hint: str | None = None):
    """A decorator for a CLI command: ``DataError``/``CheckpointError``/``ValueError`` → one line,
    exit 2; Ctrl-C → exit 130 (after ``interrupt_hint``, if given)."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (DataError, CheckpointError, ValueError) as err:
                err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                if interrupt_hint:
                    err_console.print(interrupt_hint)
                raise typer.Exit(130) from None

        return wrapper

    return decorate
