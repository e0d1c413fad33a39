import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from dmn_data.errors import DataError
from dmn_data.masks import decode_rle
from dmn_data.stream import make_loader
from dmn_data.transforms import Example, Mirror, collate, resized_shape
from shardgen import VOCAB_TOKENS, read_expected, write_dataset

SIZE = 32


@pytest.fixture(scope="module")
def ddir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("shards"), splits={"train": 8, "val": 7}, shard_size=2)


def _examples(loader):
    """Batches → per-example dicts (tensors sliced to the example), in stream order."""
    out = []
    for batch in loader:
        for b in range(batch["image"].shape[0]):
            out.append({k: v[b] for k, v in batch.items()})
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_yields_every_sentence_once_with_ids_tokens_lengths(ddir, workers):
    expected = {e["sent"]["sent_id"]: e for e in read_expected(ddir, "val")}
    loader = make_loader(ddir, "val", size=SIZE, batch_size=3, train=False, workers=workers)
    batches = list(loader)
    assert len(batches) == len(loader)
    got = _examples(batches)
    ids = [int(e["sent_id"]) for e in got]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    if workers == 0:
        assert ids == list(expected)  # shard order, then tar order
    for e in got:
        want = expected[int(e["sent_id"])]
        n = len(want["sent"]["ids"])
        assert int(e["lengths"]) == n >= 1
        assert e["tokens"][:n].tolist() == want["sent"]["ids"]
        assert (e["tokens"][n:] == 0).all()
        assert int(e["image_id"]) == want["meta"]["image_id"] and int(e["ref_id"]) == want["ref"]["ref_id"]
        assert e["sentence"] == want["sent"]["raw"]
        assert e["mask_rle"] == want["ref"]["mask"]
        assert e["orig_size"].tolist() == [want["meta"]["height"], want["meta"]["width"]]
    assert [int(e["sent_id"]) for e in _examples(loader)] == ids  # stable across runs
    again = make_loader(ddir, "val", size=SIZE, batch_size=3, train=False, workers=workers)
    assert [int(e["sent_id"]) for e in _examples(again)] == ids


def test_eval_dtypes_shapes_and_partial_last_batch(ddir):
    n = len(read_expected(ddir, "val"))
    batches = list(make_loader(ddir, "val", size=SIZE, batch_size=4, train=False, workers=0))
    assert [b["image"].shape[0] for b in batches] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    b = batches[0]
    t = b["tokens"].shape[1]
    assert t == int(b["lengths"].max())
    spec = {"image": ("uint8", (4, 3, SIZE, SIZE)), "valid": ("bool", (4, SIZE, SIZE)),
            "mask": ("uint8", (4, SIZE, SIZE)), "tokens": ("int64", (4, t)), "lengths": ("int64", (4,)),
            "orig_size": ("int64", (4, 2)), "resized_size": ("int64", (4, 2)), "image_id": ("int64", (4,)),
            "ref_id": ("int64", (4,)), "sent_id": ("int64", (4,))}
    for key, (dtype, shape) in spec.items():
        assert str(b[key].dtype) == f"torch.{dtype}" and tuple(b[key].shape) == shape, key
    assert isinstance(b["sentence"], list) and isinstance(b["mask_rle"], list) and len(b["mask_rle"]) == 4


SMALL_KEYS = ("tokens", "lengths", "orig_size", "resized_size", "image_id", "ref_id", "sent_id")


