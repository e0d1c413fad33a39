"""The SRU Triton kernels under Triton's interpreter, on CPU tensors, against the PyTorch loop.

Not collected by default (no ``test_`` prefix): ``TRITON_INTERPRET=1`` must be set before triton is
imported, so ``tests/test_sru_triton.py`` runs this module in a fresh pytest subprocess.
"""

import os

import pytest
import torch

from dmn_model.sru import SRU, sru_recurrence

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run with TRITON_INTERPRET=1 (tests/test_sru_triton.py does)",
                allow_module_level=True)


def _inputs(k, steps, batch, hidden, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(steps, batch, k, hidden, generator=gen).to(dtype).requires_grad_()
    bias = torch.randn(2, hidden, generator=gen).requires_grad_()
    highway = torch.randn(steps, batch, hidden, generator=gen).requires_grad_() if k == 3 else None
    lengths = torch.randint(1, steps + 1, (batch,), generator=gen)
    lengths[0] = steps
    mask = torch.arange(steps)[:, None] >= lengths[None, :]
    return u, bias, highway, mask


def _run(backend, monkeypatch, u, bias, highway, mask, grads):
    monkeypatch.setenv("DMN_SRU_BACKEND", backend)
    h, c = sru_recurrence(u, bias, highway, mask)
    inputs = [t for t in (u, bias, highway) if t is not None]
    outputs = [o for o, g in zip((h, c), grads) if g is not None]
    return [h, c, *torch.autograd.grad(outputs, inputs, [g for g in grads if g is not None])]


@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("shape", [(5, 3, 7), (4, 5, 60)], ids=["one-block", "two-blocks"])
@pytest.mark.parametrize("padded", [True, False])
def test_kernel_matches_loop_fp32(k, shape, padded, monkeypatch):
    u, bias, highway, mask = _inputs(k, *shape, torch.float32)
    mask = mask if padded else None
    grads = (torch.randn(shape), torch.randn(shape[1:]))
    loop = _run("loop", monkeypatch, u, bias, highway, mask, grads)
    kernel = _run("triton", monkeypatch, u, bias, highway, mask, grads)
    for name, a, b in zip(["h", "c", "u", "bias", "highway"], kernel, loop):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    if padded:
        assert torch.all(kernel[0][mask] == 0)


def test_kernel_without_final_state_gradient(monkeypatch):
    u, bias, _, mask = _inputs(4, 5, 3, 7, torch.float32)
    grads = (torch.randn(5, 3, 7), None)
    loop = _run("loop", monkeypatch, u, bias, None, mask, grads)
    kernel = _run("triton", monkeypatch, u, bias, None, mask, grads)
    for a, b in zip(kernel, loop):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_kernel_bf16_input_keeps_fp32_state(monkeypatch):
    u, bias, _, mask = _inputs(4, 5, 3, 7, torch.bfloat16)
    grads = (torch.randn(5, 3, 7), torch.randn(3, 7))
    loop = _run("loop", monkeypatch, u, bias, None, mask, grads)
    kernel = _run("triton", monkeypatch, u, bias, None, mask, grads)
    assert kernel[0].dtype == kernel[1].dtype == torch.float32
    assert kernel[2].dtype == torch.bfloat16
    for a, b in zip(kernel, loop):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)  # bf16 rounding of grad_u


def test_stacked_sru_module(monkeypatch):
    torch.manual_seed(0)
    rnn = SRU(6, 8, 2)  # layer 1: k = 4, layer 2: k = 3
    x = torch.randn(5, 3, 6, requires_grad=True)
    mask = torch.zeros(5, 3, dtype=torch.bool)
    mask[3:, 1] = True
    results = {}
    for backend in ("loop", "triton"):
        monkeypatch.setenv("DMN_SRU_BACKEND", backend)
        rnn.zero_grad()
        x.grad = None
        h, c = rnn(x, mask)
        (h.square().sum() + c.sum()).backward()
        results[backend] = [h, c, x.grad] + [p.grad.clone() for p in rnn.parameters()]
    for a, b in zip(results["triton"], results["loop"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
