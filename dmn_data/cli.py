"""``dmn-data``: build, inspect and verify shards. Each command is a thin wrapper over a function."""

from __future__ import annotations

import errno
import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .build import BuildConfig, ToyOptions, build, dataset_dir, resolve_dataset
from .download import DownloadConfig, download
from .errors import DataError
from .inspect import info_rows, show_grid, verify

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Convert referring-segmentation datasets into WebDataset shards, and inspect them.")
err_console = Console(stderr=True)
console = Console()


class Dataset(str, Enum):
    unc = "unc"
    uncplus = "unc+"
    gref = "gref"
    gref_umd = "gref-umd"
    referit = "referit"
    toy = "toy"
    refcoco = "refcoco"
    refcocoplus = "refcoco+"
    refcocog = "refcocog"
    refclef = "refclef"


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def user_errors(fn):
    """Expected failures become one line on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DataError as err:
            raise _fail(str(err)) from None
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # a full disk: what was finished is kept (shards are renamed into place when complete)
            where = f" while writing {err.filename}" if err.filename else ""
            raise _fail(f"no space left on the device{where}; free some space and run the same command again "
                        "(finished work is kept)") from None
        except KeyboardInterrupt:
            raise _fail("interrupted; rerun the same command to resume", 130) from None

    return wrapper


@app.command("build")
@user_errors
def build_cmd(
    dataset: Annotated[Dataset, typer.Option(help="Dataset to convert (REFER names accepted; see --split-by).")] = Dataset.toy,
    data_root: Annotated[Path, typer.Option(help="Folder with the raw files (REFER layout: <root>/refcocog/refs(umd).p ...).")] = Path("data"),
    out: Annotated[Path, typer.Option(help="Shards are written to <out>/<dataset>/.")] = Path("shards"),
    image_root: Annotated[Optional[Path], typer.Option(help="Image folder, if not the dataset's default under --data-root.")] = None,
    split_by: Annotated[Optional[str], typer.Option(help="REFER split scheme (refcoco: unc|google, refcocog: google|umd, refclef: berkeley|unc).")] = None,
    splits: Annotated[Optional[str], typer.Option(help="Comma-separated splits to build (default: all the dataset has).")] = None,
    workers: Annotated[int, typer.Option(help="Processes writing shards in parallel.")] = min(4, os.cpu_count() or 1),
    shard_size: Annotated[int, typer.Option(help="Images per shard.")] = 500,
    min_count: Annotated[int, typer.Option(help="Keep tokens seen at least this often in train.")] = 1,
    vocab: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="External vocabulary, one token per line (e.g. vocabulary_Gref.txt).")] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first unusable input instead of skipping and counting it.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing build made with other options, once the new one has succeeded (a folder that is not a build is never replaced).")] = False,
    seed: Annotated[int, typer.Option(help="toy: random seed.")] = 0,
    toy_train: Annotated[int, typer.Option(help="toy: train images.")] = 4000,
    toy_val: Annotated[int, typer.Option(help="toy: val images.")] = 300,
    toy_test: Annotated[int, typer.Option(help="toy: test images.")] = 300,
    toy_size: Annotated[int, typer.Option(help="toy: image side in pixels.")] = 128,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Convert a raw dataset into shards once: <out>/<dataset>/{manifest.json, vocab.json, <split>/*.tar}.

    A killed build resumes when the same command is run again; a finished one is left as it is.
    """
    name = resolve_dataset(dataset.value, split_by)
    cfg = BuildConfig(
        dataset=name, out=out, data_root=None if name == "toy" else data_root, image_root=image_root,
        splits=tuple(s.strip() for s in splits.split(",") if s.strip()) if splits else (),
        workers=workers, shard_size=shard_size, min_count=min_count, vocab_file=vocab, strict=strict,
        overwrite=overwrite, toy=ToyOptions(seed=seed, train=toy_train, val=toy_val, test=toy_test, size=toy_size),
    )
    manifest = build(cfg, progress=progress, log=lambda m: err_console.print(m, highlight=False))
    ddir = dataset_dir(out, name)
    _print_table(ddir)
    if manifest["skipped"]:
        err_console.print("[yellow]skipped inputs[/yellow] (counted in manifest.json):")
        for reason, count in manifest["skipped"].items():
            example = (manifest["skipped_examples"].get(reason) or [""])[0]
            err_console.print(f"  {reason}: {count}  e.g. {example}", highlight=False)
    latin1 = manifest.get("latin1_strings") or {}
    if latin1.get("count"):
        err_console.print(f"[yellow]text:[/yellow] {latin1['count']} string(s) of the raw files were not UTF-8 and were "
                          f"read as latin-1 (counted in manifest.json), e.g. {', '.join(latin1['examples'])}", highlight=False)
    console.print(f"next: dmn-train --shards {ddir}", highlight=False)