def test_worker_batches_equal_in_process_ones_and_arrive_channels_last_in_shared_memory(ddir):
    """A worker collates straight into shared memory (no copy on the way to the main process);
    the padding must still be zeros and every pixel the same as without workers."""
    def batches(workers):
        return list(make_loader(ddir, "val", size=SIZE, batch_size=3, train=False, workers=workers))

    here, there = batches(0), batches(1)
    assert len(here) == len(there)
    for a, b in zip(here, there):
        for key in ("image", "mask", "valid"):
            assert torch.equal(a[key], b[key]), key
        # images stay channels_last in memory across the hand-over (what the network takes)
        assert a["image"].is_contiguous(memory_format=torch.channels_last)
        assert b["image"].is_contiguous(memory_format=torch.channels_last)
        for batch in (a, b):  # the maps arrive in one storage, ids and sizes in another, small one
            storage = lambda k: batch[k].untyped_storage()  # noqa: E731
            assert storage("image").data_ptr() == storage("mask").data_ptr() == storage("valid").data_ptr()
            assert all(storage(k).data_ptr() != storage("image").data_ptr() for k in SMALL_KEYS)
            assert len({storage(k).data_ptr() for k in SMALL_KEYS}) == 1
            assert storage("sent_id").nbytes() == sum(batch[k].numel() * 8 for k in SMALL_KEYS)  # no more

    class Collated(torch.utils.data.IterableDataset):  # reports from inside the worker
        def __iter__(self):
            ex = Example(image=np.full((4, 6, 3), 9, np.uint8), mask=np.ones((4, 6), np.uint8), ids=[3],
                         orig_size=(4, 6), image_id=1, ref_id=1, sent_id=1, sentence="x", mask_rle={})
            batch = collate([ex, ex], size=8)
            out = {k: (batch[k].is_shared(), int(batch[k].sum())) for k in ("image", "mask", "valid")}
            keys = ("image", "mask", "valid", *SMALL_KEYS)
            out["storages"] = len({batch[k].untyped_storage().data_ptr() for k in keys})
            out["small"] = {k: batch[k].tolist() for k in ("tokens", "lengths", "resized_size", "sent_id")}
            yield out

    for workers, shared in ((0, False), (1, True)):
        got = next(iter(torch.utils.data.DataLoader(Collated(), batch_size=None, num_workers=workers)))
        assert got == {"image": [shared, 2 * 4 * 6 * 3 * 9], "mask": [shared, 48], "valid": [shared, 48],
                       "storages": 2,  # maps and ids: two shared-memory files per batch in a worker
                       "small": {"tokens": [[3], [3]], "lengths": [1, 1], "resized_size": [[4, 6], [4, 6]],
                                 "sent_id": [1, 1]}}


def test_workers_hand_batches_over_by_name_and_leave_the_main_process_strategy(ddir, tmp_path, monkeypatch):
    """The loader's workers switch themselves to torch's file_system sharing (BENCHMARKS.md); the
    main process keeps its own strategy, and the batches are the same as in-process ones."""
    from dmn_data import stream

    real = stream._share_by_name

    def share(worker_id):  # runs in each (forked) worker: record what it set
        real(worker_id)
        (tmp_path / f"worker{worker_id}").write_text(torch.multiprocessing.get_sharing_strategy())

    monkeypatch.setattr(stream, "_share_by_name", share)
    before = torch.multiprocessing.get_sharing_strategy()
    here = list(make_loader(ddir, "val", size=SIZE, batch_size=3, train=False, workers=0))
    there = list(make_loader(ddir, "val", size=SIZE, batch_size=3, train=False, workers=2))
    assert [(tmp_path / f"worker{i}").read_text() for i in (0, 1)] == ["file_system"] * 2
    assert torch.multiprocessing.get_sharing_strategy() == before
    ids = lambda batches: sorted(i for b in batches for i in b["sent_id"].tolist())  # noqa: E731
    assert ids(here) == ids(there)


def test_resize_pad_valid_region_and_mask_for_landscape_and_portrait(ddir):
    shapes = set()
    sources = {x["meta"]["image_id"]: x["data"] for x in read_expected(ddir, "val")}
    for e in _examples(make_loader(ddir, "val", size=SIZE, batch_size=5, train=False, workers=0)):
        h, w = e["orig_size"].tolist()
        rh, rw = resized_shape(h, w, SIZE)
        assert max(rh, rw) == SIZE and e["resized_size"].tolist() == [rh, rw]
        shapes.add("landscape" if w > h else "portrait" if h > w else "square")
        valid = np.zeros((SIZE, SIZE), dtype=bool)
        valid[:rh, :rw] = True
        assert (e["valid"].numpy() == valid).all()
        image, mask = e["image"].numpy(), e["mask"].numpy()
        assert (image[:, ~valid] == 0).all() and (mask[~valid] == 0).all()
        # the mask is exactly a nearest-neighbour PIL resize of the decoded original-resolution RLE
        full = decode_rle(e["mask_rle"])
        direct = np.asarray(Image.fromarray(full).resize((rw, rh), Image.NEAREST))
        assert set(np.unique(mask)) <= {0, 1} and (mask[:rh, :rw] == direct).all()
        # the image is the source resized (draft-mode JPEG decode: close to a full decode + resize)
        ref = np.asarray(Image.open(io.BytesIO(sources[int(e["image_id"])])).convert("RGB").resize((rw, rh), Image.BILINEAR))
        diff = np.abs(image[:, :rh, :rw].transpose(1, 2, 0).astype(int) - ref.astype(int)).mean()
        assert diff < 8, diff
    assert {"landscape", "portrait", "square"} <= shapes


