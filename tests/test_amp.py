"""bf16 autocast on CPU: the path CUDA runs take by default (issue 10: the SRU crashed there).

CPU bf16 autocast casts matmuls to bf16 as CUDA's does, so these tests catch dtype mismatches
without a GPU: train a few steps and evaluate through the functions the CLIs call.
"""

import json
from pathlib import Path

import pytest
import torch

from dmn_model.sru import SRU
from dmn_train.distributed import DistInfo
from dmn_train.evaluate import EvalConfig, autocast_context, evaluate
from dmn_train.train import model_config, train, train_config

from test_train import SIZE, make_shards

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("shards"))


def test_sru_keeps_fp32_state_under_bf16_autocast():
    torch.manual_seed(0)
    for size_in in (8, 16):  # k = 4 (highway projection) and k = 3 (identity highway)
        rnn = SRU(size_in, 16, 2)
        x = torch.randn(6, 3, size_in, requires_grad=True)
        mask = torch.zeros(6, 3, dtype=torch.bool)
        mask[4:, 1] = True
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h, c = rnn(x, mask)
        assert h.dtype == torch.float32 and c.dtype == torch.float32
        h.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        ref_h, ref_c = rnn(x, mask)
        # Only the matmul is bf16: the outputs stay within bf16 rounding of fp32's.
        assert torch.allclose(h, ref_h, atol=5e-2) and torch.allclose(c, ref_c, atol=5e-2)
        assert not torch.equal(h, ref_h)  # autocast really did change the matmul
        assert (h[4:, 1] == 0).all()


def test_autocast_defaults():
    assert isinstance(autocast_context(True, CPU), torch.autocast)
    assert not isinstance(autocast_context(None, CPU), torch.autocast)  # CPU default: fp32
    assert not isinstance(autocast_context(False, torch.device("cuda")), torch.autocast)
    if torch.cuda.is_available():  # building a CUDA autocast without CUDA only warns
        assert isinstance(autocast_context(None, torch.device("cuda")), torch.autocast)


@pytest.mark.parametrize("overrides", [{}, {"backbone": "resnet18", "high_res": True}],
                         ids=["tiny", "resnet18-high-res"])
def test_train_and_evaluate_under_cpu_bf16(shards: Path, tmp_path: Path, overrides):
    out = tmp_path / "runs" / "amp"
    cfg = train_config("tiny", str(shards), out=str(out), size=SIZE, batch_size=4, workers=0,
                       steps=3, log_every=1, eval_every=3, eval_batches=1, eval_batch_size=4,
                       progress=False, amp=True, pretrained="none")
    result = train(cfg, model_config("tiny", **overrides), DistInfo(), CPU, log=lambda m: None)
    assert result.step == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if r["kind"] == "train")
    assert any(r["kind"] == "eval" for r in rows)
    # dmn-eval's default follows the run (amp=True here), and --no-amp works too.
    for amp in (None, False):
        metrics = evaluate(EvalConfig(split="val", run=str(out), batch_size=4, workers=0,
                                      progress=False, grid=0, predictions=False, amp=amp,
                                      out=str(tmp_path / f"eval-{amp}")),
                           DistInfo(), CPU, log=lambda m: None)
        assert 0 <= metrics["fixed"]["overall_iou"] <= 1 and metrics["sentences"] > 0


def test_lstm_under_cpu_bf16_autocast_runs_in_fp32():
    from dmn_model.sru import LSTM
    torch.manual_seed(0)
    rnn = LSTM(8, 16, 2)
    x = torch.randn(6, 3, 8, requires_grad=True)
    mask = torch.zeros(6, 3, dtype=torch.bool)
    mask[4:, 1] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, c = rnn(x, mask)
    assert h.dtype == c.dtype == torch.float32
    ref_h, ref_c = rnn(x, mask)
    assert torch.equal(h, ref_h) and torch.equal(c, ref_c)
    h.sum().backward()
    assert torch.isfinite(x.grad).all()
