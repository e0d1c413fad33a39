"""The attack list of issue 15: hostile or careless inputs, each refused with one line or counted,
never written outside the folder it belongs to. Fixtures are built here, small and bounded."""

import json
from pathlib import Path

import pytest

from dmn_data.build import BuildConfig, build
from dmn_data.errors import DataError
from dmn_data.safety import inside, is_safe_name, safe_name
from refer_fixtures import make_refer_root, py2_pickle


def _rewrite(root: Path, refs: list, inst: dict) -> None:
    (root / "refcoco" / "refs(unc).p").write_bytes(py2_pickle(refs))
    (root / "refcoco" / "instances.json").write_text(json.dumps(inst))


@pytest.mark.parametrize("name", ["u/../../victim", "../x", ".build", ".", "..", "", "a b", "a\\b", "x/y", "\x00", 3, None])
def test_unsafe_names_refused(name):
    assert not is_safe_name(name)
    with pytest.raises(DataError, match="split"):
        safe_name(name, "split")


@pytest.mark.parametrize("name", ["train", "testA", "val", "train+val", "umd-1", "a_b"])
def test_safe_names_accepted(name):
    assert safe_name(name, "split") == name


def test_inside(tmp_path):
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "outside.jpg").write_bytes(b"x")
    (tmp_path / "root" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    assert inside(tmp_path / "root", "sub/a.jpg") == tmp_path / "root" / "sub/a.jpg"
    for bad in ("../outside.jpg", "sub/../../outside.jpg", str(tmp_path / "outside.jpg"), "link.jpg", "", "a\x00b", None, 7):
        assert inside(tmp_path / "root", bad) is None, bad


def test_split_names_that_are_paths_never_leave_out(tmp_path):
    """Issue 15 item 1: a split named u/../../…/victim or .build is counted, nothing is written
    outside --out, an existing file there is untouched, and the build state is not deleted."""
    root = tmp_path / "data"
    src = make_refer_root(root, images_per_split=2)
    refs = src["refs"]
    victim = tmp_path / "victim-000000.tar"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    refs[0]["split"] = "u/../../../victim"
    refs[1]["split"] = ".build"
    refs[2]["split"] = "../escape"
    _rewrite(root, refs, src["instances"])
    manifest = build(BuildConfig(dataset="unc", out=out, data_root=root), progress=False)
    assert manifest["skipped"]["bad_split_name"] == 3
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out", "victim-000000.tar"]
    assert sorted(manifest["splits"]) == ["testA", "testB", "train", "val"]
    assert all(".." not in str(p.relative_to(out)) for p in out.rglob("*"))


def test_image_file_names_that_leave_the_image_root_are_counted(tmp_path):
    root = tmp_path / "data"
    src = make_refer_root(root, images_per_split=2)
    inst = src["instances"]
    secret = tmp_path / "secret.jpg"
    img_dir = root / "images/mscoco/images/train2014"
    secret.write_bytes((img_dir / inst["images"][0]["file_name"]).read_bytes())
    inst["images"][0]["file_name"] = "../../../../../secret.jpg"
    inst["images"][2]["file_name"] = str(secret)
    _rewrite(root, src["refs"], inst)
    manifest = build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=root), progress=False)
    assert manifest["skipped"]["unsafe_path"] == 2
    assert manifest["totals"]["images"] == 4 * 2 - 2


def test_build_where_every_image_is_skipped_fails(tmp_path):
    """Issue 15 item 6: a wrong --image-root skips every image; no manifest, one-line error."""
    root = tmp_path / "data"
    make_refer_root(root, images_per_split=1)
    with pytest.raises(DataError, match="every image was skipped .*missing_image"):
        build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=root, image_root=tmp_path / "nowhere"), progress=False)
    assert not (tmp_path / "out" / "unc" / "manifest.json").exists()


@pytest.mark.parametrize("field,value", [("grad_clip", -1.0), ("aux_weight", -0.5), ("grad_clip", float("nan")),
                                         ("aux_weight", float("inf"))])
def test_train_refuses_negative_clip_and_weight(field, value):
    from dmn_train.train import TrainConfig

    with pytest.raises(ValueError, match=f"--{field.replace('_', '-')} must be a finite number >= 0"):
        TrainConfig(shards="x", **{field: value})


@pytest.mark.parametrize("field,value", [("size", 0), ("grid", -1), ("batch_size", 0), ("workers", -1)])
def test_eval_refuses_nonsense_numbers(field, value):
    from dmn_train.evaluate import EvalConfig

    with pytest.raises(ValueError, match=f"--{field.replace('_', '-')} must be >= "):
        EvalConfig(split="val", **{field: value})


def _one_byte_changed(tar: Path) -> None:
    """Change one digit inside a sample's JSON (a token id or an RLE character): same size, valid tar."""
    data = bytearray(tar.read_bytes())
    at = data.index(b'"ids": [') + len(b'"ids": [') if b'"ids": [' in data else data.index(b'"ids":[') + len(b'"ids":[')
    data[at] = ord("1") if data[at] != ord("1") else ord("2")
    tar.write_bytes(bytes(data))


def test_changed_shard_fails_its_sha256_as_it_is_read(tmp_path):
    """Issue 15 item 4: one changed token id trains with exit 0 unless the stream checks the sha256."""
    from dmn_data.stream import make_loader
    from shardgen import write_dataset

    ddir = write_dataset(tmp_path, splits={"train": 2, "val": 2}, shard_size=2)
    _one_byte_changed(next((ddir / "val").glob("*.tar")))
    with pytest.raises(DataError, match="does not match the sha256"):
        list(make_loader(ddir, "val", size=32, batch_size=2, train=False, workers=0))
    # the documented way out: skip the check (the data is then read as it is)
    assert list(make_loader(ddir, "val", size=32, batch_size=2, train=False, workers=0, verify_sha256=False))


def test_val_shards_renamed_to_test_are_refused(tmp_path):
    """Issue 15 item 4: val shards placed under the test split's name score as "test" unless each
    sample's split is checked."""
    from dmn_data.stream import make_loader
    from shardgen import write_dataset

    ddir = write_dataset(tmp_path, splits={"train": 2, "val": 2}, shard_size=2)
    manifest = json.loads((ddir / "manifest.json").read_text())
    manifest["splits"]["test"] = manifest["splits"]["val"]
    (ddir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="belongs to split 'val', read as 'test'"):
        list(make_loader(ddir, "test", size=32, batch_size=2, train=False, workers=0, verify_sha256=False))


