"""dmn-data download against a loopback HTTP server: layout that build accepts, resume with Range,
checksum mismatch, fallback to the next location, offline failure (one line, nothing half-extracted)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import socket
import threading
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dmn_data import download as download_module
from dmn_data import sources
from dmn_data.cli import app
from dmn_data.download import DownloadConfig, ResumingDownloader, download
from dmn_data.errors import DataError
from refer_fixtures import make_refer_root

runner = CliRunner()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (name -> bytes) with single-range support. ``server.drop`` (name -> n)
    sends n bytes of the first response and closes the connection; ``server.corrupt`` (names) flips
    one byte of the first response; ``server.ignore_range`` answers 200 to range requests. Every
    request is logged as (path, Range header)."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        srv = self.server
        name = self.path.lstrip("/").split("/")[-1].replace("%2B", "+")
        srv.log.append((self.path, self.headers.get("Range")))
        data = srv.files.get(name)
        if data is None:
            self.send_error(404)
            return
        first = srv.seen.setdefault(name, 0) == 0
        srv.seen[name] += 1
        if first and name in srv.corrupt:
            data = data[:10] + bytes([data[10] ^ 0xFF]) + data[11:]
        start = 0
        rng = None if srv.ignore_range else self.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if first and name in srv.drop:
            self.wfile.write(body[: srv.drop[name]])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.files, srv.drop, srv.corrupt, srv.log, srv.seen, srv.ignore_range = {}, {}, set(), [], {}, False
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _closed_port_url() -> str:
    """A loopback URL nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in sorted(files.items()):
            z.writestr(name, data)
    return buf.getvalue()


def _tree_files(root: Path, sub: str) -> dict[str, bytes]:
    base = root / sub
    return {str(Path(sub).name / p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, bytes]:
    """refcoco.zip (refcoco/{refs(unc).p, instances.json}) and train2014.zip (train2014/*.jpg), made
    from a real-format REFER tree."""
    src = tmp_path_factory.mktemp("refer")
    make_refer_root(src, "refcoco", "unc", images_per_split=2)
    return {
        "refcoco.zip": _zip(_tree_files(src, "refcoco")),
        "train2014.zip": _zip(_tree_files(src, "images/mscoco/images/train2014")),
    }


def _table(archives: dict[str, bytes], urls: dict[str, tuple[str, ...]] | None = None) -> dict[str, sources.Archive]:
    """The real table with the fixture archives' sizes and checksums (and, if given, locations)."""
    table = dict(sources.ARCHIVES)
    for name, data in archives.items():
        table[name] = dataclasses.replace(
            table[name], size=len(data), known_hash="sha256:" + hashlib.sha256(data).hexdigest(),
            urls=(urls or {}).get(name, (_closed_port_url() + "/" + name,)))
    return table


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_download_then_build(server, archives, tmp_path, monkeypatch):
    server.files.update(archives)
    monkeypatch.setattr(sources, "ARCHIVES", _table(archives))
    root = tmp_path / "data"
    r = _cli("download", "--dataset", "unc", "--data-root", root, "--mirror", server.url, "--retries", 0, "--no-progress")
    assert r.exit_code == 0, r.output
    assert f"next: dmn-data build --dataset unc --data-root {root}" in r.output
    assert (root / "refcoco" / "refs(unc).p").is_file() and (root / "refcoco" / "instances.json").is_file()
    images = sorted((root / "images/mscoco/images/train2014").glob("*.jpg"))
    assert len(images) == 8
    marker = json.loads((root / "downloads" / "refcoco.zip.json").read_text())
    assert marker["sha256"] == hashlib.sha256(archives["refcoco.zip"]).hexdigest()
    assert marker["url"] == f"{server.url}/refcoco.zip"
    assert not (root / "downloads" / "refcoco.zip").exists()  # archives are deleted once extracted
    assert not list((root / "downloads").glob(".extract-*"))

    r = _cli("build", "--dataset", "unc", "--data-root", root, "--out", tmp_path / "shards", "--workers", 1, "--no-progress")
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "shards" / "unc" / "manifest.json").read_text())
    assert {s: v["images"] for s, v in manifest["splits"].items()} == {"train": 2, "val": 2, "testA": 2, "testB": 2}
    assert manifest["skipped"] == {}

    # a second dataset sharing train2014.zip, and a rerun: nothing is fetched again
    server.log.clear()
    r = _cli("download", "--dataset", "unc", "--data-root", root, "--mirror", server.url, "--no-progress")
    assert r.exit_code == 0, r.output
    assert server.log == [] and "already there (downloaded earlier)" in r.output


