"""``dmn-export``: a run or checkpoint → a self-contained model folder (optionally on the Hub)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from dmn_model.segmenter import Segmenter

from .errors import err_console, user_errors

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Write config.json, model.safetensors, vocab.json and a README.md model "
                       "card: everything dmn-predict and Segmenter.from_pretrained need.")
Opt = typer.Option


def export(source: str, out: str, *, vocab: str | None = None, license: str | None = None,
           threshold: float | None = None, push_to: str | None = None,
           private: bool | None = None) -> Path:
    """Load ``source`` (run directory or checkpoint file; a model folder re-exports) and write
    the model folder ``out``; with ``push_to``, upload it to that Hub repo too."""
    seg = Segmenter.from_pretrained(source, device="cpu", vocab=vocab)
    if license is not None:
        seg.card["license"] = license
    if threshold is not None:
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"--threshold must be in [0, 1), got {threshold}")
        seg.threshold = threshold
    folder = seg.save_pretrained(out)
    if push_to is not None:
        seg.push_to_hub(push_to, private=private)
    return folder


@app.command()
@user_errors
def export_cmd(
    source: Annotated[str, typer.Argument(help="Run directory (best.pt, else last.pt) or "
                                          "checkpoint file.")],
    out: Annotated[Path, Opt(help="Model folder to write.")] = ...,
    vocab: Annotated[Optional[Path], Opt(help="The shards' vocab.json, for checkpoints that "
                                         "predate stored vocabularies (checked by sha256).")] = None,
    license: Annotated[Optional[str], Opt(help="Licence field of the model card (Hub id, e.g. "
                                          "mit, cc-by-4.0; default: other).")] = None,
    threshold: Annotated[Optional[float], Opt(help="Mask threshold stored in config.json "
                                              "(default: the run's).")] = None,
    push_to_hub: Annotated[Optional[str], Opt(help="Also upload to this Hub repo (user/name).")] = None,
    private: Annotated[Optional[bool], Opt("--private/--public", help="Visibility of a new Hub repo.")] = None,
) -> None:
    """dmn-export RUN_OR_CHECKPOINT --out DIR"""
    folder = export(source, str(out), vocab=str(vocab) if vocab else None, license=license,
                    threshold=threshold, push_to=push_to_hub, private=private)
    err_console.print(f"model folder → {folder}", highlight=False)


def main() -> None:
    app(prog_name="dmn-export")


if __name__ == "__main__":
    sys.exit(main())