def test_manifest_shard_name_outside_the_dataset_is_refused(tmp_path):
    from dmn_data.stream import make_loader
    from shardgen import write_dataset

    ddir = write_dataset(tmp_path, splits={"train": 2, "val": 2}, shard_size=2)
    manifest = json.loads((ddir / "manifest.json").read_text())
    manifest["splits"]["val"]["shards"][0]["name"] = "../../etc/passwd"
    del manifest["splits"]["train"]["shards"][0]["name"]
    (ddir / "manifest.json").write_text(json.dumps(manifest))
    for split in ("val", "train"):
        with pytest.raises(DataError, match="no valid name inside"):
            make_loader(ddir, split, size=32, batch_size=2, train=False, workers=0)


def _rewrite_shard_with(ddir: Path, extra) -> Path:
    """Rewrite the first val shard with ``extra(tar)`` appended after its members, and fix its
    sha256 and size in the manifest, so only the tar's structure is wrong."""
    import hashlib
    import io
    import tarfile

    shard = next((ddir / "val").glob("*.tar"))
    with tarfile.open(shard) as src:
        members = [(m, src.extractfile(m).read()) for m in src]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data))
        extra(tar, members)
    shard.write_bytes(buf.getvalue())
    manifest = json.loads((ddir / "manifest.json").read_text())
    for e in manifest["splits"]["val"]["shards"]:
        if e["name"] == f"val/{shard.name}":
            e["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
            e["bytes"] = len(buf.getvalue())
    (ddir / "manifest.json").write_text(json.dumps(manifest))
    return shard


def _duplicate_last(tar, members):
    import io

    m, data = members[-1]
    tar.addfile(m, io.BytesIO(data))


def _symlink(tar, members):
    import tarfile

    m = tarfile.TarInfo(members[-1][0].name.split(".")[0] + ".txt")
    m.type, m.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tar.addfile(m)


def _directory(tar, members):
    import tarfile

    m = tarfile.TarInfo("zzz")
    m.type = tarfile.DIRTYPE
    tar.addfile(m)


def _special(kind):
    def add(tar, members):
        import tarfile

        m = tarfile.TarInfo(members[-1][0].name.split(".")[0] + ".txt")
        m.type = kind
        m.linkname = members[0][0].name if kind == tarfile.LNKTYPE else ""
        tar.addfile(m)

    return add


def _hardlink(tar, members):
    import tarfile

    _special(tarfile.LNKTYPE)(tar, members)


def _fifo(tar, members):
    import tarfile

    _special(tarfile.FIFOTYPE)(tar, members)


def _sample_again(tar, members):
    """The first sample's members again, after another sample: a non-adjacent duplicate key."""
    import io

    for m, data in members[:2]:
        tar.addfile(m, io.BytesIO(data))


def _no_extension(tar, members):
    import io
    import tarfile

    m = tarfile.TarInfo("README")
    m.size = 2
    tar.addfile(m, io.BytesIO(b"hi"))


def _extra_member(tar, members):
    import io
    import tarfile

    m = tarfile.TarInfo(members[-1][0].name.split(".")[0] + ".txt")
    m.size = 2
    tar.addfile(m, io.BytesIO(b"hi"))


_TAR_ATTACKS = {"duplicate": _duplicate_last, "symlink": _symlink, "directory": _directory, "hardlink": _hardlink,
                "fifo": _fifo, "non_adjacent_duplicate_key": _sample_again, "no_extension": _no_extension,
                "extra_member": _extra_member}


@pytest.mark.parametrize("attack", sorted(_TAR_ATTACKS))
def test_verify_refuses_what_training_refuses(tmp_path, attack):
    """Issue 15 items 4 and 9: a tar with a duplicate member name, a sample key twice (adjacent
    or not), a symlink, hardlink, directory or FIFO, a member not named <key>.<ext> or a member too
    many is refused by verify, show and the training stream alike, with one line and no traceback."""
    extra = _TAR_ATTACKS[attack]
    from typer.testing import CliRunner

    from dmn_data.cli import app
    from dmn_data.stream import make_loader
    from shardgen import write_dataset

    ddir = write_dataset(tmp_path, splits={"train": 2, "val": 2}, shard_size=2)
    _rewrite_shard_with(ddir, extra)
    r = CliRunner().invoke(app, ["verify", str(ddir), "--no-progress"])
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit), r.output
    r = CliRunner().invoke(app, ["show", str(ddir), "--split", "val", "-n", "50", "-o", str(tmp_path / "g.png")])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit) and r.output.count("error:") == 1, r.output
    with pytest.raises(DataError):
        list(make_loader(ddir, "val", size=32, batch_size=2, train=False, workers=0))


@pytest.mark.parametrize("counts,ok", [("52207", True), ("5220", False), ("522071", False), ("52\u00e907", False),
                                       ([5, 2, 2, 0, 7], False), ([5, 2, 2, 2, 9], True), ([5, -2, 2, 2, 13], False)])
def test_rle_counts_checked_against_h_w(counts, ok):
    """Issue 15 items 5 and 9: too few/many runs, negative runs and non-ASCII counts are bad_rle."""
    from dmn_data.errors import SkipItem
    from dmn_data.masks import check_rle_counts

    if ok:
        check_rle_counts(counts, 4, 5)
    else:
        with pytest.raises(SkipItem, match="bad_rle"):
            check_rle_counts(counts, 4, 5)


def test_build_counts_rle_with_wrong_run_total(tmp_path):
    root = tmp_path / "data"
    src = make_refer_root(root, images_per_split=2, rle=True)
    inst = src["instances"]
    inst["annotations"][0]["segmentation"]["counts"] = inst["annotations"][0]["segmentation"]["counts"][:-2]
    inst["annotations"][2]["segmentation"]["counts"] += "1"
    _rewrite(root, src["refs"], inst)
    manifest = build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=root), progress=False)
    assert manifest["skipped"]["bad_rle"] == 2


def test_stale_checkpoint_tmp_files_removed_live_ones_kept(tmp_path):
    """Issue 15 item 8: kill -9 while writing a checkpoint leaves .last.pt.<pid>.tmp forever."""
    import os
    import subprocess
    import sys

    from dmn_train.train import _remove_stale_tmp

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".last.pt.{dead_pid}.tmp").write_bytes(b"x")
    (tmp_path / ".best.pt.tmp").write_bytes(b"x")
    (tmp_path / f".last.pt.{os.getppid()}.tmp").write_bytes(b"x")  # a live process: kept
    (tmp_path / "last.pt").write_bytes(b"keep")
    _remove_stale_tmp(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".last.pt.{os.getppid()}.tmp", "last.pt"])


