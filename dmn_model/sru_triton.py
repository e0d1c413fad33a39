"""Triton kernels for the SRU layer after its input matmul (see :func:`dmn_model.sru.sru_recurrence`).

One launch runs all T steps forward, one runs them backward. Each program owns ``BLOCK`` of the
``N·H`` (sequence × hidden unit) columns, keeps ``c`` (forward) or ``dL/dc`` (backward) in fp32
registers and loops over the steps inside the kernel, so the per-step cost is a few loads and
stores instead of several kernel launches. Inputs may be fp32, bf16 or fp16; the state, ``h`` and
the cells are fp32, as in the PyTorch loop.

Imported lazily by ``dmn_model.sru`` (only when the Triton backend is chosen), so the package
imports without triton. On CPU tensors the kernels run under Triton's interpreter
(``TRITON_INTERPRET=1`` set before triton is imported), which is how CI tests them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

#: columns per program: 4 warps × 32 threads × 2 elements
BLOCK = 256


@triton.jit
def _tanh(x):
    # libdevice's tanh is CUDA-only; this form also runs under the interpreter.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _sru_fwd_kernel(u_ptr, bias_ptr, hw_ptr, keep_ptr, h_ptr, cells_ptr, T, N, H,
                    K: tl.constexpr, HAS_HW: tl.constexpr, BLOCK: tl.constexpr):
    col = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: no overflow
    nh = N * H
    live = col < nh
    n = col // H
    j = col % H
    zero = col * 0
    b_f = tl.load(bias_ptr + j, mask=live, other=0.0).to(tl.float32)
    b_r = tl.load(bias_ptr + H + j, mask=live, other=0.0).to(tl.float32)
    u_col = n * (K * H) + j
    c = tl.zeros([BLOCK], dtype=tl.float32)
    for t in range(T):
        step = zero + t
        uo = step * (N * K * H) + u_col
        x_t = tl.load(u_ptr + uo, mask=live, other=0.0).to(tl.float32)
        f_t = tl.sigmoid(tl.load(u_ptr + uo + H, mask=live, other=0.0).to(tl.float32) + b_f)
        r_t = tl.sigmoid(tl.load(u_ptr + uo + 2 * H, mask=live, other=0.0).to(tl.float32) + b_r)
        so = step * nh + col
        if HAS_HW:
            hw = tl.load(hw_ptr + so, mask=live, other=0.0).to(tl.float32)
        else:
            hw = tl.load(u_ptr + uo + 3 * H, mask=live, other=0.0).to(tl.float32)
        pad = tl.load(keep_ptr + step * N + n, mask=live, other=1) != 0
        c = tl.where(pad, c, x_t + f_t * (c - x_t))
        h = tl.where(pad, 0.0, hw + r_t * (_tanh(c) - hw))
        tl.store(cells_ptr + so, c, mask=live)
        tl.store(h_ptr + so, h, mask=live)


@triton.jit
def _sru_bwd_kernel(u_ptr, bias_ptr, hw_ptr, keep_ptr, cells_ptr, grad_h_ptr, grad_c_ptr,
                    grad_u_ptr, grad_hw_ptr, grad_bias_ptr, T, N, H,
                    K: tl.constexpr, HAS_HW: tl.constexpr, BLOCK: tl.constexpr):
    col = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    nh = N * H
    live = col < nh
    n = col // H
    j = col % H
    zero = col * 0
    b_f = tl.load(bias_ptr + j, mask=live, other=0.0).to(tl.float32)
    b_r = tl.load(bias_ptr + H + j, mask=live, other=0.0).to(tl.float32)
    u_col = n * (K * H) + j
    g = tl.load(grad_c_ptr + col, mask=live, other=0.0).to(tl.float32)  # dL/dc_t
    sum_f = tl.zeros([BLOCK], dtype=tl.float32)
    sum_r = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(T):
        step = zero + (T - 1 - i)
        uo = step * (N * K * H) + u_col
        so = step * nh + col
        x_t = tl.load(u_ptr + uo, mask=live, other=0.0).to(tl.float32)
        f_t = tl.sigmoid(tl.load(u_ptr + uo + H, mask=live, other=0.0).to(tl.float32) + b_f)
        r_t = tl.sigmoid(tl.load(u_ptr + uo + 2 * H, mask=live, other=0.0).to(tl.float32) + b_r)
        if HAS_HW:
            hw = tl.load(hw_ptr + so, mask=live, other=0.0).to(tl.float32)
        else:
            hw = tl.load(u_ptr + uo + 3 * H, mask=live, other=0.0).to(tl.float32)
        pad = tl.load(keep_ptr + step * N + n, mask=live, other=1) != 0
        c_t = tl.load(cells_ptr + so, mask=live, other=0.0)
        c_prev = tl.load(cells_ptr + so - nh, mask=live & (step > 0), other=0.0)
        dh = tl.where(pad, 0.0, tl.load(grad_h_ptr + so, mask=live, other=0.0).to(tl.float32))
        tanh_c = _tanh(c_t)
        g = g + dh * r_t * (1.0 - tanh_c * tanh_c)
        d_x = tl.where(pad, 0.0, g * (1.0 - f_t))
        d_f = tl.where(pad, 0.0, g * (c_prev - x_t) * f_t * (1.0 - f_t))
        d_r = dh * (tanh_c - hw) * r_t * (1.0 - r_t)
        d_hw = dh * (1.0 - r_t)
        g = tl.where(pad, g, g * f_t)
        sum_f += d_f
        sum_r += d_r
        out = grad_u_ptr.dtype.element_ty
        tl.store(grad_u_ptr + uo, d_x.to(out), mask=live)
        tl.store(grad_u_ptr + uo + H, d_f.to(out), mask=live)
        tl.store(grad_u_ptr + uo + 2 * H, d_r.to(out), mask=live)
        if HAS_HW:
            tl.store(grad_hw_ptr + so, d_hw.to(grad_hw_ptr.dtype.element_ty), mask=live)
        else:
            tl.store(grad_u_ptr + uo + 3 * H, d_hw.to(out), mask=live)
    # per-column partial sums of the gate-bias gradients; the sum over N is done by torch
    tl.store(grad_bias_ptr + col, sum_f, mask=live)
    tl.store(grad_bias_ptr + nh + col, sum_r, mask=live)


def _grid(columns: int) -> tuple[int]:
    return (triton.cdiv(columns, BLOCK),)


def forward(u: Tensor, bias: Tensor, highway: Tensor | None, keep: Tensor
            ) -> tuple[Tensor, Tensor]:
    """``u (T, N, k, H)``, ``bias (2, H)``, ``highway (T, N, H)`` or None, ``keep (T, N)`` bool
    → ``h``, ``cells`` ``(T, N, H)`` fp32. All on one device (CUDA, or CPU when interpreted)."""
    steps, batch, k, hidden = u.shape
    u = u.contiguous()
    h = torch.empty(steps, batch, hidden, device=u.device, dtype=torch.float32)
    cells = torch.empty_like(h)
    if h.numel():
        hw = highway.contiguous() if highway is not None else u
        _sru_fwd_kernel[_grid(batch * hidden)](
            u, bias.contiguous(), hw, keep.to(torch.uint8).contiguous(), h, cells,
            steps, batch, hidden, K=k, HAS_HW=highway is not None, BLOCK=BLOCK)
    return h, cells


def backward(u: Tensor, bias: Tensor, highway: Tensor | None, keep: Tensor, cells: Tensor,
             grad_h: Tensor, grad_c: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gradients for ``u``, ``bias`` and ``highway`` (None when it is None) from
    ``grad_h (T, N, H)`` and ``grad_c (N, H)``, given what :func:`forward` saw and returned."""
    steps, batch, k, hidden = u.shape
    u = u.contiguous()
    grad_u = torch.empty_like(u)
    grad_hw = (torch.empty(highway.shape, device=u.device, dtype=highway.dtype)
               if highway is not None else None)
    partial = torch.zeros(2, batch, hidden, device=u.device, dtype=torch.float32)
    if grad_u.numel():
        _sru_bwd_kernel[_grid(batch * hidden)](
            u, bias.contiguous(), highway.contiguous() if highway is not None else u,
            keep.to(torch.uint8).contiguous(), cells.contiguous(), grad_h.contiguous(),
            grad_c.contiguous(), grad_u, grad_hw if grad_hw is not None else grad_u, partial,
            steps, batch, hidden, K=k, HAS_HW=highway is not None, BLOCK=BLOCK)
    return grad_u, partial.sum(1).to(bias.dtype), grad_hw
