"""``dmn-data build``: raw dataset → ``<out>/<dataset>/{vocab.json, <split>/*.tar, manifest.json}``.

Stages: read the raw files into a :class:`~dmn_data.records.Source` (reader) → vocabulary →
one :class:`~dmn_data.writer.ShardTask` per ``--shard-size`` images (in image-id order) → a pool of
``--workers`` processes writes the shards → manifest. Every finished shard leaves a marker in
``.build/``; a rerun of the same command skips finished shards, so a killed build resumes and ends
byte-identical to an uninterrupted one. ``.build/`` is removed once the manifest is written.
``--overwrite`` builds into a hidden sibling and swaps it in only once it is complete; a flock on
``<out>/.<dataset>.lock`` keeps a second build out of the same folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from .errors import DataError, SkipItem
from .keys import FORMAT, MANIFEST, VOCAB, shard_name
from .manifest import read_manifest, write_json_atomic
from .records import Source
from .safety import safe_name
from .refer import REFER_DATASETS, read_refer, refer_dataset_name
from .tokens import build_vocab, load_vocab_txt, tokenize, vocab_bytes
from .writer import ShardStats, ShardTask, write_shard

DATASETS = (*REFER_DATASETS, "toy")
ALIASES = {"refcoco": "unc", "refcoco+": "unc+", "refcocog": "gref", "refclef": "referit"}
STATE_DIR = ".build"


@dataclass(frozen=True)
class ToyOptions:
    seed: int = 0
    train: int = 4000
    val: int = 300
    test: int = 300
    size: int = 128


@dataclass(frozen=True)
class BuildConfig:
    dataset: str  # one of DATASETS (aliases resolved by resolve_dataset)
    out: Path  # shards go to <out>/<dataset dir>/
    data_root: Path | None = None  # raw files (not needed for toy)
    image_root: Path | None = None  # overrides the dataset's default image folder
    splits: tuple[str, ...] = ()  # empty: every split the dataset has
    workers: int = 1
    shard_size: int = 500  # images per shard
    min_count: int = 1  # vocabulary: keep tokens seen this often in train
    vocab_file: Path | None = None  # external one-token-per-line vocabulary
    strict: bool = False  # stop at the first unusable input instead of counting it
    overwrite: bool = False  # replace a build made with other options
    toy: ToyOptions = field(default_factory=ToyOptions)


def resolve_dataset(name: str, split_by: str | None = None) -> str:
    """Our dataset name for a user-given name (ours or REFER's, with REFER's ``--split-by``)."""
    if name in ALIASES:  # a REFER folder name: its --split-by picks the dataset
        return refer_dataset_name(name, split_by)
    if name in DATASETS:
        if split_by is not None and name in REFER_DATASETS and REFER_DATASETS[name].split_by != split_by:
            return refer_dataset_name(REFER_DATASETS[name].refer_name, split_by)
        return name
    raise DataError(f"unknown dataset {name!r}; choose from {', '.join([*DATASETS, *ALIASES])}")


def dataset_dir(out: Path, dataset: str) -> Path:
    return Path(out) / dataset.replace("+", "plus")


def read_source(cfg: BuildConfig) -> Source:
    if cfg.dataset == "toy":
        from .toy import generate_toy

        t = cfg.toy
        return generate_toy(seed=t.seed, train=t.train, val=t.val, test=t.test, size=t.size)
    if cfg.data_root is None:
        raise DataError(f"--data-root is required for {cfg.dataset}")
    root = Path(cfg.data_root)
    if not root.is_dir():
        raise DataError(f"--data-root {root} is not a directory")
    if cfg.dataset == "referit" and not (root / "refclef").is_dir():
        from .referit import read_referit_dmn

        if not (root / "referit").is_dir():
            raise DataError(
                f"referit: neither {root / 'refclef'} (REFER layout) nor {root / 'referit'} "
                "(original DMN layout) exists under --data-root"
            )
        return read_referit_dmn(root, image_root=cfg.image_root, tokenize=tokenize)
    return read_refer(cfg.dataset, root, image_root=cfg.image_root, tokenize=tokenize)


def _select_splits(cfg: BuildConfig, source: Source) -> list[str]:
    # every reader filters its split names, but a split becomes a folder and a shard prefix under
    # --out, so the last check sits where names turn into paths
    for name in source.splits:
        safe_name(name, f"{cfg.dataset}: split")
    available = sorted(source.splits)
    if not cfg.splits:
        if not available:
            raise DataError(f"{cfg.dataset}: the raw files hold no usable ref")
        return available
    unknown = [s for s in cfg.splits if s not in source.splits]
    if unknown:
        raise DataError(f"{cfg.dataset} has no split {', '.join(map(repr, unknown))}; choose from {', '.join(available)}")
    return list(dict.fromkeys(cfg.splits))


def _vocab(cfg: BuildConfig, source: Source) -> list[str]:
    if cfg.vocab_file is not None:
        return load_vocab_txt(cfg.vocab_file)
    if "train" not in source.splits:
        raise DataError(f"{cfg.dataset}: no train split to build the vocabulary from; pass --vocab FILE")
    return build_vocab((s.tokens for it in source.splits["train"] for r in it.refs for s in r.sentences), cfg.min_count)


def _options(cfg: BuildConfig, splits: list[str]) -> dict:
    """The build options recorded in the manifest: everything that changes the output bytes."""
    opts = {"dataset": cfg.dataset, "splits": splits, "shard_size": cfg.shard_size, "min_count": cfg.min_count,
            "vocab_file": str(cfg.vocab_file) if cfg.vocab_file else None,
            "data_root": str(cfg.data_root) if cfg.data_root else None,
            "image_root": str(cfg.image_root) if cfg.image_root else None}
    if cfg.dataset == "toy":
        opts["toy"] = asdict(cfg.toy)
    return opts


def _fingerprint(options: dict, vocab_sha: str) -> str:
    return hashlib.sha256(json.dumps([FORMAT, options, vocab_sha], sort_keys=True).encode()).hexdigest()[:16]


def _state(folder: Path) -> str:
    """What ``folder`` holds: absent, empty, complete (a manifest), unfinished (build state) or
    foreign (anything else: never deleted)."""
    if not folder.exists():
        return "absent"
    if not folder.is_dir():
        return "foreign"
    if (folder / MANIFEST).is_file():
        return "complete"
    if (folder / STATE_DIR / "state.json").is_file():
        return "unfinished"
    return "foreign" if any(folder.iterdir()) else "empty"


def _fingerprint_of(folder: Path, kind: str) -> str | None:
    try:
        if kind == "complete":
            return read_manifest(folder).get("fingerprint")
        return json.loads((folder / STATE_DIR / "state.json").read_text()).get("fingerprint")
    except (DataError, OSError, ValueError, AttributeError):
        return None


def _prepare_dir(cfg: BuildConfig, ddir: Path, fingerprint: str) -> tuple[dict | None, Path]:
    """Check what ``ddir`` holds; return (the manifest when the same build is already complete,
    the folder to build in). An interrupted build with the same options resumes in place. With
    ``--overwrite`` a build with other options is replaced only once the new one is complete:
    the new one is written to a hidden sibling (see :func:`_swap_in`). A folder that is not a
    dmn-data build is never replaced."""
    staging = _staging(ddir)
    kind = _state(ddir)
    if kind == "foreign":
        raise DataError(f"{ddir} exists and is not a dmn-data build; it is left as it is: move it away or choose another --out")
    same = _fingerprint_of(ddir, kind) == fingerprint
    if kind == "complete" and same:
        return read_manifest(ddir), ddir
    if kind in ("complete", "unfinished") and not same:
        if not cfg.overwrite:
            what = "a build of " + str(read_manifest(ddir).get("dataset")) if kind == "complete" else "an unfinished build"
            raise DataError(f"{ddir} holds {what} with other options; pass --overwrite to replace it (once the new "
                            "build has succeeded), or choose another --out")
        work = staging
    else:
        work = ddir
    if work == staging:
        skind = _state(staging)
        if skind == "foreign":
            raise DataError(f"{staging} (where --overwrite builds before replacing {ddir}) holds other files; move it away")
        if skind == "complete" and _fingerprint_of(staging, skind) == fingerprint:
            return read_manifest(staging), staging  # killed between building and swapping
        if skind in ("complete", "unfinished") and _fingerprint_of(staging, skind) != fingerprint:
            shutil.rmtree(staging)  # an earlier --overwrite attempt with other options
    work.mkdir(parents=True, exist_ok=True)
    (work / STATE_DIR).mkdir(exist_ok=True)
    write_json_atomic(work / STATE_DIR / "state.json", {"fingerprint": fingerprint})
    return None, work


def _staging(ddir: Path) -> Path:
    return ddir.with_name(f".{ddir.name}.overwrite")


def _swap_in(work: Path, ddir: Path) -> None:
    """Replace the old build ``ddir`` with the finished ``work`` (two renames; the old build is
    deleted last, so a failure before this point leaves it untouched)."""
    if work == ddir:
        return
    old = ddir.with_name(f".{ddir.name}.replaced")
    if _state(old) in ("complete", "unfinished", "empty"):
        shutil.rmtree(old)
    if _state(ddir) in ("complete", "unfinished", "empty"):
        os.replace(ddir, old)
    os.replace(work, ddir)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _build_lock(out: Path, ddir: Path) -> Iterator[None]:
    """Hold ``<out>/.<dataset>.lock`` (flock) for the whole build: a second build into the same
    folder fails at once instead of interleaving shard files with the first."""
    path = out / f".{ddir.name}.lock"
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DataError(f"another dmn-data build is writing {ddir} (it holds {path}); wait for it to finish, "
                            "or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _done_path(ddir: Path, split: str, name: str) -> Path:
    return ddir / STATE_DIR / split / (name + ".json")


def build(cfg: BuildConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Build (or resume, or find up to date) the shards of ``cfg.dataset``; return the manifest."""
    if cfg.workers < 1:
        raise DataError(f"--workers must be >= 1, got {cfg.workers}")
    if cfg.shard_size < 1:
        raise DataError(f"--shard-size must be >= 1, got {cfg.shard_size}")
    source = read_source(cfg)
    splits = _select_splits(cfg, source)
    if cfg.strict and source.skipped:
        reason = next(iter(source.skipped))
        raise DataError(f"--strict: {reason}: {source.examples[reason][0]}")
    vocab = _vocab(cfg, source)
    vbytes = vocab_bytes(vocab)
    vocab_sha = hashlib.sha256(vbytes).hexdigest()
    options = _options(cfg, splits)
    fingerprint = _fingerprint(options, vocab_sha)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; pass a folder (the shards go to <out>/<dataset>/)")
    if (out / MANIFEST).is_file():
        raise DataError(f"--out {out} is itself a built dataset; pass its parent folder (--out {out.parent})")
    ddir = dataset_dir(out, cfg.dataset)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"--out {out}: cannot create it ({err.strerror})") from None
    with _build_lock(out, ddir):
        done, work = _prepare_dir(cfg, ddir, fingerprint)
        if done is None:
            manifest = _build_in(cfg, work, source, splits, vocab, vbytes, vocab_sha, options, fingerprint, progress)
        else:
            manifest = done
            if work == ddir:
                log(f"{ddir} is up to date (same dataset and options); nothing to do")
        _swap_in(work, ddir)
    return manifest