def test_truncated_metrics_jsonl_names_the_file(tmp_path):
    from dmn_train.train import _read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not a metrics row .*delete that line"):
        _read_metrics(path, 5)


def test_blank_and_invisible_tokens_stay_out_of_the_vocabulary():
    """Issue 15 item 7 (vocabulary part)."""
    from dmn_data.tokens import build_vocab

    vocab = build_vocab([["man", " ", "", "\u200b", "\u00a0", "\t", "caf\u00e9", "\u200bdog"]])
    assert vocab[2:] == sorted(["man", "caf\u00e9", "\u200bdog"])


# ---- item 2: dmn-data download extraction --------------------------------------------------------

def _zip_bytes(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    import io
    import stat
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return buf.getvalue()


def _tar_bytes(members: list) -> bytes:
    """``members``: (name, kind, payload-or-linkname) with kind in file/dir/sym/hard/fifo."""
    import io
    import tarfile

    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
             "fifo": tarfile.FIFOTYPE}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.linkname = payload or ""
                tar.addfile(info)
    return buf.getvalue()


_BAD_ARCHIVES = {
    "zip_dotdot": lambda: _zip_bytes({"refcoco/ok.txt": b"x", "refcoco/../../evil.txt": b"x"}),
    "zip_absolute": lambda: _zip_bytes({"/tmp/evil.txt": b"x"}),
    "zip_symlink": lambda: _zip_bytes({"refcoco/ok.txt": b"x"}, links={"refcoco/link": "/etc/passwd"}),
    "zip_bomb": lambda: _zip_bytes({"refcoco/zeros.bin": bytes(4_000_000)}),
    "tar_dotdot": lambda: _tar_bytes([("refcoco/../../evil.txt", "file", b"x")]),
    "tar_absolute": lambda: _tar_bytes([("/tmp/evil.txt", "file", b"x")]),
    "tar_symlink": lambda: _tar_bytes([("refcoco", "dir", None), ("refcoco/link", "sym", "/etc")]),
    "tar_hardlink": lambda: _tar_bytes([("refcoco/h", "hard", "/etc/passwd")]),
    "tar_fifo": lambda: _tar_bytes([("refcoco/fifo", "fifo", None)]),
    "tar_bomb": lambda: _tar_bytes([("refcoco/zeros.bin", "file", bytes(4_000_000))]),
}


@pytest.mark.parametrize("kind", sorted(_BAD_ARCHIVES))
def test_extract_refuses_unsafe_members_and_bombs_before_writing(tmp_path, kind):
    """Issue 15 items 1 and 2: archive members that are absolute, contain '..', are links or FIFOs,
    or a total size far beyond the archive's, are refused from the headers: nothing is written."""
    from dmn_data.download import extract_checked

    archive = tmp_path / "a" / "archive.bin"
    archive.parent.mkdir()
    archive.write_bytes(_BAD_ARCHIVES[kind]())
    dest = tmp_path / "a" / "dest"
    dest.mkdir()
    with pytest.raises(DataError, match="refusing to extract"):
        extract_checked(archive, dest)
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "archive.bin", "dest"]


