"""The streaming reader: shards of one split → batches. The only way training and evaluation read data.

    loader = make_loader("shards/unc", "train", size=320, batch_size=16, train=True, rank=r, world_size=n)
    for epoch in range(epochs):
        for batch in loader:        # exactly len(loader) batches on every rank
            ...

Batch contract (``B`` examples, ``S`` = ``size``, ``T`` = the longest sentence in the batch):

=================  =====================  =====================================================
``image``          ``(B, 3, S, S) uint8``  RGB, longest side resized to ``S`` (bilinear), padded
                                          bottom/right with zeros; channels_last in memory
                                          (``(B, S, S, 3)`` underneath, what the network takes)
``valid``          ``(B, S, S) bool``      True inside the resized image (top-left ``h' × w'``)
``mask``           ``(B, S, S) uint8``     the ref's mask (0/1) resized like the image (nearest),
                                          0 in the padding
``tokens``         ``(B, T) int64``        token ids (``vocab.json``), padded with 0 (``<pad>``)
``lengths``        ``(B,) int64``          real tokens per sentence, ≥ 1
``orig_size``      ``(B, 2) int64``        ``(h, w)`` of the original image
``resized_size``   ``(B, 2) int64``        ``(h', w')`` of the valid region
``image_id``,      ``(B,) int64``          ids from the source dataset
``ref_id``,
``sent_id``
``sentence``       ``list[str]``           the raw sentence
``mask_rle``       ``list[dict]``          the ref's mask at original resolution, COCO compressed
                                          RLE ``{"size": [h, w], "counts": str}``
=================  =====================  =====================================================

With ``flip=True`` (training only) an example is mirrored with probability 1/2 when its sentence
allows it: image, mask and ``mask_rle`` are flipped and left/right words swapped in ``tokens`` and
``sentence`` (see :class:`dmn_data.transforms.Mirror`). The valid region stays top-left.

Evaluation (``train=False``) yields every sentence of the split exactly once (shards split by rank,
then by worker; workers clamped to this rank's shards), in the same order on every run with the
same settings; each worker batches its own shards, so each worker's last partial batch is kept
(``len()`` counts them). A rank with no shard yields nothing (the evaluator sums I and U over ranks).
Training reads shards resampled with replacement, seeded by ``seed`` + epoch + rank + worker, and
yields exactly ``len(loader)`` batches per epoch on every rank — computed from the manifest's
sentence counts, so ranks never disagree and no shard is scanned to know an epoch's length. The
batches are a function of (``seed``, epoch, ``rank``, ``workers``, the shards): a resumed run that
calls ``set_epoch`` and skips the batches it already used sees the same stream.

Locations (:class:`dmn_data.location.Location`): a local folder, ``http(s)://`` (streamed with
requests), any fsspec URL (``s3://``, ``gs://``, ``hf://``, ``memory://``, ``file://`` …) and
``pipe:CMD`` with ``{}`` for the file name. The manifest and vocabulary are read from the same
place; remote shards get the same checks as local ones (sha256 while reading, image and sentence
counts, splits). A remote shard that fails while it is read (a dropped connection, a truncated
transfer) is read again up to ``retries`` times, skipping the samples already yielded, then the
run stops with one line naming it: an epoch is never silently short. With ``cache_dir``, each
remote shard read to its end and verified is kept there, and later epochs read the copy.

Training decodes each image once per visit and fans its sentences out after decoding. The
shuffle has two stages per worker: ``shuffle_buffer`` counts sentences, most of it held as
still-encoded images (``(shuffle_buffer - E) / sentences-per-image`` of them, about 250 images of
all their sentences at the default 2,000 and RefCOCO's ~7 sentences per image), then a reservoir
of ``E = min(256, shuffle_buffer // 4)`` decoded examples mixes the sentences of consecutive
images, so a batch rarely holds two sentences of one image. Memory per worker: the encoded images
(~40 MB of COCO JPEGs), plus at most ``E`` decoded examples, which share their image's array and
their ref's mask (at most ``E`` × (3 + 1) × ``size``² bytes: ~100 MB at 320 px, usually far less),
plus a few batches. ``pipelines/bench_stream.py`` measures the speed, the RSS and the mixing.
Against the earlier per-sentence stream (one shuffle of encoded sentences, a decode per sentence),
toy runs of the ``tiny`` preset end at the same held-out score (BENCHMARKS.md, "The toy run").
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

import torch.multiprocessing
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .errors import DataError
from .keys import IMAGE_EXTS, MANIFEST, META_EXT
from .location import Location, cache_path
from .manifest import check_manifest, read_manifest
from .safety import inside
from .tarsamples import iter_samples
from .tokens import valid_token_ids
from .transforms import Mirror, collate, make_examples


#: how many times a remote shard that failed while being read is read again before the run stops
RETRIES = 3
#: at most this many decoded examples are held per worker to mix the sentences of nearby images
DECODED_BUFFER = 256


@dataclass(frozen=True)
class _Shard:
    url: str
    images: int
    sentences: int
    sha256: str | None = None  # the manifest's; None = not checked (--no-verify-sha256)
    split: str | None = None  # every sample must say it belongs to this split
    location: Location | None = None  # None: url is a local file
    name: str = ""  # relative to the location, as in the manifest
    cache_dir: str | None = None  # remote shards: keep a verified copy here
    retries: int = 0  # remote shards: reads again after a failure


class HashingReader(io.RawIOBase):
    """A read-only byte stream that hashes what passes through it. It wraps any stream (a local
    file today, an HTTP/fsspec stream later), so a shard is checked while it is read, in one pass.
    Call :meth:`finish` after the consumer is done: it reads what the consumer left (tar padding)
    and raises a DataError when the sha256 differs from ``expected``."""

    def __init__(self, raw: BinaryIO, expected: str, name: str):
        self.raw, self.expected, self.name = raw, expected, name
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)

    def finish(self) -> None:
        while chunk := self.raw.read(1 << 20):
            self.digest.update(chunk)
        if self.digest.hexdigest() != self.expected:
            raise DataError(f"shard {self.name} does not match the sha256 in its manifest (changed after the build); "
                            "rebuild it with dmn-data build, or check it with dmn-data verify")

    def close(self) -> None:
        self.raw.close()
        super().close()


class _CachingReader(io.RawIOBase):
    """Copies a remote shard into ``<cache>.part-<pid>`` while it is read; :meth:`commit` (after
    the shard was read to its end and checked) renames the copy into place. Closing without a
    commit deletes it: a half-read or failed shard never enters the cache."""

    def __init__(self, raw: BinaryIO, target: Path):
        self.raw, self.target = raw, target
        target.parent.mkdir(parents=True, exist_ok=True)
        self.part = target.with_name(f"{target.name}.part-{os.getpid()}")
        self.out = open(self.part, "wb")  # noqa: SIM115 - closed in commit/close

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        self.out.write(data)
        buffer[: len(data)] = data
        return len(data)

    def commit(self) -> None:
        while chunk := self.raw.read(1 << 20):
            self.out.write(chunk)
        self.out.close()
        os.replace(self.part, self.target)

    def close(self) -> None:
        if not self.out.closed:
            self.out.close()
        self.part.unlink(missing_ok=True)
        self.raw.close()
        super().close()


def _open_shard(shard: _Shard) -> BinaryIO:
    if shard.location is None:
        raw = open(shard.url, "rb")  # noqa: SIM115 - closed by the caller
    elif shard.cache_dir is not None:
        cached = cache_path(shard.cache_dir, shard.location, shard.name, shard.sha256)
        if cached.is_file():
            raw = open(cached, "rb")  # noqa: SIM115 - still hashed below: a changed copy fails
        else:
            raw = _CachingReader(shard.location.open(shard.name), cached)
    else:
        raw = shard.location.open(shard.name)
    return HashingReader(raw, shard.sha256, shard.url) if shard.sha256 else raw


def _finish(stream: BinaryIO) -> None:
    """After a shard's last sample: check its sha256, then keep the cached copy."""
    inner = stream
    if isinstance(stream, HashingReader):
        stream.finish()
        inner = stream.raw
    if isinstance(inner, _CachingReader):
        inner.commit()