def test_train_equal_length_on_every_rank_and_exactly_len_batches(ddir):
    total = len(read_expected(ddir, "train"))
    lens = []
    for rank in (0, 1):
        loader = make_loader(ddir, "train", size=SIZE, batch_size=3, train=True, workers=2, rank=rank,
                             world_size=2, shuffle_buffer=16)
        assert len(loader) == total // (3 * 2)
        for _ in range(2):  # two epochs
            batches = list(loader)
            assert len(batches) == len(loader) and all(b["image"].shape[0] == 3 for b in batches)
        lens.append(len(loader))
    assert lens[0] == lens[1]
    fixed = make_loader(ddir, "train", size=SIZE, batch_size=3, train=True, workers=1, epoch_batches=25)
    assert len(fixed) == 25 and sum(1 for _ in fixed) == 25  # longer than the data: keeps drawing


def test_train_stream_is_a_function_of_seed_epoch_rank(ddir):
    def order(seed=0, epoch=0, rank=0):
        loader = make_loader(ddir, "train", size=SIZE, batch_size=2, train=True, workers=2, seed=seed,
                             rank=rank, world_size=2, shuffle_buffer=8, epoch_batches=6)
        loader.set_epoch(epoch)
        return [int(s) for b in loader for s in b["sent_id"]]

    base = order()
    assert order() == base  # resume relies on this
    assert order(seed=1) != base and order(epoch=1) != base and order(rank=1) != base


def test_more_workers_and_ranks_than_shards_does_not_hang(tmp_path):
    one = write_dataset(tmp_path, splits={"train": 2, "val": 2}, shard_size=10)
    expected = sorted(e["sent"]["sent_id"] for e in read_expected(one, "val"))
    loader = make_loader(one, "val", size=SIZE, batch_size=2, train=False, workers=2)
    assert sorted(int(e["sent_id"]) for e in _examples(loader)) == expected
    # rank 1 of 2 has no shard in eval: nothing to do, no hang
    idle = make_loader(one, "val", size=SIZE, batch_size=2, train=False, workers=2, rank=1, world_size=2)
    assert len(idle) == 0 and list(idle) == []
    for rank in (0, 1):
        train = make_loader(one, "train", size=SIZE, batch_size=2, train=True, workers=2, rank=rank, world_size=2)
        assert len(list(train)) == len(train) >= 1


def test_eval_ranks_partition_the_split(ddir):
    expected = sorted(e["sent"]["sent_id"] for e in read_expected(ddir, "val"))
    seen = []
    for rank in range(3):
        loader = make_loader(ddir, "val", size=SIZE, batch_size=4, train=False, workers=2, rank=rank, world_size=3)
        batches = list(loader)
        assert len(batches) == len(loader)
        seen += [int(s) for b in batches for s in b["sent_id"]]
    assert sorted(seen) == expected


def test_mirror_swaps_side_words_only_when_the_vocabulary_can():
    m = Mirror(VOCAB_TOKENS)
    idx = {t: i for i, t in enumerate(VOCAB_TOKENS)}
    assert m.ids([idx["the"], idx["left"], idx["rightmost"], 1]) == [idx["the"], idx["right"], idx["leftmost"], 1]
    assert m.can_flip(["the", "left", "car"]) and m.can_flip(["a", "zebra"])
    assert not m.can_flip(["leftover", "car"])  # "rightover" is not in the vocabulary
    assert not m.can_flip(["lefty"])  # <unk>: the flipped word cannot be written
    assert Mirror.raw("Left of the rightmost car, bright") == "Right of the leftmost car, bright"