def test_extract_accepts_plain_zip_and_tar(tmp_path):
    from dmn_data.download import extract_checked

    files = {"refcoco/a.txt": b"alpha", "refcoco/sub/b.txt": b"beta" * 100}
    for name, data in (("x.zip", _zip_bytes(files)),
                       ("x.tar.gz", _tar_bytes([(n, "file", d) for n, d in files.items()]))):
        (tmp_path / name).write_bytes(data)
        dest = tmp_path / (name + ".out")
        dest.mkdir()
        assert extract_checked(tmp_path / name, dest) == 405
        assert {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == files


def _placed_archives(root: Path, monkeypatch, extra: dict[str, bytes] | None = None) -> None:
    """refcoco.zip and train2014.zip made from a REFER fixture and put where ``dmn-data download``
    looks first (``<root>/downloads/``), with no checksum: nothing is fetched from any network."""
    import dataclasses

    from dmn_data import sources

    src = root.parent / "refer-src"
    make_refer_root(src, images_per_split=1)
    trees = {"refcoco.zip": (src / "refcoco", "refcoco"),
             "train2014.zip": (src / "images/mscoco/images/train2014", "train2014")}
    (root / "downloads").mkdir(parents=True)
    table = dict(sources.ARCHIVES)
    for name, (folder, prefix) in trees.items():
        data = (extra or {}).get(name) or _zip_bytes({f"{prefix}/{p.name}": p.read_bytes() for p in folder.iterdir()})
        (root / "downloads" / name).write_bytes(data)
        table[name] = dataclasses.replace(table[name], size=len(data), known_hash=None, urls=("http://127.0.0.1:9/none",))
    monkeypatch.setattr(sources, "ARCHIVES", table)


def test_download_with_the_default_relative_data_root(tmp_path, monkeypatch):
    """Issue 15 item 2: with --data-root data (the default) pooch extracted into
    data/downloads/data/downloads/.extract-* and reported an empty archive."""
    from typer.testing import CliRunner

    from dmn_data.cli import app

    monkeypatch.chdir(tmp_path)
    _placed_archives(Path("data"), monkeypatch)
    leftover = tmp_path / "data/downloads/data/downloads/.extract-train2014.zip-x1y2/train2014"
    leftover.mkdir(parents=True)  # what an earlier version left behind, one full copy per attempt
    (leftover / "a.jpg").write_bytes(b"x" * 1000)
    r = CliRunner().invoke(app, ["download", "--dataset", "unc", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "removed 1 leftover extraction folder(s)" in r.output and not (tmp_path / "data/downloads/data").exists()
    assert "next: dmn-data build --dataset unc --data-root data" in r.output
    assert (tmp_path / "data/refcoco/refs(unc).p").is_file()
    assert len(list((tmp_path / "data/images/mscoco/images/train2014").glob("*.jpg"))) == 4
    assert sorted(p.name for p in (tmp_path / "data/downloads").iterdir()) == ["refcoco.zip.json", "train2014.zip.json"]


def test_download_refuses_a_zip_bomb_with_one_line_and_no_leftovers(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dmn_data.cli import app

    monkeypatch.chdir(tmp_path)
    _placed_archives(Path("data"), monkeypatch, extra={"refcoco.zip": _zip_bytes({"refcoco/z": bytes(2_000_000)})})
    r = CliRunner().invoke(app, ["download", "--dataset", "unc", "--no-progress"])
    assert r.exit_code == 2 and r.exception is None or isinstance(r.exception, SystemExit), r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "refcoco.zip" in errors[0] and "--max-expansion" in errors[0], r.output
    assert not (tmp_path / "data/refcoco").exists()
    assert not list(tmp_path.rglob(".extract-*"))
    r = CliRunner().invoke(app, ["download", "--dataset", "unc", "--no-progress", "--max-expansion", "100000"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "data/refcoco/z").stat().st_size == 2_000_000


# ---- item 3: nothing waits forever ---------------------------------------------------------------

def test_build_whose_worker_is_killed_fails_with_one_line_and_resumes(tmp_path, monkeypatch):
    """Issue 15 item 3: a shard-writing process killed by the OOM killer (SIGKILL) used to leave
    the build waiting forever. Now it fails with one line and the rerun finishes the same bytes."""
    import os
    import signal
    import sys

    from dmn_data.build import ToyOptions

    build_module = sys.modules["dmn_data.build"]  # dmn_data.build is also the name of the function

    toy = ToyOptions(train=6, val=2, test=2, size=64)
    clean = build(BuildConfig(dataset="toy", out=tmp_path / "clean", shard_size=2, workers=1, toy=toy), progress=False)
    real = build_module.write_shard

    def dies_on_the_second_train_shard(task):
        if task.path.endswith("train-000001.tar"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(task)

    monkeypatch.setattr(build_module, "write_shard", dies_on_the_second_train_shard)
    cfg = BuildConfig(dataset="toy", out=tmp_path / "out", shard_size=2, workers=2, toy=toy)
    with pytest.raises(DataError, match="process died .*rerun the same command to resume"):
        build(cfg, progress=False)
    assert not (tmp_path / "out/toy/manifest.json").exists()
    monkeypatch.setattr(build_module, "write_shard", real)
    assert build(cfg, progress=False)["splits"] == clean["splits"]


def _rewrite_samples(ddir: Path, split: str, change, *, fix_counts: bool = True) -> None:
    """Apply ``change(meta) -> meta`` to every sample of ``split`` and fix each shard's sha256 and
    size in the manifest (and its refs/sentences counts when ``fix_counts``), so only what
    ``change`` did is wrong."""
    import hashlib
    import io
    import tarfile

    manifest = json.loads((ddir / "manifest.json").read_text())
    for entry in manifest["splits"][split]["shards"]:
        path = ddir / entry["name"]
        with tarfile.open(path) as src:
            members = [(m, src.extractfile(m).read()) for m in src]
        buf, refs, sentences = io.BytesIO(), 0, 0
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for m, data in members:
                if m.name.endswith(".json"):
                    meta = change(json.loads(data))
                    if isinstance(meta, bytes):  # raw JSON text, as is
                        data = meta
                    else:
                        refs += len(meta["refs"])
                        sentences += sum(len(r["sentences"]) for r in meta["refs"])
                        data = json.dumps(meta).encode()
                    m.size = len(data)
                tar.addfile(m, io.BytesIO(data))
        path.write_bytes(buf.getvalue())
        entry.update(sha256=hashlib.sha256(buf.getvalue()).hexdigest(), bytes=len(buf.getvalue()))
        if fix_counts:
            entry.update(refs=refs, sentences=sentences)
    if fix_counts:
        for key in ("refs", "sentences"):
            manifest["splits"][split][key] = sum(e[key] for e in manifest["splits"][split]["shards"])
    (ddir / "manifest.json").write_text(json.dumps(manifest))


def _no_refs(meta):
    return {**meta, "refs": []}


class _Deadline:
    """Fail a test that would wait forever (the bug) instead of hanging CI."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def __enter__(self):
        import signal

        def timeout(*_):
            raise TimeoutError(f"still waiting after {self.seconds} s")

        self.previous = signal.signal(signal.SIGALRM, timeout)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        import signal

        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.previous)


def test_training_stream_over_shards_without_sentences_fails_instead_of_waiting(tmp_path):
    """Issue 15 item 3: samples without refs behind a manifest that promises sentences made the
    endless training stream resample them forever."""
    from dmn_data.stream import make_loader
    from shardgen import write_dataset

    ddir = write_dataset(tmp_path, splits={"train": 4, "val": 2}, shard_size=2)
    _rewrite_samples(ddir, "train", _no_refs, fix_counts=False)
    with _Deadline(60), pytest.raises(DataError, match="holds 0 sentences, its manifest says"):
        next(iter(make_loader(ddir, "train", size=32, batch_size=2, train=True, workers=0)))


def test_split_without_sentences_is_refused_up_front(tmp_path):
    from typer.testing import CliRunner

    from dmn_data.stream import make_loader
    from dmn_train.cli_train import app
    from shardgen import write_dataset

    ddir = write_dataset(tmp_path, splits={"train": 4, "val": 2}, shard_size=2)
    _rewrite_samples(ddir, "train", _no_refs)
    with pytest.raises(DataError, match="split 'train' of .* holds no sentence"):
        make_loader(ddir, "train", size=32, batch_size=2, train=True, workers=0)
    with _Deadline(120):
        r = CliRunner().invoke(app, ["--shards", str(ddir), "--preset", "tiny", "--size", "32", "--steps", "2",
                                     "--workers", "0", "--no-progress", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "holds no sentence" in r.output, r.output


def _tiny_checkpoint(ddir: Path, path: Path) -> Path:
    """A freshly initialised tiny DMN saved as dmn-train would: enough for dmn-eval."""
    import dataclasses
    import hashlib

    import torch

    from dmn_model.checkpoint import save_checkpoint
    from dmn_model.config import preset
    from dmn_model.network import DMN

    vocab = json.loads((ddir / "vocab.json").read_text())
    cfg = preset("tiny")
    torch.manual_seed(0)
    save_checkpoint(path, {"model": DMN(cfg, len(vocab)).state_dict(), "model_config": dataclasses.asdict(cfg),
                           "vocab_sha256": hashlib.sha256((ddir / "vocab.json").read_bytes()).hexdigest(),
                           "vocab_size": len(vocab), "train_config": {"shards": str(ddir), "size": 32}})
    return path


def test_evaluating_zero_sentences_is_an_error(tmp_path):
    """Issue 15 item 3: 0 sentences evaluated used to report metrics and exit 0."""
    from typer.testing import CliRunner

    from dmn_train.cli_eval import app
    from shardgen import write_dataset

    ddir = write_dataset(tmp_path, splits={"train": 2, "val": 3}, shard_size=2)
    _rewrite_samples(ddir, "val", lambda meta: {**meta, "refs": meta["refs"][:1]})  # one ref per image
    ckpt = _tiny_checkpoint(ddir, tmp_path / "ck" / "model.pt")
    args = ["--split", "val", "--checkpoint", str(ckpt), "--workers", "0", "--no-progress", "--grid", "0",
            "--out", str(tmp_path / "eval")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, [*args, "--ablate-language", "--out", str(tmp_path / "ablate")])
    assert r.exit_code == 2 and "no sentence of 'val'" in r.output and "two or more refs" in r.output, r.output
    assert not (tmp_path / "ablate" / "metrics.json").exists()
    assert not list((tmp_path / "ablate").glob(".predictions*"))


# ---- item 8: clobbering --------------------------------------------------------------------------

def _digest(folder: Path) -> dict:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_replaces_the_old_build_only_after_the_new_one_succeeded(tmp_path):
    root = tmp_path / "data"
    make_refer_root(root, images_per_split=2)
    out = tmp_path / "out"
    build(BuildConfig(dataset="unc", out=out, data_root=root), progress=False)
    before = _digest(out / "unc")
    failing = BuildConfig(dataset="unc", out=out, data_root=root, shard_size=1, overwrite=True, image_root=tmp_path / "nowhere")
    with pytest.raises(DataError, match="every image was skipped"):
        build(failing, progress=False)
    assert _digest(out / "unc") == before  # the old, complete build is untouched
    manifest = build(BuildConfig(dataset="unc", out=out, data_root=root, shard_size=1, overwrite=True), progress=False)
    assert manifest["options"]["shard_size"] == 1 and len(list((out / "unc/train").glob("*.tar"))) == 2
    assert sorted(p.name for p in out.iterdir()) == [".unc.lock", "unc"]  # no staging or replaced copy left


def test_overwrite_never_deletes_a_folder_that_is_not_a_build(tmp_path):
    root = tmp_path / "data"
    make_refer_root(root, images_per_split=1)
    (tmp_path / "out/unc").mkdir(parents=True)
    (tmp_path / "out/unc/thesis.tex").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(DataError, match="is not a dmn-data build; it is left as it is") as err:
            build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=root, overwrite=overwrite), progress=False)
        assert "--overwrite" not in str(err.value)
    assert (tmp_path / "out/unc/thesis.tex").read_text() == "years of work"


def test_second_concurrent_build_into_the_same_folder_fails_with_one_line(tmp_path):
    import fcntl

    root = tmp_path / "data"
    make_refer_root(root, images_per_split=1)
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out/.unc.lock", "a") as held:  # what the first build holds while it runs
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DataError, match="another dmn-data build is writing"):
            build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=root), progress=False)
    assert not (tmp_path / "out/unc").exists()
    assert build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=root), progress=False)["totals"]["images"] == 4


def test_train_into_a_folder_that_is_not_a_run_writes_nothing(tmp_path):
    """Issue 15 items 8 and 9: --out into a foreign folder overwrote its config.json and the
    parent's latest before failing; --out that is a file gave a traceback."""
    from typer.testing import CliRunner

    from dmn_train.cli_train import app
    from shardgen import write_dataset

    ddir = write_dataset(tmp_path / "shards", splits={"train": 2, "val": 2}, shard_size=2)
    parent = tmp_path / "work"
    (parent / "project").mkdir(parents=True)
    (parent / "project/config.json").write_text('{"my": "settings"}')
    (parent / "latest").write_text("older-run\n")
    (parent / "notes.txt").write_text("a file")
    before = _digest(parent)
    for target in (parent / "project", parent / "notes.txt"):
        r = CliRunner().invoke(app, ["--shards", str(ddir), "--preset", "tiny", "--size", "32", "--steps", "1",
                                     "--workers", "0", "--no-progress", "--out", str(target)])
        assert r.exit_code == 2 and r.output.count("error:") == 1, r.output
        assert ("not a dmn-train run" in r.output) if target.is_dir() else ("is a file" in r.output), r.output
    assert _digest(parent) == before and sorted(p.name for p in parent.iterdir()) == ["latest", "notes.txt", "project"]


def test_eval_out_that_is_a_file_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from dmn_train.cli_eval import app
    from shardgen import write_dataset

    ddir = write_dataset(tmp_path, splits={"train": 2, "val": 2}, shard_size=2)
    ckpt = _tiny_checkpoint(ddir, tmp_path / "ck" / "model.pt")
    (tmp_path / "out.txt").write_text("x")
    r = CliRunner().invoke(app, ["--split", "val", "--checkpoint", str(ckpt), "--workers", "0", "--no-progress",
                                 "--out", str(tmp_path / "out.txt")])
    assert r.exit_code == 2 and "is a file" in r.output, r.output
    assert (tmp_path / "out.txt").read_text() == "x"


def test_build_out_that_is_a_file_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from dmn_data.cli import app

    (tmp_path / "out").write_text("x")
    r = CliRunner().invoke(app, ["build", "--out", str(tmp_path / "out"), "--toy-train", "2", "--toy-val", "1",
                                 "--toy-test", "1", "--toy-size", "64", "--workers", "1", "--no-progress"])
    assert r.exit_code == 2 and "is a file" in r.output and "Traceback" not in r.output, r.output


# ---- item 7: text ------------------------------------------------------------------------------

def test_one_invalid_utf8_string_falls_back_alone_and_is_counted(tmp_path):
    """Issue 15 item 7: one invalid byte made the whole refs file decode as latin-1 ("café" became
    "cafÃ©" everywhere, in the vocabulary too). Now only that string falls back, and it is counted."""
    root = tmp_path / "data"
    src = make_refer_root(root, images_per_split=2)
    refs = src["refs"]
    for ref in refs:
        for s in ref["sentences"]:
            s.update(tokens=["café", "man"], raw="café man", sent="café man")
    refs[-1]["sentences"][0].update(tokens=["naïve", "ZZ"], raw="naïve ZZ", sent="naïve ZZ")
    data = py2_pickle(refs)
    assert data.count(b"ZZ") == 3
    (root / "refcoco" / "refs(unc).p").write_bytes(data.replace(b"ZZ", b"\xe9\xe9"))  # not UTF-8: only these 3 strings
    manifest = build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=root, splits=("train",)), progress=False)
    vocab = json.loads((tmp_path / "out/unc/vocab.json").read_text())
    assert "café" in vocab and "cafÃ©" not in vocab
    assert manifest["latin1_strings"]["count"] == 3
    assert repr("naïve ".encode() + b"\xe9\xe9") in manifest["latin1_strings"]["examples"]


def test_valid_files_report_no_latin1(tmp_path):
    from dmn_data.pickles import TextReport, load_plain_pickle

    (tmp_path / "r.p").write_bytes(py2_pickle([{"raw": "café", "tokens": ["café"]}]))
    report = TextReport()
    assert load_plain_pickle(tmp_path / "r.p", report) == [{"raw": "café", "tokens": ["café"]}]
    assert report.latin1 == 0


# ---- item 9: tracebacks where one line is promised -----------------------------------------------

_BAD_PICKLES = {
    "build_on_dict": b"\x80\x02}}b.",
    "append_on_dict": b"\x80\x02}K\x01a.",
    "appends_on_str": b"\x80\x02U\x01a(K\x01e.",
    "setitem_on_list": b"\x80\x02]K\x01K\x02s.",
    "huge_length": b"\x80\x02T\xff\xff\xff\x7f",
    # a non-UTF-8 string at the bottom: the string-by-string walk must not blow the stack
    "deep_nesting": b"\x80\x02" + b"]" * 200_000 + b"U\x01\xe9" + b"a" * 200_000 + b".",
    "global": b"\x80\x02cos\nsystem\nq\x00.",
}


@pytest.mark.parametrize("kind", sorted(_BAD_PICKLES))
def test_malformed_refs_pickles_are_one_line(tmp_path, kind):
    from dmn_data.pickles import load_plain_pickle

    (tmp_path / "r.p").write_bytes(_BAD_PICKLES[kind])
    with pytest.raises(DataError, match="not a readable refs pickle"):
        load_plain_pickle(tmp_path / "r.p")


@pytest.mark.parametrize("field,value", [("ref_id", [1]), ("sentences", {"a": 1}), ("sentences", [{"raw": 5, "tokens": None,
                         "sent_id": 1}]), ("sentences", [{"raw": "a man", "tokens": ["a", "man"], "sent_id": "x"}]),
                         ("image_id", None), ("category_id", "cat"), ("ann_id", {"x": 1}), ("sentences", "abc")])
def test_ref_fields_of_the_wrong_type_are_counted(tmp_path, field, value):
    root = tmp_path / "data"
    src = make_refer_root(root, images_per_split=2)
    src["refs"][0][field] = value
    _rewrite(root, src["refs"], src["instances"])
    manifest = build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=root), progress=False)
    reasons = manifest["skipped"]
    assert reasons.get("malformed_ref", 0) + reasons.get("missing_annotation", 0) + reasons.get("missing_image_entry", 0) \
        + reasons.get("no_sentences", 0) >= 1, reasons


@pytest.mark.parametrize("change,reason", [
    (lambda inst: inst["images"][0].update(width="wide"), "malformed_image"),
    (lambda inst: inst["images"][0].update(width="640"), "malformed_image"),
    (lambda inst: inst["images"][0].update(height=None), "malformed_image"),
    (lambda inst: inst["annotations"][0].update(bbox=None), "malformed_ref"),
    (lambda inst: inst["annotations"][0].update(bbox=["a", 1, 2, 3]), "malformed_ref"),
])
def test_instances_fields_of_the_wrong_type_are_counted(tmp_path, change, reason):
    """Issue 15 item 9: instances.json with a string width or a null bbox gave a traceback."""
    root = tmp_path / "data"
    src = make_refer_root(root, images_per_split=2)
    change(src["instances"])
    _rewrite(root, src["refs"], src["instances"])
    manifest = build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=root), progress=False)
    assert manifest["skipped"].get(reason, 0) >= 1, manifest["skipped"]