def test_shared_archive_fetched_once(server, archives, tmp_path):
    server.files.update(archives)
    table = _table({**archives, "refcoco+.zip": archives["refcoco.zip"]})
    table["refcoco+.zip"] = dataclasses.replace(table["refcoco+.zip"], member="refcoco")
    server.files["refcoco+.zip"] = archives["refcoco.zip"]
    cfg = DownloadConfig(datasets=("unc", "unc+"), data_root=tmp_path, mirror=server.url, retries=0)
    commands = download(cfg, progress=False, log=lambda m: None, table=table)
    assert commands == [f"dmn-data build --dataset {d} --data-root {tmp_path}" for d in ("unc", "unc+")]
    assert [p for p, _ in server.log].count("/train2014.zip") == 1
    assert (tmp_path / "refcoco+" / "refs(unc).p").is_file()


def test_interrupted_download_resumes_with_range(server, archives, tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "CHUNK", 256)  # so that the dropped transfer leaves whole chunks
    data = archives["train2014.zip"]
    server.files.update(archives)
    server.drop["train2014.zip"] = 1000
    messages = []
    cfg = DownloadConfig(datasets=("unc",), data_root=tmp_path, mirror=server.url, retries=1)
    download(cfg, progress=False, log=messages.append, table=_table(archives))
    requests_made = [rng for p, rng in server.log if p == "/train2014.zip"]
    assert len(requests_made) == 2 and requests_made[0] is None
    resumed_at = int(requests_made[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= 1000
    assert any("retrying where it stopped" in m for m in messages)
    marker = json.loads((tmp_path / "downloads" / "train2014.zip.json").read_text())
    assert marker["sha256"] == hashlib.sha256(data).hexdigest()
    assert len(list((tmp_path / "images/mscoco/images/train2014").glob("*.jpg"))) == 8


def test_partial_file_from_a_killed_run_is_resumed(server, archives, tmp_path):
    data = archives["refcoco.zip"]
    server.files.update(archives)
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "refcoco.zip.part").write_bytes(data[:777])
    cfg = DownloadConfig(datasets=("unc",), data_root=tmp_path, mirror=server.url, retries=0)
    download(cfg, progress=False, log=lambda m: None, table=_table(archives))
    assert ("/refcoco.zip", "bytes=777-") in server.log
    assert not (tmp_path / "downloads" / "refcoco.zip.part").exists()
    assert (tmp_path / "refcoco" / "instances.json").is_file()


def test_downloader_starts_over_when_server_ignores_range(tmp_path, server):
    data = bytes(range(256)) * 40
    server.files["f.bin"] = data
    server.ignore_range = True
    part = tmp_path / "f.bin.part"
    part.write_bytes(b"x" * 100)  # not a prefix of the file: a 200 answer must replace it, not extend it
    out = tmp_path / "f.bin"
    ResumingDownloader(part, len(data), timeout=5, progress=False)(f"{server.url}/f.bin", str(out), None)
    assert server.log == [("/f.bin", "bytes=100-")]
    assert out.read_bytes() == data and not part.exists()


def test_corrupted_archive_is_detected_and_fetched_again(server, archives, tmp_path):
    server.files.update(archives)
    good = archives["refcoco.zip"]
    (tmp_path / "downloads").mkdir()
    bad = bytearray(good)
    bad[100] ^= 0xFF
    (tmp_path / "downloads" / "refcoco.zip").write_bytes(bytes(bad))  # right size, wrong bytes
    server.corrupt.add("train2014.zip")  # the first transfer arrives damaged
    messages = []
    cfg = DownloadConfig(datasets=("unc",), data_root=tmp_path, mirror=server.url, retries=1)
    download(cfg, progress=False, log=messages.append, table=_table(archives))
    assert any("does not match its checksum" in m for m in messages)
    assert any("checksum mismatch" in m for m in messages)
    assert [rng for p, rng in server.log if p == "/train2014.zip"] == [None, None]  # refetched from zero
    assert (tmp_path / "refcoco" / "refs(unc).p").is_file()
    assert json.loads((tmp_path / "downloads" / "refcoco.zip.json").read_text())["sha256"] == hashlib.sha256(good).hexdigest()


def test_dead_first_location_falls_back_to_the_next(server, archives, tmp_path):
    server.files.update(archives)
    dead = _closed_port_url()
    urls = {n: (f"{dead}/{n}", f"{server.url}/missing/{n}-gone", f"{server.url}/ok/{n}") for n in archives}
    cfg = DownloadConfig(datasets=("unc",), data_root=tmp_path, retries=0)
    messages = []
    download(cfg, progress=False, log=messages.append, table=_table(archives, urls))
    marker = json.loads((tmp_path / "downloads" / "refcoco.zip.json").read_text())
    assert marker["url"] == f"{server.url}/ok/refcoco.zip"
    assert ("/missing/refcoco.zip-gone", None) in server.log  # 404: tried once, then the next location
    assert (tmp_path / "refcoco" / "refs(unc).p").is_file()


def test_offline_one_line_error_and_no_half_tree(archives, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "ARCHIVES", _table(archives))
    mirror = _closed_port_url()
    root = tmp_path / "data"
    r = _cli("download", "--dataset", "unc", "--data-root", root, "--mirror", mirror, "--retries", 0, "--no-progress")
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.output
    line = errors[0]
    assert "refcoco.zip" in line
    for url in [f"{mirror}/refcoco.zip", *sources.ARCHIVES["refcoco.zip"].urls]:
        assert url in line
    assert "refused" in line.lower()
    assert f"put a copy at {root / 'downloads' / 'refcoco.zip'}" in line
    assert not (root / "refcoco").exists() and not (root / "images").exists()
    assert not list((root / "downloads").glob(".extract-*")) and not list((root / "downloads").glob("tmp*"))


def test_bad_archive_leaves_no_tree(server, tmp_path):
    """An archive without a checksum that is not a zip: nothing is extracted, the copy is dropped."""
    server.files["refclef.zip"] = b"<html>not a zip</html>"
    table = dict(sources.ARCHIVES)
    table["refclef.zip"] = dataclasses.replace(table["refclef.zip"], urls=(f"{server.url}/refclef.zip",))
    cfg = DownloadConfig(datasets=("referit",), data_root=tmp_path, retries=0)
    with pytest.raises(DataError, match="cannot extract"):
        download(cfg, progress=False, log=lambda m: None, table=table)
    assert not (tmp_path / "refclef").exists()
    assert not (tmp_path / "downloads" / "refclef.zip").exists()
    assert not list((tmp_path / "downloads").glob(".extract-*"))


def test_mirror_url_and_table_shape():
    from dmn_data.download import locations

    a = sources.ARCHIVES["refcoco+.zip"]
    assert locations(a, "http://m.example/refer/") == ["http://m.example/refer/refcoco%2B.zip", *a.urls]
    for name, arch in sources.ARCHIVES.items():
        assert arch.name == name and arch.urls
        assert arch.known_hash is None or (arch.known_hash.startswith("sha256:") and len(arch.known_hash) == 71)
    for dataset, names in sources.DATASET_ARCHIVES.items():
        assert all(n in sources.ARCHIVES for n in names)
        from dmn_data.refer import REFER_DATASETS

        spec = REFER_DATASETS[dataset]
        targets = {sources.ARCHIVES[n].target for n in names}
        assert {spec.refer_name, spec.image_dir} == targets