def _build_in(cfg, ddir, source, splits, vocab, vbytes, vocab_sha, options, fingerprint, progress) -> dict:
    """Write the shards and the manifest into ``ddir`` (the final folder or its staging sibling)."""
    (ddir / VOCAB).write_bytes(vbytes)

    index = {tok: i for i, tok in enumerate(vocab)}
    tasks: dict[str, list[ShardTask]] = {}
    for split in splits:
        (ddir / split).mkdir(exist_ok=True)
        (ddir / STATE_DIR / split).mkdir(exist_ok=True)
        items = sorted(source.splits[split], key=lambda it: it.image_id)
        tasks[split] = [
            ShardTask(path=str(ddir / split / shard_name(cfg.dataset, split, k // cfg.shard_size)),
                      items=tuple(items[k:k + cfg.shard_size]), vocab_index=index, strict=cfg.strict)
            for k in range(0, len(items), cfg.shard_size)
        ]
    _write_all(ddir, tasks, cfg.workers, progress)
    manifest = _manifest(cfg, ddir, source, splits, tasks, options, fingerprint, len(vocab), vocab_sha)
    if manifest["totals"]["images"] == 0:
        # no manifest: an empty build must not look like a dataset to train on (a wrong
        # --image-root skips every image)
        reasons = ", ".join(f"{k}: {v}" for k, v in manifest["skipped"].items()) or "none"
        example = next((v[0] for v in manifest["skipped_examples"].values() if v), "")
        raise DataError(f"{cfg.dataset}: every image was skipped ({reasons}), e.g. {example}; check --data-root/--image-root")
    write_json_atomic(ddir / MANIFEST, manifest)
    shutil.rmtree(ddir / STATE_DIR, ignore_errors=True)
    return manifest


# The shard tasks of the running build, read by forked pool workers by index: fork shares them
# copy-on-write, where sending them with each task would pickle every item through a pipe.
_TASKS: list[tuple[str, ShardTask]] = []


def _write_indexed(i: int) -> tuple[int, ShardStats]:
    return i, write_shard(_TASKS[i][1])


def _write_all(ddir: Path, tasks: dict[str, list[ShardTask]], workers: int, progress: bool) -> None:
    """Write every unfinished shard of every split through one queue (biggest first, so the
    workers stay busy across split boundaries), with a progress bar per split."""
    global _TASKS
    _TASKS = [(split, t) for split, ts in tasks.items() for t in ts
              if not (_done_path(ddir, split, Path(t.path).name).is_file() and Path(t.path).is_file())]
    order = sorted(range(len(_TASKS)), key=lambda i: -len(_TASKS[i][1].items))
    bars = {}
    for pos, (split, ts) in enumerate(tasks.items()):
        total = sum(len(t.items) for t in ts)
        left = sum(len(t.items) for s, t in _TASKS if s == split)
        bars[split] = tqdm(total=total, initial=total - left, desc=f"{split:>6}", unit="img", position=pos,
                           disable=not progress, dynamic_ncols=True)
    # concurrent.futures, not multiprocessing.Pool: a Pool replaces a worker killed by the OOM
    # killer or kill -9 and waits forever for its task; the executor fails the pending futures
    # with BrokenProcessPool instead
    pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            if workers > 1 and len(order) > 1 else None)
    try:
        if pool is not None:
            results = (f.result() for f in as_completed([pool.submit(_write_indexed, i) for i in order]))
        else:
            results = map(_write_indexed, order)
        for i, stats in results:
            split, task = _TASKS[i]
            write_json_atomic(_done_path(ddir, split, stats.name), _stats_to_json(stats))
            bars[split].update(len(task.items))
    except SkipItem as err:
        raise DataError(f"--strict: {err.reason}: {err.detail}") from None
    except BrokenProcessPool:
        raise DataError(f"a shard-writing process died (killed, or out of memory?); the finished shards are kept: "
                        f"rerun the same command to resume (fewer --workers than {workers} need less memory)") from None
    finally:
        if pool is not None:
            _stop(pool)
        for bar in bars.values():
            bar.close()
        _TASKS = []


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now: after an error or Ctrl-C the queued shards are not wanted, and a
    shard being written is left as a .tmp file that the rerun writes again."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join()


def _stats_to_json(s: ShardStats) -> dict:
    return {"name": s.name, "images": s.images, "refs": s.refs, "sentences": s.sentences, "bytes": s.bytes,
            "sha256": s.sha256, "skipped": dict(s.skipped), "examples": s.examples}


def _manifest(cfg, ddir, source, splits, tasks, options, fingerprint, vocab_size, vocab_sha) -> dict:
    skipped = Counter(source.skipped)
    examples = {k: list(v) for k, v in source.examples.items()}
    out_splits = {}
    for split in splits:
        shards = []
        for task in tasks[split]:
            name = Path(task.path).name
            st = json.loads(_done_path(ddir, split, name).read_text())
            skipped.update(st["skipped"])
            for reason, ex in st["examples"].items():
                examples.setdefault(reason, []).extend(ex[: 3 - len(examples.get(reason, []))])
            if st["images"] == 0:  # every image of this shard was skipped: no empty tars downstream
                Path(task.path).unlink(missing_ok=True)
                continue
            shards.append({"name": f"{split}/{name}", **{k: st[k] for k in ("images", "refs", "sentences", "bytes", "sha256")}})
        out_splits[split] = {k: sum(s[k] for s in shards) for k in ("images", "refs", "sentences", "bytes")}
        out_splits[split]["shards"] = shards
    totals = {k: sum(s[k] for s in out_splits.values()) for k in ("images", "refs", "sentences", "bytes")}
    return {"format": FORMAT, "dataset": cfg.dataset, "source": source.description, "options": options,
            "fingerprint": fingerprint, "vocab": {"file": VOCAB, "size": vocab_size, "sha256": vocab_sha},
            "splits": out_splits, "totals": totals, "skipped": dict(sorted(skipped.items())),
            "skipped_examples": {k: v for k, v in sorted(examples.items()) if k in skipped},
            "latin1_strings": {"count": source.latin1_strings, "examples": source.latin1_examples}}
