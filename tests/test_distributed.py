"""Two CPU processes with gloo: DDP keeps the replicas identical; sharded evaluation equals one process."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import zarr

from dmn_train.distributed import (DistInfo, destroy_process_group, dist_info_from_env,
                                   init_process_group)
from dmn_train.evaluate import EvalConfig, evaluate
from dmn_train.train import model_config, train, train_config

from test_train import SIZE, make_shards

CPU = torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, shards: str, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = DistInfo(rank=rank, world_size=world_size, local_rank=rank)
    init_process_group(info, CPU)
    try:
        cfg = train_config("tiny", shards, out=f"{tmp}/run", size=SIZE, batch_size=4, steps=4,
                           workers=0, log_every=2, eval_every=4, eval_batch_size=8, progress=False)
        result = train(cfg, model_config("tiny"), info, CPU, log=lambda m: None)
        # Parameters only: BatchNorm running stats are per-rank between DDP's buffer broadcasts
        # (rank 0's are the ones checkpointed).
        torch.save({k: v.detach().clone() for k, v in result.model.named_parameters()},
                   f"{tmp}/rank{rank}.pt")
        metrics = evaluate(EvalConfig(split="val", run=f"{tmp}/run", out=f"{tmp}/eval2",
                                      batch_size=3, workers=0, progress=False, grid=2),
                           info, CPU, log=lambda m: None)
        with open(f"{tmp}/metrics{rank}.json", "w") as f:
            json.dump(metrics, f)
    finally:
        destroy_process_group(info)


def test_dist_info_from_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dist_info_from_env() == DistInfo(0, 1, 0) and not dist_info_from_env().enabled
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = dist_info_from_env()
    # without LOCAL_WORLD_SIZE every rank is taken to be on this node
    assert info == DistInfo(1, 2, 1, local_world_size=2) and info.enabled and not info.is_main
    assert info.layout().startswith("1 node(s) × 2 process(es) = 2 ranks")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setenv("GROUP_RANK", "1")
    info = dist_info_from_env()
    assert (info.local_world_size, info.node_rank) == (1, 1)
    assert info.layout() == "2 node(s) × 1 process(es) = 2 ranks (this log: rank 1, node 1)"
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2"):
        dist_info_from_env()


def test_two_gloo_ranks(tmp_path):
    shards = make_shards(tmp_path / "shards")
    mp.spawn(_worker, args=(2, _free_port(), str(shards), str(tmp_path)), nprocs=2, join=True)

    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [2, 4]

    # Sharded evaluation: both ranks get the all-reduced metrics, equal to one process's.
    m0 = json.loads((tmp_path / "metrics0.json").read_text())
    m1 = json.loads((tmp_path / "metrics1.json").read_text())
    single = evaluate(EvalConfig(split="val", run=str(tmp_path / "run"), out=str(tmp_path / "eval1"),
                                 batch_size=5, workers=0, progress=False, grid=0),
                      DistInfo(), CPU, log=lambda m: None)
    strip = lambda m: {k: v for k, v in m.items() if k not in ("seconds", "world_size")}  # noqa: E731
    assert strip(m0) == strip(m1) == strip(single)
    merged = zarr.open_group(str(tmp_path / "eval2" / "predictions.zarr"), mode="r")
    alone = zarr.open_group(str(tmp_path / "eval1" / "predictions.zarr"), mode="r")
    assert sorted(merged["sent_id"][:].tolist()) == sorted(alone["sent_id"][:].tolist())
    assert merged["prob"].shape == alone["prob"].shape
    assert not list((tmp_path / "eval2").glob(".predictions.rank*"))
