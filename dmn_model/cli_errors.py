"""One-line errors for every dmn CLI that loads a model (dmn-train, dmn-eval, dmn-predict,
dmn-export): expected failures print one line on stderr and exit 2, never a traceback."""

from __future__ import annotations

import functools

import typer
from rich.console import Console
from rich.markup import escape

from dmn_data.errors import DataError

from .checkpoint import CheckpointError

err_console = Console(stderr=True)


def _is_peer_failure(err: RuntimeError) -> bool:
    import torch.distributed as dist

    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return any(k in text for k in ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer"))


def user_errors_with(interrupt_hint: str | None = None):
    """A decorator for a CLI command: ``DataError``/``CheckpointError``/``ValueError`` → one line,
    exit 2 (a killed DataLoader worker too); Ctrl-C → exit 130 (after ``interrupt_hint``, if given); a peer of a distributed run
    that died (a gloo/NCCL error in a collective) → one line, exit 3."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (DataError, CheckpointError, ValueError) as err:
                err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False,
                                  soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                if interrupt_hint:
                    err_console.print(interrupt_hint)
                raise typer.Exit(130) from None
            except RuntimeError as err:
                from dmn_data.stream import worker_died

                died = worker_died(err)
                if died is not None:  # torch's SIGCHLD handler raised outside the loader
                    err_console.print(f"[red]error:[/red] {escape(str(died))}", highlight=False,
                                      soft_wrap=True)
                    raise typer.Exit(2) from None
                # Another rank (or node) died: gloo/NCCL raise from inside a collective.
                if not _is_peer_failure(err):
                    raise
                first = escape(str(err).splitlines()[0][:300])
                err_console.print(f"[red]error:[/red] another process of this distributed run "
                                  f"stopped ({first})" + (f"; {interrupt_hint}" if interrupt_hint
                                                          else ""),
                                  highlight=False, soft_wrap=True)
                raise typer.Exit(3) from None

        return wrapper

    return decorate