def test_flip_mirrors_image_mask_and_swaps_left_right(ddir):
    plain = {int(e["sent_id"]): e for e in _examples(
        make_loader(ddir, "train", size=SIZE, batch_size=4, train=False, workers=0))}
    mirror = Mirror(VOCAB_TOKENS)
    flipped = kept = 0
    loader = make_loader(ddir, "train", size=SIZE, batch_size=4, train=True, workers=0, flip=True,
                         shuffle_buffer=4, epoch_batches=40)
    for e in _examples(loader):
        p = plain[int(e["sent_id"])]
        rh, rw = e["resized_size"].tolist()
        n = int(e["lengths"])
        assert (e["valid"] == p["valid"]).all()  # the valid region stays top-left
        if (e["image"] == p["image"]).all() and e["sentence"] == p["sentence"]:
            kept += 1
            assert (e["mask"] == p["mask"]).all() and e["mask_rle"] == p["mask_rle"]
            continue
        flipped += 1
        assert (e["image"][:, :rh, :rw] == p["image"][:, :rh, :rw].flip(-1)).all()
        assert (e["mask"][:rh, :rw] == p["mask"][:rh, :rw].flip(-1)).all()
        assert (decode_rle(e["mask_rle"]) == decode_rle(p["mask_rle"])[:, ::-1]).all()
        assert e["tokens"][:n].tolist() == mirror.ids(p["tokens"][:n].tolist())
        assert e["sentence"] == Mirror.raw(p["sentence"])
    assert flipped > 20 and kept > 20
    # without flip=True nothing is ever mirrored
    for e in _examples(make_loader(ddir, "train", size=SIZE, batch_size=4, train=True, workers=0, epoch_batches=10)):
        assert (e["image"] == plain[int(e["sent_id"])]["image"]).all()


def test_bad_split_manifest_format_and_arguments_raise_data_error(ddir, tmp_path):
    with pytest.raises(DataError, match=r"split 'testA' .*choose from train, val"):
        make_loader(ddir, "testA", size=SIZE, batch_size=2, train=False)
    with pytest.raises(DataError, match="no manifest.json"):
        make_loader(tmp_path, "val", size=SIZE, batch_size=2, train=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({"format": "dmn-shards/0"}))
    with pytest.raises(DataError, match=r"'dmn-shards/0', expected 'dmn-shards/1'"):
        make_loader(bad, "val", size=SIZE, batch_size=2, train=False)
    with pytest.raises(DataError, match="--batch-size"):
        make_loader(ddir, "val", size=SIZE, batch_size=0, train=False)
    with pytest.raises(DataError, match="--workers"):
        make_loader(ddir, "val", size=SIZE, batch_size=2, train=False, workers=-1)
    with pytest.raises(DataError, match="rank 2"):
        make_loader(ddir, "val", size=SIZE, batch_size=2, train=False, rank=2, world_size=2)
    with pytest.raises(DataError, match="training only"):
        make_loader(ddir, "val", size=SIZE, batch_size=2, train=False, flip=True)
    with pytest.raises(DataError, match="needs s3fs"):
        make_loader("s3://bucket/unc", "val", size=SIZE, batch_size=2, train=False)
    # the manifest file itself is accepted in place of its directory
    assert len(make_loader(ddir / "manifest.json", "val", size=SIZE, batch_size=2, train=False)) > 0


def _rewrite(src, dst, edit):
    """Rewrite tar ``src`` to ``dst`` with ``edit`` applied to its [(TarInfo, bytes)] members."""
    with tarfile.open(src) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(dst, "w") as tar:
        for m, data in edit(members):
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def _copy(ddir, dst):
    import shutil

    shutil.copytree(ddir, dst)
    return dst


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_or_missing_shard_is_one_line_data_error_naming_it(ddir, tmp_path, workers):
    broken = _copy(ddir, tmp_path / "broken")
    shard = broken / "val" / "tiny-val-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])  # cut inside the first image
    loader = make_loader(broken, "val", size=SIZE, batch_size=2, train=False, workers=workers)
    with pytest.raises(DataError, match="tiny-val-000001.tar") as err:
        list(loader)
    assert "\n" not in str(err.value)

    _rewrite(ddir / "val" / shard.name, shard, lambda members: members[:2])  # the first image only
    with pytest.raises(DataError, match=r"tiny-val-000001.tar holds 1 images, its manifest says 2"):
        list(make_loader(broken, "val", size=SIZE, batch_size=2, train=False, workers=workers))

    shard.unlink()
    with pytest.raises(DataError, match=r"shard .*tiny-val-000001.tar is missing"):
        make_loader(broken, "val", size=SIZE, batch_size=2, train=False, workers=workers)