@pytest.mark.parametrize("segmentation", [None, "polygon?", {"size": [1, 2]}, {"counts": 5, "size": "x"},
                                          [[1, 2, "a", 4, 5, 6]], {"size": [4, 5], "counts": "52\u00e907"}])
def test_segmentations_of_the_wrong_shape_are_counted(tmp_path, segmentation):
    root = tmp_path / "data"
    src = make_refer_root(root, images_per_split=2)
    src["instances"]["annotations"][0]["segmentation"] = segmentation
    _rewrite(root, src["refs"], src["instances"])
    manifest = build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=root), progress=False)
    assert sum(manifest["skipped"].values()) >= 1, manifest["skipped"]


def test_deeply_nested_instances_json_is_one_line(tmp_path):
    root = tmp_path / "data"
    make_refer_root(root, images_per_split=1)
    (root / "refcoco" / "instances.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="not a COCO instances file"):
        build(BuildConfig(dataset="unc", out=tmp_path / "out", data_root=root), progress=False)


# ---- item 5: every image mode decodes to the right RGB pixels, or is counted -------------------

W5, H5 = 24, 16


def _gradient(mode: str):
    """A smooth image of ``mode`` (smooth so that JPEG stays close to it)."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:H5, 0:W5]
    r, g, b = xx * 255 // (W5 - 1), yy * 255 // (H5 - 1), (xx + yy) * 255 // (W5 + H5 - 2)
    rgb = Image.fromarray(np.stack([r, g, b], -1).astype(np.uint8), "RGB")
    if mode in ("I", "I;16"):
        sixteen = Image.fromarray((xx * 65535 // (W5 - 1)).astype(np.uint16))  # mode I;16
        return sixteen.convert("I") if mode == "I" else sixteen
    if mode == "F":
        return Image.fromarray((xx / (W5 - 1)).astype(np.float32), "F")
    if mode == "PA":
        return rgb.convert("P").convert("PA")
    return rgb.convert(mode)


def _png(depth: int, ctype: int, rows) -> bytes:
    """A PNG written by hand: 16-bit colour and greyscale, which PIL cannot save."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W5, H5, depth, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _sixteen_bit_pngs():
    """(name, PNG bytes, expected (H, W, 3) uint8): 16-bit grey, grey+alpha, RGB, RGBA; the
    expected pixels are the high bytes, alpha dropped."""
    import numpy as np

    yy, xx = np.mgrid[0:H5, 0:W5]
    v = (xx * 65535 // (W5 - 1) ^ yy * 37).astype(np.uint16)  # uses the low byte too
    alpha = np.full_like(v, 65535)
    out = []
    for name, ctype, channels in (("grey16", 0, [v]), ("greyalpha16", 4, [v, alpha]),
                                  ("rgb16", 2, [v, v[::-1], 65535 - v]), ("rgba16", 6, [v, v[::-1], 65535 - v, alpha])):
        data = np.stack(channels, -1).astype(">u2")
        colour = channels[:3] if len(channels) >= 3 else [v, v, v]
        out.append((name, _png(16, ctype, data), (np.stack(colour, -1) >> 8).astype(np.uint8)))
    return out


_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA", "I", "I;16", "F"]


def _through_build_and_stream(data: bytes):
    """The image as the build checks it (SkipItem if refused) and as the stream decodes it."""
    from dmn_data.records import ImageItem
    from dmn_data.transforms import decode_resized
    from dmn_data.writer import _image_bytes

    _image_bytes(ImageItem(image_id=1, file_name="x", split="train", width=W5, height=H5, refs=(), data=data))
    return decode_resized(data, H5, W5, max(H5, W5))


@pytest.mark.parametrize("mode", _MODES)
def test_every_pil_mode_decodes_to_the_right_rgb_or_is_counted(mode):
    """Issue 15 item 5: each mode is stored as PNG and/or JPEG where that format can hold it; what
    the build accepts must decode to the right RGB pixels in the stream. A mode neither format holds
    (written as TIFF) is counted as unsupported_format."""
    import io
    import warnings

    import numpy as np
    from PIL import Image

    from dmn_data.errors import SkipItem

    im = _gradient(mode)
    stored = 0
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 12: saving mode I as PNG
                im.save(buf, format=fmt)
        except (OSError, ValueError):
            continue  # this format cannot hold this mode
        stored += 1
        got = _through_build_and_stream(buf.getvalue())
        assert got.shape == (H5, W5, 3) and got.dtype == np.uint8
        if mode in ("I", "I;16"):
            expected = np.repeat((np.asarray(im).astype(np.int64) >> 8).astype(np.uint8)[..., None], 3, -1)
        elif fmt == "PNG":
            expected = np.asarray(im.convert("RGB"))
        else:  # lossy: against PIL's full decode of the same file, and close to the original
            expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            assert np.abs(got.astype(int) - np.asarray(im.convert("RGB")).astype(int)).mean() < 8, (mode, fmt)
        np.testing.assert_array_equal(got, expected, err_msg=f"{mode} as {fmt}")
    if stored == 0:
        buf = io.BytesIO()
        im.save(buf, format="TIFF")
        with pytest.raises(SkipItem) as err:
            _through_build_and_stream(buf.getvalue())
        assert err.value.reason == "unsupported_format" and "TIFF" in err.value.detail


@pytest.mark.parametrize("index", range(4), ids=["grey16", "greyalpha16", "rgb16", "rgba16"])
def test_sixteen_bit_pngs_decode_to_their_high_byte(index):
    """A 16-bit greyscale PNG (PIL mode I;16) used to clip to white: nearly every pixel 255."""
    import numpy as np

    name, data, expected = _sixteen_bit_pngs()[index]
    np.testing.assert_array_equal(_through_build_and_stream(data), expected, err_msg=name)


@pytest.mark.parametrize("target", ["folder", "unwritable", "unknown_extension"])
def test_show_output_that_cannot_be_written_is_one_line(tmp_path, target):
    """Issue 15 item 9: show -o a folder or an unwritable place gave a traceback."""
    from typer.testing import CliRunner

    from dmn_data.cli import app
    from shardgen import write_dataset

    ddir = write_dataset(tmp_path, splits={"train": 2, "val": 2}, shard_size=2)
    # unwritable: a folder below a file cannot be created, even by root (a chmod would not stop root)
    out = {"folder": tmp_path, "unwritable": tmp_path / "a-file" / "grid.png", "unknown_extension": tmp_path / "grid.xyz"}[target]
    (tmp_path / "a-file").write_text("x")
    r = CliRunner().invoke(app, ["show", str(ddir), "--split", "val", "-o", str(out)])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit) and r.output.count("error:") == 1, r.output
    assert "-o" in r.output


def test_token_ids_past_the_vocabulary_are_refused_by_stream_and_verify(tmp_path):
    """Issue 15 item 9: a token id >= the vocabulary size indexed outside the embedding table."""
    from dmn_data.inspect import verify
    from dmn_data.stream import make_loader
    from shardgen import VOCAB_TOKENS, write_dataset

    ddir = write_dataset(tmp_path, splits={"train": 2, "val": 2}, shard_size=2)

    def past_the_end(meta):
        meta["refs"][0]["sentences"][0]["ids"][0] = len(VOCAB_TOKENS)
        return meta

    _rewrite_samples(ddir, "val", past_the_end)
    with pytest.raises(DataError, match=r"token ids outside \[1, 22\)"):
        list(make_loader(ddir, "val", size=32, batch_size=2, train=False, workers=0))
    assert any("bad token ids" in p for p in verify(ddir, progress=False))


@pytest.mark.parametrize("entry", [{"images": 1}, {"name": "../../etc/passwd", "images": 1}, "just a string",
                                   {"name": "val/tiny-val-000000.tar"}])
def test_malformed_manifest_entries_are_one_line_in_verify_show_and_stream(tmp_path, entry):
    """Issue 15 item 9: a manifest entry without name (or outside the folder, or without counts)."""
    from typer.testing import CliRunner

    from dmn_data.cli import app
    from dmn_data.stream import make_loader
    from shardgen import write_dataset

    ddir = write_dataset(tmp_path, splits={"train": 2, "val": 2}, shard_size=2)
    manifest = json.loads((ddir / "manifest.json").read_text())
    manifest["splits"]["val"]["shards"][0] = entry
    (ddir / "manifest.json").write_text(json.dumps(manifest))
    r = CliRunner().invoke(app, ["verify", str(ddir), "--no-progress"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit) and "manifest.json" in r.output, r.output
    with pytest.raises(DataError, match="manifest.json"):
        make_loader(ddir, "val", size=32, batch_size=2, train=False, workers=0)
    if not (isinstance(entry, dict) and "name" in entry and ".." not in entry["name"]):
        r = CliRunner().invoke(app, ["show", str(ddir), "--split", "val", "-o", str(tmp_path / "g.png")])
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit) and "manifest.json" in r.output, r.output


# ---- item 9: checkpoints -------------------------------------------------------------------------

class _RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("payload,expected", [
    ({"format": "dmn-checkpoint/1", "model": _RunsCode()}, r"was refused and not loaded: it refers to print, .*not trusted"),
    ({"format": "dmn-checkpoint/1", "model": {}}, r"lacks model_config, vocab_sha256, vocab_size, which every dmn checkpoint "
                                                  r"holds; it is incomplete or was not written by dmn-train, and was not used"),
])
def test_refused_checkpoints_say_what_and_why_in_one_whole_line(tmp_path, payload, expected, capsys):
    """Issue 15 item 9: the refusal was cut mid-sentence and read like advice to turn weights_only off."""
    import torch
    from typer.testing import CliRunner

    from dmn_train.cli_eval import app

    path = tmp_path / "model.pt"
    torch.save(payload, path)
    r = CliRunner().invoke(app, ["--split", "val", "--checkpoint", str(path), "--workers", "0", "--no-progress"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    line = " ".join(r.output.split())
    import re

    assert re.search(expected, line), line
    assert "weights_only` set to `False" not in line and "two options" not in line and "pwned" not in r.output
    assert "pwned" not in capsys.readouterr().out


def test_resume_from_a_checkpoint_without_optimizer_state_is_one_line(tmp_path):
    import dataclasses

    from typer.testing import CliRunner

    from dmn_model.config import preset
    from dmn_train.cli_train import app
    from dmn_train.train import train_config
    from shardgen import write_dataset

    ddir = write_dataset(tmp_path / "shards", splits={"train": 4, "val": 2}, shard_size=2)
    run = tmp_path / "run"
    cfg = train_config("tiny", str(ddir), size=32, steps=1, workers=0, progress=False, out=str(run))
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(preset("tiny"))}))
    _tiny_checkpoint(ddir, run / "checkpoints/last.pt")  # weights only: no optimizer, step or RNG state
    r = CliRunner().invoke(app, ["--resume", "--out", str(run), "--steps", "2"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert "lacks optimizer, step, best_val_iou, rng" in " ".join(r.output.split()), r.output


def test_killed_dataloader_worker_is_one_line(tmp_path):
    """Issue 15 item 9: a DataLoader worker killed (OOM killer) gave torch's RuntimeError traceback.

    torch raises it from its SIGCHLD handler in whatever code the main process runs at that
    moment (the loader, or the training step), so this goes through dmn-train. A subprocess: a
    dead worker stays registered with torch's handler while the failed loader lives, and would
    raise again in later tests."""
    import subprocess
    import sys

    from shardgen import write_dataset

    ddir = write_dataset(tmp_path, splits={"train": 4, "val": 2}, shard_size=2)
    script = "\n".join([
        "import os, signal, sys",
        "import dmn_data.stream as stream",
        "real = stream.make_examples",
        "def killed(item, *args):",
        "    if item['image_id'] == 3:  # in the second train shard: a worker dies when it reads it",
        "        os.kill(os.getpid(), signal.SIGKILL)",
        "    return real(item, *args)",
        "stream.make_examples = killed",
        "from dmn_train.cli_train import main",
        f"sys.argv = ['dmn-train', '--shards', {str(ddir)!r}, '--preset', 'tiny', '--size', '32',",
        "            '--batch-size', '2', '--workers', '2', '--steps', '200', '--no-val', '--no-progress',",
        f"            '--out', {str(tmp_path / 'run')!r}]",
        "main()"])
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: a data-loading worker process died") and "--resume" in last, last


def test_deeply_nested_sample_json_is_one_line_in_stream_and_verify(tmp_path):
    """Issue 15 item 9: a sample JSON nested 100,000 deep raised RecursionError."""
    from dmn_data.inspect import verify
    from dmn_data.stream import make_loader
    from shardgen import write_dataset

    ddir = write_dataset(tmp_path, splits={"train": 2, "val": 2}, shard_size=2)
    _rewrite_samples(ddir, "val", lambda meta: b"[" * 100_000 + b"]" * 100_000, fix_counts=False)
    with pytest.raises(DataError, match="bad annotation"):
        list(make_loader(ddir, "val", size=32, batch_size=2, train=False, workers=0))
    assert any("bad JSON (RecursionError" in p for p in verify(ddir, progress=False))


@pytest.mark.parametrize("value", [{"a": [[0, 1]], "b": 1}, "a string", [[0.0, 1.0], "x"], [[1j, 0]]],
                         ids=["struct", "string", "cell", "complex"])
def test_referit_mat_whose_segimg_t_is_not_a_numeric_array_is_counted(tmp_path, value):
    """Issue 15 item 9: a ReferIt .mat whose segimg_t is a struct (or a cell) gave a traceback."""
    import numpy as np
    import scipy.io

    from dmn_data.errors import SkipItem
    from dmn_data.referit import load_mat_mask

    if isinstance(value, list) and any(isinstance(v, str) for v in value):
        value = np.array([np.zeros((2, 2)), "x"], dtype=object)
    scipy.io.savemat(tmp_path / "m.mat", {"segimg_t": value})
    with pytest.raises(SkipItem) as err:
        load_mat_mask(tmp_path / "m.mat")
    assert err.value.reason == "corrupt_mask"


def test_full_disk_during_build_is_one_line_and_resumes(tmp_path, monkeypatch):
    """Issue 15 item 9: a full disk during the build gave a traceback (nothing was lost)."""
    import errno
    import sys

    from typer.testing import CliRunner

    from dmn_data.cli import app

    writer = sys.modules["dmn_data.build"]
    real = writer.write_shard

    def full(task):
        if task.path.endswith("train-000001.tar"):
            raise OSError(errno.ENOSPC, "No space left on device", task.path + ".tmp")
        return real(task)

    monkeypatch.setattr(writer, "write_shard", full)
    args = ["build", "--out", str(tmp_path / "out"), "--toy-train", "4", "--toy-val", "1", "--toy-test", "1",
            "--toy-size", "64", "--shard-size", "2", "--workers", "1", "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert "no space left on the device while writing" in " ".join(r.output.split()), r.output
    monkeypatch.setattr(writer, "write_shard", real)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