@dataclass(frozen=True)
class _Failure:
    """A DataError raised inside a worker, carried to the main process as one line."""

    message: str


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _rng(seed: int, epoch: int, rank: int, purpose: str) -> random.Random:
    worker, _ = _worker()
    return random.Random(f"dmn-stream/{purpose}/{seed}/{epoch}/{rank}/{worker}")


class _ShardList(IterableDataset):
    """First stage. Eval: this rank's shards, then this worker's, in manifest order.
    Train: an endless stream of shards drawn with replacement (every rank and worker draws from all
    shards with its own seed, so any number of shards feeds any number of ranks × workers)."""

    def __init__(self, shards: list[_Shard], *, train: bool, seed: int, rank: int, world_size: int):
        self.shards, self.train, self.seed = shards, train, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0  # set by Loader before each epoch's workers start

    def __iter__(self) -> Iterator[_Shard]:
        if self.train:
            rng = _rng(self.seed, self.epoch, self.rank, "shards")
            while True:
                yield rng.choice(self.shards)
        worker, workers = _worker()
        yield from self.shards[self.rank::self.world_size][worker::workers]


def _read_samples(shards: Iterator[_Shard]) -> Iterator[dict]:
    """``{"__key__", "__url__", "jpg"|"png": bytes, "json": bytes}``, one per image, then
    ``{"__end__": shard}`` after each shard read to its end (lets :func:`_image_items` check the
    shard's sentence count); a shard that cannot be read, or holds another number of images than
    the manifest says, is a DataError. A remote shard is read again (``shard.retries`` times) after
    a failure, skipping the samples already yielded."""
    for shard in shards:
        yielded = 0
        for attempt in range(shard.retries + 1):
            try:
                for index, sample in enumerate(_shard_samples(shard)):
                    if index >= yielded:
                        yielded += 1
                        yield sample
                break
            except DataError as err:
                if attempt == shard.retries:
                    if shard.retries:
                        raise DataError(f"{err} (after {attempt + 1} attempts)") from None
                    raise
                time.sleep(min(0.5 * 2 ** attempt, 8.0))