class DownloadDataset(str, Enum):
    unc = "unc"
    uncplus = "unc+"
    gref = "gref"
    gref_umd = "gref-umd"
    referit = "referit"


@app.command("download")
@user_errors
def download_cmd(
    dataset: Annotated[list[DownloadDataset], typer.Option(help="Dataset to fetch; repeat for several (shared files, e.g. COCO train2014, are fetched once).")],
    data_root: Annotated[Path, typer.Option(help="Raw files go here, in the layout dmn-data build reads.")] = Path("data"),
    mirror: Annotated[Optional[str], typer.Option(help="Base URL tried first for every file (the file name is appended), e.g. a local mirror.")] = None,
    retries: Annotated[int, typer.Option(help="Extra attempts per location; an interrupted transfer resumes where it stopped.")] = 2,
    keep_archives: Annotated[bool, typer.Option(help="Keep the downloaded archives (in <data-root>/downloads/) after extraction.")] = False,
    max_expansion: Annotated[float, typer.Option(help="Refuse an archive that unpacks to more than this many times its size.")] = 100.0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Download a dataset's raw files (docs/datasets.md lists the sources) into --data-root.

    Files already in place are skipped; an interrupted download resumes when the same command is run again.
    """
    import pooch

    pooch.get_logger().setLevel("WARNING")  # the lines below say what is fetched from where
    cfg = DownloadConfig(datasets=tuple(d.value for d in dataset), data_root=data_root, mirror=mirror,
                         retries=retries, keep_archives=keep_archives, max_expansion=max_expansion)
    commands = download(cfg, progress=progress, log=lambda m: err_console.print(m, highlight=False, markup=False, soft_wrap=True))
    for command in commands:
        console.print(f"next: {command}", highlight=False, markup=False, soft_wrap=True)


def _print_table(ddir: Path) -> None:
    manifest, rows = info_rows(ddir)
    table = Table(title=f"{manifest['dataset']} — {ddir}  (vocab {manifest['vocab']['size']} tokens)")
    for col in ("split", "shards", "images", "refs", "sentences", "size"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command("info")
@user_errors
def info_cmd(directory: Annotated[Path, typer.Argument(help="A built dataset folder, e.g. shards/toy.")]) -> None:
    """Show a build's manifest as a table (splits, shards, counts, sizes, skipped inputs)."""
    _print_table(directory)
    manifest, _ = info_rows(directory)
    console.print(f"source: {manifest['source']}", highlight=False)
    for reason, count in manifest["skipped"].items():
        console.print(f"skipped {reason}: {count}", highlight=False)


@app.command("verify")
@user_errors
def verify_cmd(
    directory: Annotated[str, typer.Argument(help="A built dataset: a folder (shards/toy), an "
                                             "http(s):// or fsspec URL, or 'pipe:CMD {}'.")],
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Check every shard's checksum and decode every sample; exit 1 on any problem."""
    problems = verify(directory, progress=progress)
    for p in problems:
        err_console.print(f"problem: {p}", highlight=False, soft_wrap=True)
    if problems:
        raise _fail(f"{len(problems)} problem(s) in {directory}", 1)
    console.print(f"{directory}: all shards match the manifest and decode", highlight=False)


@app.command("show")
@user_errors
def show_cmd(
    directory: Annotated[Path, typer.Argument(help="A built dataset folder, e.g. shards/toy.")],
    split: Annotated[str, typer.Option(help="Split to draw from.")] = "val",
    n: Annotated[int, typer.Option("-n", help="Number of examples.")] = 16,
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG file to write.")] = Path("grid.png"),
    seed: Annotated[int, typer.Option(help="Which examples to pick.")] = 0,
) -> None:
    """Draw examples (image, mask overlay, sentence) into one PNG."""
    count = show_grid(directory, split, n, output, seed=seed)
    console.print(f"wrote {output} ({count} examples)", highlight=False)


def main() -> None:
    app(prog_name="dmn-data")


if __name__ == "__main__":
    sys.exit(main())
