"""``dmn-predict``: segment what phrases refer to in your images with a trained DMN."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import err_console, user_errors
from .predict import PredictConfig, predict_files

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Segment the object each phrase refers to: mask + overlay PNGs and "
                       "predictions.jsonl.")
Opt = typer.Option


class Dtype(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


@app.command()
@user_errors
def predict_cmd(
    images: Annotated[Optional[list[Path]], typer.Argument(help="Image files.")] = None,
    model: Annotated[str, Opt(help="Model folder (dmn-export), run directory, checkpoint "
                              "file or Hugging Face Hub repo id (user/name).")] = ...,
    phrase: Annotated[Optional[list[str]], Opt("--phrase", "-p", help="A phrase, asked of every "
                                               "IMAGE (repeat for several).")] = None,
    queries: Annotated[Optional[Path], Opt(help='JSONL of {"image": ..., "phrase": ...} per '
                                          "line (relative paths: from the file's folder).")] = None,
    out: Annotated[Path, Opt(help="Output folder.")] = Path("predictions"),
    threshold: Annotated[Optional[float], Opt(help="Mask threshold (default: the model's).")] = None,
    explain: Annotated[bool, Opt("--explain", help="Also write, per phrase, each word's "
                                 "dynamic-filter response (<stem>__<nn>_explain.png).")] = False,
    exif_transpose: Annotated[bool, Opt("--exif-transpose", help="Apply EXIF orientation first "
                                        "(the datasets ignore it: off by default).")] = False,
    device: Annotated[Optional[str], Opt(help="cpu, cuda, cuda:1… (default: cuda if available).")] = None,
    dtype: Annotated[Dtype, Opt(help="bf16 = autocast on the device.")] = Dtype.fp32,
    local_files_only: Annotated[bool, Opt("--local-files-only", help="Hub ids: use the local "
                                          "cache only (as HF_HUB_OFFLINE=1).")] = False,
    revision: Annotated[Optional[str], Opt(help="Hub ids: branch, tag or commit.")] = None,
    progress: Annotated[bool, Opt("--progress/--no-progress", help="Progress bar.")] = True,
) -> None:
    """dmn-predict --model X IMAGE... --phrase "the man on the left" --out DIR"""
    cfg = PredictConfig(model=model, out=str(out), images=tuple(str(p) for p in images or ()),
                        phrases=tuple(phrase or ()), queries=str(queries) if queries else None,
                        threshold=threshold, explain=explain, exif_transpose=exif_transpose,
                        device=device, dtype=dtype.value, local_files_only=local_files_only,
                        revision=revision, progress=progress)
    rows = predict_files(cfg, warn=lambda m: err_console.print(m, highlight=False, soft_wrap=True))
    err_console.print(f"{len(rows)} prediction(s) → {out}/predictions.jsonl", highlight=False)


def main() -> None:
    app(prog_name="dmn-predict")


if __name__ == "__main__":
    sys.exit(main())