def _shard_samples(shard: _Shard) -> Iterator[dict]:
    """One reading of one shard, start to end, checked; ``{"__end__": shard}`` last."""
    count = 0
    stream = None
    try:
        stream = _open_shard(shard)
        for sample in iter_samples(stream, shard.url):  # the rules dmn-data verify applies too
            count += 1
            sample["__split__"] = shard.split
            yield sample
        if count != shard.images:
            raise DataError(f"shard {shard.url} holds {count} images, its manifest says {shard.images} "
                            "(truncated or replaced?); rebuild it with dmn-data build")
        _finish(stream)
        yield {"__end__": shard}
    except DataError:
        raise
    except Exception as err:  # tarfile, gzip, OS and network errors: the message gets the shard's name
        detail = str(err.args[0]).split(" @ ")[0] if err.args else type(err).__name__
        hint = "rebuild it with dmn-data build" if shard.location is None else \
            f"check it with dmn-data verify {shard.location}"
        raise DataError(f"shard {shard.url} is unreadable ({detail}); {hint}") from None
    finally:
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - a failed pipe: command; the read already failed or ended
                pass


def _image_items(samples: Iterator[dict], *, vocab_size: int, ablate_language: bool = False) -> Iterator[dict]:
    """One item per image, still encoded: the image bytes and size, and its refs with their
    sentences (ids/tokens/raw) and RLE masks — what :func:`dmn_data.transforms.make_examples`
    turns into one example per (ref, sentence). Each shard's sentence count is checked against
    its manifest entry at its ``__end__`` marker.

    With ``ablate_language`` each ref is paired with sentences of *another* ref of the same image
    (the next ref, cyclically; images with a single ref are left out), while its own mask stays
    the target: the language ablation, which a model that reads the words must fail.
    """
    sentences_seen = 0  # in the current shard, ablation or not
    for sample in samples:
        if "__end__" in sample:
            shard = sample["__end__"]
            if sentences_seen != shard.sentences:
                # a stream whose shards hold no sentence would otherwise resample them forever
                raise DataError(f"shard {shard.url} holds {sentences_seen} sentences, its manifest says "
                                f"{shard.sentences}; rebuild it with dmn-data build")
            sentences_seen = 0
            continue
        where = f"shard {sample['__url__']}, sample {sample['__key__']}"
        data = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
        if data is None or META_EXT not in sample:
            raise DataError(f"{where}: needs one of .{'/.'.join(IMAGE_EXTS)} and .{META_EXT}, has {sorted(k for k in sample if not k.startswith('__'))}")
        try:
            meta = json.loads(sample[META_EXT])
            if sample.get("__split__") is not None and meta.get("split") != sample["__split__"]:
                # val shards renamed to test would otherwise be scored as the test split
                raise DataError(f"{where}: belongs to split {meta.get('split')!r}, read as {sample['__split__']!r}; "
                                "shards were moved or renamed, rebuild with dmn-data build")
            refs = meta["refs"]
            sentences_seen += sum(len(ref["sentences"]) for ref in refs)
            if ablate_language and len(refs) < 2:
                continue
            for ref in refs:  # all checked before any is used (the ablation borrows another ref's)
                for sent in ref["sentences"]:
                    if not valid_token_ids(sent["ids"], vocab_size):
                        # an id past the vocabulary would index outside the embedding table
                        raise ValueError(f"sentence {sent['sent_id']} has token ids outside [1, {vocab_size}) "
                                         f"or none: {str(sent['ids'])[:60]}")
            out = []
            for i, ref in enumerate(refs):
                sentences = []
                for j, sent in enumerate(ref["sentences"]):
                    said = sent
                    if ablate_language:
                        other = refs[(i + 1) % len(refs)]["sentences"]
                        said = other[j % len(other)]
                    sentences.append({"sent_id": sent["sent_id"], "ids": said["ids"],
                                      "tokens": said["tokens"], "raw": said["raw"]})
                out.append({"ref_id": ref["ref_id"], "mask": ref["mask"], "sentences": sentences})
            yield {"where": where, "data": data, "width": meta["width"], "height": meta["height"],
                   "image_id": meta["image_id"], "refs": out,
                   "sentences": sum(len(r["sentences"]) for r in out)}
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
            raise DataError(f"{where}: bad annotation ({type(err).__name__}: {str(err)[:150]})") from None


