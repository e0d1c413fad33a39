"""Shards read from elsewhere: a loopback HTTP server (a thread in the test), fsspec's memory://
and file://, pipe: commands; retries after a dropped connection; the local cache."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import fsspec
import numpy as np
import pytest

from dmn_data.errors import DataError
from dmn_data.location import Location
from dmn_data.stream import make_loader, read_dataset

from shardgen import write_dataset

SIZE = 32


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves ``directory``; counts requests per path; ``drop[path] = n`` cuts the first ``n``
    answers for that path after half of the body (a connection dropped mid-shard)."""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        server = self.server
        with server.lock:
            server.requests[self.path] = server.requests.get(self.path, 0) + 1
            drop = server.drop.get(self.path, 0)
            if drop:
                server.drop[self.path] = drop - 1
        if not drop:
            return super().do_GET()
        body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("remote"), splits={"train": 6, "val": 5}, shard_size=2)


@pytest.fixture()
def server(shards):
    handler = functools.partial(_Handler, directory=str(shards.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests, httpd.drop, httpd.lock = {}, {}, threading.Lock()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/{shards.name}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _batches(where, split="val", **kw):
    loader = make_loader(where, split, size=SIZE, batch_size=3, train=False, workers=0, **kw)
    return [{k: v for k, v in b.items()} for b in loader]


def _same(a, b):
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if hasattr(x[k], "shape"):
                assert np.array_equal(np.asarray(x[k]), np.asarray(y[k])), k
            else:
                assert x[k] == y[k], k


def test_parse_locations(shards, tmp_path):
    assert Location.parse(shards).kind == "local"
    assert Location.parse(shards / "manifest.json").base == str(shards)
    http = Location.parse("https://host/data/gref/manifest.json")
    assert (http.kind, http.base, http.name) == ("http", "https://host/data/gref", "gref")
    assert http.url("val/val-000000.tar") == "https://host/data/gref/val/val-000000.tar"
    pipe = Location.parse("pipe:aws s3 cp s3://b/shards/gref/{} -")
    assert pipe.kind == "pipe" and pipe.name == "gref"
    assert pipe.url("vocab.json") == "pipe:aws s3 cp s3://b/shards/gref/vocab.json -"
    with pytest.raises(DataError, match=r"needs \{\}"):
        Location.parse("pipe:cat shards")
    with pytest.raises(DataError, match="needs s3fs"):
        Location.parse("s3://bucket/shards")
    with pytest.raises(DataError, match="unknown protocol"):
        Location.parse("nosuchproto://x/y")
    for bad in ("../escape.tar", "/etc/passwd", "a/../../b"):
        with pytest.raises(DataError, match="manifest"):
            http.url(bad)


def test_http_reads_exactly_what_the_folder_gives(shards, server):
    httpd, url = server
    _same(_batches(url), _batches(shards))
    ds = read_dataset(url)
    assert ds.vocab_sha256 == read_dataset(shards).vocab_sha256
    assert any(p.endswith(".tar") for p in httpd.requests)


def test_http_missing_dataset_is_one_line(server):
    _, url = server
    with pytest.raises(DataError, match=r"manifest.json: HTTP 404"):
        read_dataset(url + "-nope")


def test_dropped_connection_is_retried_then_reported(shards, server):
    httpd, url = server
    name = f"/{shards.name}/val/tiny-val-000001.tar"
    httpd.drop[name] = 2
    _same(_batches(url), _batches(shards))
    assert httpd.requests[name] == 3
    httpd.drop[name] = 10
    with pytest.raises(DataError, match=r"val-000001.tar.*after 2 attempts"):
        _batches(url, retries=1)


def test_changed_remote_shard_fails_its_sha256(shards, server, tmp_path):
    import shutil

    httpd, url = server
    copy = tmp_path / shards.name
    shutil.copytree(shards, copy)
    tar = copy / "val" / "tiny-val-000000.tar"
    data = bytearray(tar.read_bytes())
    data[-10] ^= 1  # in the end-of-archive padding: the tar still reads, only the sha256 tells
    tar.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256"):
        _batches(f"pipe:cat {copy}/{{}}", retries=0)


def test_cache_dir_second_epoch_reads_no_shard(shards, server, tmp_path):
    httpd, url = server
    cache = tmp_path / "cache"
    first = _batches(url, cache_dir=cache)
    tars = {p: n for p, n in httpd.requests.items() if p.endswith(".tar")}
    assert tars and all(n == 1 for n in tars.values())
    cached = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert len(cached) == len(tars) and not any(".part" in c for c in cached)
    second = _batches(url, cache_dir=cache)
    _same(first, second)
    assert {p: n for p, n in httpd.requests.items() if p.endswith(".tar")} == tars  # no new request
    # a copy changed on disk is caught by the sha256 like any shard
    victim = next(p for p in cache.rglob("*") if p.is_file())
    data = bytearray(victim.read_bytes())
    data[-10] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256"):
        _batches(url, cache_dir=cache, retries=0)


def test_fsspec_memory_and_file_protocols(shards):
    fs = fsspec.filesystem("memory")
    for path in shards.rglob("*"):
        if path.is_file():
            fs.pipe(f"/dmn-test/{shards.name}/{path.relative_to(shards).as_posix()}", path.read_bytes())
    try:
        _same(_batches(f"memory://dmn-test/{shards.name}"), _batches(shards))
    finally:
        fs.rm("/dmn-test", recursive=True)
    _same(_batches(f"file://{shards}"), _batches(shards))


def test_pipe_command(shards):
    _same(_batches(f"pipe:cat {shards}/{{}}"), _batches(shards))
    with pytest.raises(DataError, match="manifest.json"):
        read_dataset(f"pipe:cat {shards}-missing/{{}}")


def test_verify_over_http(shards, server, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from dmn_data.cli import app

    httpd, url = server
    result = CliRunner().invoke(app, ["verify", url, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "all shards match" in result.output
    copy = tmp_path / "served" / shards.name
    shutil.copytree(shards, copy)
    tar = copy / "val" / "tiny-val-000002.tar"
    data = bytearray(tar.read_bytes())
    data[-10] ^= 1
    tar.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["verify", f"pipe:cat {copy}/{{}}", "--no-progress"])
    assert result.exit_code == 1
    assert "tiny-val-000002.tar: size or sha256 differs" in result.output


def test_training_and_evaluation_over_http_match_the_folder(shards, server, tmp_path):
    """A short training and an evaluation read the shards over HTTP: the same losses and the
    same metrics as from the local folder (issue 14)."""
    import json

    import torch

    from dmn_train.distributed import DistInfo
    from dmn_train.evaluate import EvalConfig, evaluate
    from dmn_train.train import model_config, train, train_config

    _, url = server
    results = {}
    for name, where in (("local", str(shards)), ("http", url)):
        out = tmp_path / name
        cfg = train_config("tiny", where, out=str(out), size=SIZE, batch_size=3, workers=0, steps=4,
                           log_every=1, eval_every=4, eval_batches=2, eval_batch_size=3,
                           progress=False, val_split="val")
        train(cfg, model_config("tiny"), DistInfo(), torch.device("cpu"), log=lambda m: None)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        metrics = evaluate(EvalConfig(split="val", run=str(out), shards=where, batch_size=3,
                                      workers=0, progress=False, grid=0, predictions=False,
                                      out=str(tmp_path / f"eval-{name}")),
                           DistInfo(), torch.device("cpu"), log=lambda m: None)
        results[name] = ([r["loss"] for r in rows if r["kind"] == "train"], metrics)
    (local_loss, local_metrics), (http_loss, http_metrics) = results["local"], results["http"]
    assert len(local_loss) == 4 and local_loss == http_loss
    assert local_metrics["sentences"] == http_metrics["sentences"] > 0
    assert local_metrics["fixed"] == http_metrics["fixed"]