def test_corrupt_image_and_annotation_name_the_shard_and_sample(ddir, tmp_path):
    broken = _copy(ddir, tmp_path / "broken")
    name = broken / "val" / "tiny-val-000000.tar"
    cut_jpeg = lambda ms: [(m, d[: len(d) // 3] if m.name.endswith(".jpg") else d) for m, d in ms]  # noqa: E731
    _rewrite(name, name, cut_jpeg)
    with pytest.raises(DataError, match=r"tiny-val-000000.tar, sample \d+"):
        list(make_loader(broken, "val", size=SIZE, batch_size=2, train=False, workers=0))
    bad_json = lambda ms: [(m, b"{not json" if m.name.endswith(".json") else d) for m, d in ms]  # noqa: E731
    _rewrite(ddir / "val" / name.name, name, bad_json)
    with pytest.raises(DataError, match=r"tiny-val-000000.tar, sample \d+: bad annotation"):
        list(make_loader(broken, "val", size=SIZE, batch_size=2, train=False, workers=0))


def test_real_builder_output_streams(tmp_path):
    from dmn_data.build import BuildConfig, ToyOptions, build

    manifest = build(BuildConfig(dataset="toy", out=tmp_path, shard_size=3,
                                 toy=ToyOptions(train=4, val=5, test=2, size=64)), progress=False, log=lambda _: None)
    loader = make_loader(tmp_path / "toy", "val", size=48, batch_size=4, train=False, workers=2)
    ids = Counter(int(e["sent_id"]) for e in _examples(loader))
    assert sum(ids.values()) == manifest["splits"]["val"]["sentences"] and set(ids.values()) == {1}
    assert loader.vocab[:2] == ["<pad>", "<unk>"] and loader.manifest["dataset"] == "toy"


def test_draft_decode_hits_the_exact_size_for_odd_shapes():
    from dmn_data.transforms import decode_resized

    yy, xx = np.mgrid[0:427, 0:640]
    pixels = np.stack([xx * 255 // 639, yy * 255 // 426, (xx // 40 + yy // 40) % 2 * 200], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    out = decode_resized(buf.getvalue(), 427, 640, 320)
    assert out.shape == (214, 320, 3) and out.dtype == np.uint8
    full = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize((320, 214), Image.BILINEAR))
    assert np.abs(out.astype(int) - full.astype(int)).mean() < 3
    with pytest.raises(ValueError, match="annotation says 640x480"):
        decode_resized(buf.getvalue(), 480, 640, 320)


def test_language_ablation_pairs_each_mask_with_another_refs_sentence(ddir):
    expected = read_expected(ddir, "train")
    by_image: dict[int, list] = {}
    for e in expected:
        by_image.setdefault(e["meta"]["image_id"], []).append(e)
    got = _examples(make_loader(ddir, "train", size=SIZE, batch_size=4, train=False, workers=0, ablate_language=True))
    multi = [e for e in expected if len({x["ref"]["ref_id"] for x in by_image[e["meta"]["image_id"]]}) > 1]
    assert multi, "the fixture needs images with several refs"
    assert len(got) == len(multi)  # single-ref images are left out, nothing else
    own = {e["sent"]["sent_id"]: e for e in expected}
    for e in got:
        mine = own[int(e["sent_id"])]
        assert e["mask_rle"] == mine["ref"]["mask"] and int(e["ref_id"]) == mine["ref"]["ref_id"]
        others = [x for x in by_image[mine["meta"]["image_id"]] if x["ref"]["ref_id"] != mine["ref"]["ref_id"]]
        said = next(x for x in others if x["sent"]["raw"] == e["sentence"])
        n = int(e["lengths"])
        assert e["tokens"][:n].tolist() == said["sent"]["ids"]
    with pytest.raises(DataError, match="evaluation only"):
        make_loader(ddir, "train", size=SIZE, batch_size=4, train=True, ablate_language=True)