def _shuffle(items: Iterator, *, bufsize: int, source: _ShardList, purpose: str) -> Iterator:
    """Reservoir shuffle: the buffer fills completely before the first item leaves."""
    rng = _rng(source.seed, source.epoch, source.rank, purpose)
    buf: list = []
    for item in items:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        i = rng.randrange(bufsize)
        yield buf[i]
        buf[i] = item
    rng.shuffle(buf)
    yield from buf


def _decode(items: Iterator[dict], *, size: int, mirror: Mirror | None, source: _ShardList) -> Iterator:
    """Each image decoded once, fanned out to one example per sentence."""
    rng = _rng(source.seed, source.epoch, source.rank, "flip") if mirror is not None else None
    for item in items:
        try:
            yield from make_examples(item, size, mirror, rng)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # corrupt images
            raise DataError(f"{item['where']}: {err}") from None


def _report_errors(batches: Iterator) -> Iterator:
    try:
        yield from batches
    except DataError as err:
        yield _Failure(str(err))


def _share_by_name(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: this worker hands its batches to the main process as named
    shared-memory files (torch's ``file_system`` strategy) instead of file descriptors. With
    descriptors, the main process fetches each of a batch's tensors over a socket from the
    worker. That was over half of its CPU time, and the 2-worker stream ran 1.2× faster without it
    (BENCHMARKS.md, "Training stream"). Only the worker is switched. The main process rebuilds
    whatever kind it is sent, so the user's own setting there is left alone. torch's
    ``torch_shm_manager`` removes the files if a process dies."""
    torch.multiprocessing.set_sharing_strategy("file_system")


def _identity(x):
    return x


class Loader:
    """Iterable over batches (see the module docstring). ``len()`` is batches per epoch on this rank;
    each ``iter()`` starts the next epoch (``set_epoch`` to resume at a given one)."""

    def __init__(self, pipeline: wds.DataPipeline, source: _ShardList, *, num_batches: int, workers: int,
                 train: bool, vocab: list[str], manifest: dict, pin_memory: bool):
        self._pipeline, self._source = pipeline, source
        self.num_batches, self.workers, self.train = num_batches, workers, train
        self.vocab, self.manifest, self.pin_memory = vocab, manifest, pin_memory
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """The next iteration is epoch ``epoch`` (its shard draws and shuffles follow from it)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        self._source.epoch = self.epoch  # workers fork (or unpickle) the source with this epoch
        self.epoch += 1
        if self.workers == 0:
            batches = iter(self._pipeline)
        else:
            batches = iter(DataLoader(self._pipeline, batch_size=None, num_workers=self.workers,
                                      collate_fn=_identity, pin_memory=self.pin_memory,
                                      worker_init_fn=_share_by_name))
        try:
            for n, batch in enumerate(batches, 1):
                if isinstance(batch, _Failure):
                    raise DataError(batch.message)
                yield batch
                if self.train and n == self.num_batches:
                    break
        except RuntimeError as err:
            died = worker_died(err)
            if died is None:
                raise
            raise died from None
        finally:
            del batches  # shuts the workers down now, not at garbage collection


def worker_died(err: BaseException) -> DataError | None:
    """The one-line DataError for torch's "DataLoader worker (pid N) is killed by signal" (kill -9,
    the OOM killer), else None. torch raises it from its SIGCHLD handler, in whatever code the main
    process runs at that moment (often the training step, not the loader): the CLIs convert it
    too (``dmn_model.cli_errors``)."""
    if not isinstance(err, RuntimeError) or "DataLoader worker" not in str(err):
        return None
    return DataError(f"a data-loading worker process died ({str(err).splitlines()[0][:120]}); free memory or "
                     "lower --workers, then rerun (dmn-train: add --resume)")


@dataclass(frozen=True)
class Dataset:
    """A built dataset's location, manifest and vocabulary, read from wherever it lives."""

    location: Location
    manifest: dict
    vocab: list[str]
    vocab_sha256: str  # of vocab.json's bytes: what checkpoints record to pin their vocabulary


def read_dataset(shards: str | Path) -> Dataset:
    """Read and check ``manifest.json`` and the vocabulary of the dataset at ``shards`` (a folder,
    its manifest, an http(s)/fsspec URL or a ``pipe:`` command; see :mod:`dmn_data.location`)."""
    location = Location.parse(shards)
    if location.kind == "local":
        manifest = read_manifest(Path(location.base))
    else:
        manifest = check_manifest(location.read_bytes(MANIFEST), location.url(MANIFEST))
    entry = manifest.get("vocab") or {}
    name = entry.get("file", "vocab.json")
    where = location.url(name)
    try:
        data = location.read_bytes(name)
        vocab = json.loads(data)
    except DataError as err:
        raise DataError(f"unreadable vocabulary ({err}); rebuild with dmn-data build") from None
    except ValueError as err:
        raise DataError(f"{where}: unreadable vocabulary ({err}); rebuild with dmn-data build") from None
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise DataError(f"{where}: not a JSON list of tokens; rebuild with dmn-data build")
    digest = hashlib.sha256(data).hexdigest()
    if entry.get("sha256") and digest != entry["sha256"]:
        raise DataError(f"{where}: does not match the sha256 in {location.url(MANIFEST)}; rebuild with dmn-data build")
    return Dataset(location, manifest, vocab, digest)


def _shard_list(dataset: Dataset, split: str, verify_sha256: bool = True, *,
                cache_dir: str | None = None, retries: int = RETRIES) -> list[_Shard]:
    location, manifest = dataset.location, dataset.manifest
    where = location.url(MANIFEST)
    splits = manifest.get("splits") or {}
    if split not in splits:
        raise DataError(f"split {split!r} is not in {where}; choose from {', '.join(sorted(splits)) or '(none)'}")
    entries = splits[split].get("shards") or []
    if not entries:
        raise DataError(f"split {split!r} of {location} has no shards (every image was skipped at build time?)")
    shards = []
    for e in entries:
        name = e.get("name") if isinstance(e, dict) else None
        bad_name = DataError(f"{where}: shard entry {str(e)[:80]} has no valid name inside {location}; "
                             "rebuild with dmn-data build")
        if location.kind == "local":
            path = inside(location.base, name)  # symlinks followed: still inside
            if path is None:
                raise bad_name
            url, remote = str(path), None
        else:
            try:
                url, remote = location.url(name), location  # refuses absolute names and '..'
            except DataError:
                raise bad_name from None
        try:
            images, sentences = int(e["images"]), int(e["sentences"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: shard entry {name!r} lacks integer images/sentences counts; "
                            "rebuild with dmn-data build") from None
        shards.append(_Shard(url, images, sentences,
                             sha256=e.get("sha256") if verify_sha256 else None, split=split,
                             location=remote, name=name, cache_dir=cache_dir if remote else None,
                             retries=retries if remote else 0))
    if sum(s.sentences for s in shards) < 1:
        # training resamples shards until it has a batch: with no sentence it would wait forever
        raise DataError(f"split {split!r} of {location} holds no sentence; rebuild with dmn-data build")
    missing = [s.url for s in shards if s.location is None and not Path(s.url).is_file()]
    if missing:
        raise DataError(f"shard {missing[0]} is missing ({len(missing)} of {len(shards)} listed in {where}); rebuild with dmn-data build")
    return shards


def _check_args(*, size, batch_size, workers, rank, world_size, shuffle_buffer, epoch_batches) -> None:
    checks = [(size >= 1, f"--size must be >= 1, got {size}"),
              (batch_size >= 1, f"--batch-size must be >= 1, got {batch_size}"),
              (workers >= 0, f"--workers must be >= 0, got {workers}"),
              (world_size >= 1 and 0 <= rank < world_size, f"rank {rank} is not in 0..world_size-1 (world_size {world_size})"),
              (shuffle_buffer >= 1, f"--shuffle-buffer must be >= 1, got {shuffle_buffer}"),
              (epoch_batches is None or epoch_batches >= 1, f"--epoch-batches must be >= 1, got {epoch_batches}")]
    for ok, message in checks:
        if not ok:
            raise DataError(message)


def make_loader(shards: str | Path, split: str, *, size: int, batch_size: int, train: bool,
                workers: int = 2, seed: int = 0, rank: int = 0, world_size: int = 1,
                shuffle_buffer: int = 2000, flip: bool = False, epoch_batches: int | None = None,
                pin_memory: bool = False, ablate_language: bool = False, verify_sha256: bool = True,
                cache_dir: str | Path | None = None, retries: int = RETRIES,
                dataset: Dataset | None = None) -> Loader:
    """Batches of ``split`` from the shards at ``shards``: a built dataset directory or its
    manifest, an ``http(s)://`` or fsspec URL, or a ``pipe:`` command (:mod:`dmn_data.location`).

    Args:
        size: side ``S`` of the square batches; the longest image side is resized to it.
        train: resampled shards, shuffle buffer, optional flips, fixed epoch length;
            otherwise every sentence once, in order.
        workers: DataLoader worker processes (0 = in this process). In eval, clamped to the number
            of shards this rank reads.
        seed, rank, world_size: passed explicitly (nothing is read from the environment).
        shuffle_buffer: sentences held for shuffling, per worker (train): encoded images, then
            up to 256 decoded examples (see the module docstring).
        flip: random horizontal flips with left/right words swapped (train only).
        epoch_batches: batches per epoch on each rank (train); default
            ``sentences // (batch_size × world_size)`` (at least 1).
        ablate_language: evaluation only: pair each ref's mask with another ref's sentence from
            the same image (single-ref images are left out, so ``len()`` is then an upper bound).
        verify_sha256: hash each shard as it is read and fail at its end when it differs from the
            manifest (a changed token id or mask); each sample's split is checked either way.
        cache_dir: remote shards: keep each one read to its end (and verified) here; later
            epochs and runs read the copy. Local shards are read in place.
        retries: remote shards: how many times a shard that failed mid-read is read again.
        dataset: :func:`read_dataset` of ``shards``, when the caller already read it.

    Raises:
        DataError: missing/unfinished/foreign manifest, unknown split, missing shard, bad argument;
            later, while iterating: a corrupt shard (the message names it).
    """
    _check_args(size=size, batch_size=batch_size, workers=workers, rank=rank, world_size=world_size,
                shuffle_buffer=shuffle_buffer, epoch_batches=epoch_batches)
    if flip and not train:
        raise DataError("flip=True is for training only (evaluation must see the images as they are)")
    if ablate_language and train:
        raise DataError("the language ablation is for evaluation only")
    if retries < 0:
        raise DataError(f"--retries must be >= 0, got {retries}")
    dataset = dataset or read_dataset(shards)
    shard_list = _shard_list(dataset, split, verify_sha256,
                             cache_dir=str(cache_dir) if cache_dir is not None else None, retries=retries)
    vocab, manifest = dataset.vocab, dataset.manifest

    if train:
        total = sum(s.sentences for s in shard_list)
        num_batches = epoch_batches or max(1, total // (batch_size * world_size))
        # shuffle_buffer counts sentences: most of it is held as encoded images (whole images,
        # all their sentences), the rest as decoded examples that mix the sentences of
        # consecutive images (they share their image's array).
        per_image = max(1.0, total / max(1, sum(s.images for s in shard_list)))
        example_buffer = max(1, min(DECODED_BUFFER, shuffle_buffer // 4))
        image_buffer = max(1, round((shuffle_buffer - example_buffer) / per_image))
    else:
        mine = shard_list[rank::world_size]
        workers = min(workers, len(mine))  # a worker without a shard would have nothing to read
        parts = [mine[w::max(workers, 1)] for w in range(max(workers, 1))]
        num_batches = sum(math.ceil(sum(s.sentences for s in p) / batch_size) for p in parts)

    source = _ShardList(shard_list, train=train, seed=seed, rank=rank, world_size=world_size)
    mirror = Mirror(vocab) if flip else None
    pipeline = wds.DataPipeline(
        source,  # _Shard: eval → this rank's then this worker's shards in order; train → endless draws
        _read_samples,  # {"__key__", "__url__", "jpg"/"png", "json"}: one image with all its refs
        partial(_image_items, vocab_size=len(vocab), ablate_language=ablate_language),  # one dict per image, still encoded
        partial(_shuffle, bufsize=image_buffer, source=source, purpose="images") if train else None,
        partial(_decode, size=size, mirror=mirror, source=source),  # transforms.Example per sentence
        partial(_shuffle, bufsize=example_buffer, source=source, purpose="examples") if train else None,
        wds.batched(batch_size, collation_fn=partial(collate, size=size), partial=True),  # batch dicts
        _report_errors,  # a DataError becomes a _Failure item the main process raises again
    )
    return Loader(pipeline, source, num_batches=num_batches, workers=workers, train=train, vocab=vocab,
                  manifest=manifest, pin_memory=pin_memory)
