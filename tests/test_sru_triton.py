"""The SRU Triton kernels: under Triton's interpreter on CPU (every run), and on CUDA against
the PyTorch loop where a GPU exists."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dmn_model.sru import SRU, backend_for, sru_recurrence

HERE = Path(__file__).parent


@pytest.mark.slow  # ~25 s: a fresh interpreter, torch and triton imports
def test_kernels_under_the_interpreter_match_the_loop():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop("DMN_SRU_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(HERE / "interpreted_sru_triton.py")],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def test_backend_choice(monkeypatch):
    cpu = torch.zeros(1, 1, 4, 1)
    monkeypatch.delenv("DMN_SRU_BACKEND", raising=False)
    assert backend_for(cpu) == "loop"  # the loop is the CPU path
    monkeypatch.setenv("DMN_SRU_BACKEND", "Triton")
    assert backend_for(cpu) == "triton"
    if torch.cuda.is_available():
        monkeypatch.setenv("DMN_SRU_BACKEND", "auto")
        expected = "triton" if _has_triton() else "loop"
        assert backend_for(cpu.cuda()) == expected
        assert backend_for(cpu.cuda().double()) == "loop"


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [3, 4])
def test_cuda_kernel_matches_loop(dtype, k, monkeypatch):
    pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(0)
    steps, batch, hidden = 15, 2 * 256 + 3, 1005  # paper sizes: 2 images × 16·16 cells
    u = torch.randn(steps, batch, k, hidden, generator=gen).to("cuda", dtype).requires_grad_()
    bias = torch.randn(2, hidden, generator=gen).cuda().requires_grad_()
    highway = (torch.randn(steps, batch, hidden, generator=gen).cuda().requires_grad_()
               if k == 3 else None)
    lengths = torch.randint(1, steps + 1, (batch,), generator=gen)
    mask = (torch.arange(steps)[:, None] >= lengths[None, :]).cuda()
    inputs = [t for t in (u, bias, highway) if t is not None]
    grads = (torch.randn(steps, batch, hidden, device="cuda"), torch.randn(batch, hidden,
                                                                          device="cuda"))
    results = {}
    for backend in ("loop", "triton"):
        monkeypatch.setenv("DMN_SRU_BACKEND", backend)
        h, c = sru_recurrence(u, bias, highway, mask)
        results[backend] = [h, c, *torch.autograd.grad((h, c), inputs, grads)]
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for name, a, b in zip(["h", "c", "u", "bias", "highway"], results["triton"],
                          results["loop"]):
        scale = 1 + b.abs().max().item() if name == "bias" else 1  # sums over 7,725 columns
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale, msg=name)


@pytest.mark.cuda
@cuda
def test_cuda_sru_under_bf16_autocast_uses_the_kernel(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("DMN_SRU_BACKEND", raising=False)
    torch.manual_seed(0)
    rnn = SRU(24, 32, 3).cuda()
    x = torch.randn(7, 5, 24, device="cuda", requires_grad=True)
    mask = torch.zeros(7, 5, dtype=torch.bool, device="cuda")
    mask[4:, 2] = True
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h, c = rnn(x, mask)
    assert backend_for(torch.zeros(1, device="cuda")) == "triton"
    assert h.dtype == c.dtype == torch.float32
    h.sum().backward()
    assert torch.isfinite(x.grad).all() and (h[4:, 2] == 0).all()
