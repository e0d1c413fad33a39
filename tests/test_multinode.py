"""Two torchrun "nodes" on 127.0.0.1 (gloo, one process each, static rendezvous): they train
together, one node dies mid-run, and both resume from the last checkpoint. Shards are streamed
from a loopback HTTP server, as a cluster without a shared dataset folder would read them."""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_train import SIZE, make_shards


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def shards_url(tmp_path_factory):
    shards = make_shards(tmp_path_factory.mktemp("mn-shards"))
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(shards.parent)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/{shards.name}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _nodes(url: str, run: Path, steps: int, *, resume: bool, tmp: Path) -> list[subprocess.Popen]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = []
    for node in (0, 1):
        args = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
                str(node), "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port",
                str(port), "-m", "dmn_train.cli_train", "--shards", url, "--preset", "tiny",
                "--size", str(SIZE), "--batch-size", "4", "--steps", str(steps),
                "--eval-every", "2", "--save-every", "2", "--eval-batches", "1", "--log-every", "1",
                "--workers", "0", "--no-progress", "--out", str(run),
                "--cache-dir", str(tmp / f"cache{node}")]
        if resume:
            args.append("--resume")
        log = open(tmp / f"node{node}-{'resume' if resume else 'fresh'}.log", "w")  # noqa: SIM115
        procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    return procs


def _wait(procs, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for node, q in enumerate(procs):
                _kill_node(q, Path(q.args[q.args.index("--cache-dir") + 1]))
            raise
    return codes


def _kill_node(proc: subprocess.Popen, marker: Path) -> None:
    """SIGKILL a node: its torchrun agent and its worker (which runs in its own session)."""
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(marker) in cmdline:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _steps(run: Path) -> list[int]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r["step"] for r in rows if r["kind"] == "train"]


def test_two_nodes_train_one_dies_both_resume(shards_url, tmp_path):
    run = tmp_path / "run"
    # A long run; node 1 is killed (its whole process group, as when a machine goes) once a
    # checkpoint exists.
    procs = _nodes(shards_url, run, 400, resume=False, tmp=tmp_path)
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.is_file() and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.2)
    assert last.is_file(), (tmp_path / "node0-fresh.log").read_text()[-3000:]
    _kill_node(procs[1], tmp_path / "cache1")
    # Node 0's worker notices at its next collective and stops with one line (no hang). Its
    # torchrun agent would then wait for the dead agent at its exit barrier: we stop it there.
    log_file = tmp_path / "node0-fresh.log"
    deadline = time.monotonic() + 120
    while "another process of this distributed run stopped" not in log_file.read_text() \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    log0 = log_file.read_text()
    _kill_node(procs[0], tmp_path / "cache0")
    _wait(procs, 30)
    assert "error: another process of this distributed run stopped" in log0, log0[-3000:]
    assert "Traceback" not in log0.split("stopped")[0][-2000:]
    assert "2 node(s) × 1 process(es) = 2 ranks" in log0, log0[-3000:]
    done = max(_steps(run))
    assert 2 <= done < 400

    # Both nodes come back with --resume and finish a short run from the last checkpoint.
    target = done + 4
    procs = _nodes(shards_url, run, target, resume=True, tmp=tmp_path)
    codes = _wait(procs, 240)
    log0 = (tmp_path / "node0-resume.log").read_text()
    assert codes == [0, 0], log0[-3000:] + (tmp_path / "node1-resume.log").read_text()[-2000:]
    assert "resuming at step" in log0
    steps = _steps(run)
    assert steps[-1] == target and steps == sorted(set(steps))  # no step twice, none after target
