"""Recurrent nets of the DMN: the 2017 SRU in plain PyTorch, and an nn.LSTM with the same interface.

The SRU of the original DMN code (Lei et al., 2017; ``sru`` 2.6.0 with ``v1=True,
use_tanh=True``), per layer with input ``x_t`` and hidden size ``d``::

    x~_t, f~_t, r~_t [, x'_t] = W x_t                       (one matmul for all t)
    f_t = sigmoid(f~_t + b_f)       r_t = sigmoid(r~_t + b_r)     (gates see the input only)
    c_t = f_t * c_{t-1} + (1 - f_t) * x~_t
    h_t = r_t * tanh(c_t) + (1 - r_t) * x'_t

``x'_t = x_t`` when the input size equals ``d``; otherwise ``W`` has a fourth block that projects
the input for the highway term. Only the ``c`` update is sequential; it is a single ``lerp`` per
step, everything else runs on all steps at once.

Both nets take ``mask_pad`` of shape ``(T, B)`` bool, True = padding: the cell state is carried
unchanged over padded steps and hidden states there are 0, so outputs at valid steps and the
final state do not depend on the padding.
"""

from __future__ import annotations

import functools
import math
import os

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class SRULayer(nn.Module):
    """One 2017-SRU layer.

    Parameters:
        weight: ``(input_size, k, hidden_size)``, ``k`` = 3 (x~, f~, r~) or 4 (+ highway
            projection when ``input_size != hidden_size``). Blocks are contiguous per gate, unlike
            ``sru``'s interleaved ``(input_size, hidden_size * k)`` layout.
        bias: ``(2, hidden_size)``: forget-gate bias, reset-gate bias.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.k = 3 if input_size == hidden_size else 4
        self.weight = nn.Parameter(torch.empty(input_size, self.k, hidden_size))
        self.bias = nn.Parameter(torch.zeros(2, hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The SRU recipe: E[w] = 0, Var[w] = 1/input_size; zero gate biases.
        bound = math.sqrt(3.0 / self.input_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, mask_pad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run the layer.

        Args:
            x: ``(T, B, input_size)`` float.
            mask_pad: ``(T, B)`` bool, True = padding; None = no padding.

        Returns:
            h: ``(T, B, hidden_size)``, 0 at padded steps; fp32 when ``x`` or autocast is bf16/fp16
                (the recurrence runs in fp32), else ``x``'s dtype.
            c: ``(B, hidden_size)`` cell state after each sequence's last valid step, same dtype.
        """
        steps, batch, _ = x.shape
        u = (x.reshape(steps * batch, self.input_size) @ self.weight.flatten(1))
        u = u.view(steps, batch, self.k, self.hidden_size)
        return sru_recurrence(u, self.bias, x if self.k == 3 else None, mask_pad)


class SRU(nn.Module):
    """Stacked 2017-SRU layers (no dropout: the original DMN used none).

    Args:
        input_size: features of the input.
        hidden_size: features of every layer's state.
        num_layers: depth.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.layers = nn.ModuleList(
            SRULayer(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )

    def forward(self, x: Tensor, mask_pad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Args: x ``(T, B, input_size)`` float; mask_pad ``(T, B)`` bool, True = padding.

        Returns: h ``(T, B, hidden_size)`` of the last layer (0 at padded steps) and the final
        cell states ``(num_layers, B, hidden_size)``.
        """
        finals = []
        for layer in self.layers:
            x, c = layer(x, mask_pad)
            finals.append(c)
        return x, torch.stack(finals)


class LSTM(nn.Module):
    """``nn.LSTM`` behind the SRU's interface (original ``--lstm``); padding via packing."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers)

    def forward(self, x: Tensor, mask_pad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Args and returns as :meth:`SRU.forward` (final states are the LSTM's ``c_n``).

        On CPU the LSTM runs in fp32 even under bf16 autocast: oneDNN's bf16 LSTM fails
        ("could not create a primitive descriptor") on CPUs without native bf16, and the state
        stays fp32 as in the SRU. CUDA autocast runs cuDNN's bf16 LSTM.
        """
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return self.forward(x.float(), mask_pad)
        if mask_pad is None:
            h, (_, c) = self.lstm(x)
            return h, c
        lengths = (~mask_pad).sum(0).cpu()
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        h, (_, c) = self.lstm(packed)
        h, _ = pad_packed_sequence(h, total_length=x.shape[0])
        return h, c


def make_rnn(lstm: bool, input_size: int, hidden_size: int, num_layers: int) -> SRU | LSTM:
    """The recurrent net the config asks for: :class:`LSTM` if ``lstm`` else :class:`SRU`."""
    cls = LSTM if lstm else SRU
    return cls(input_size, hidden_size, num_layers)


#: Environment switch for the recurrence's backend: ``auto`` (Triton for CUDA tensors when
#: ``triton`` imports, else the loop), ``loop`` (always the PyTorch loop) or ``triton`` (always the
#: kernel; on CPU tensors that needs ``TRITON_INTERPRET=1`` set before triton is imported).
BACKEND_ENV = "DMN_SRU_BACKEND"
BACKENDS = ("auto", "loop", "triton")


def _gates(u: Tensor, bias: Tensor, highway: Tensor | None
           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``x~, f, r, x'`` ``(T, N, H)`` each in the state dtype (fp32 under bf16/fp16, else u's)."""
    state_dtype = torch.promote_types(u.dtype, torch.float32)
    u = u.to(state_dtype)
    bias = bias.to(state_dtype)
    forget = torch.sigmoid(u[:, :, 1] + bias[0])
    reset = torch.sigmoid(u[:, :, 2] + bias[1])
    hw = u[:, :, 3] if highway is None else highway.to(state_dtype)
    return u[:, :, 0], forget, reset, hw


class _LoopBackend:
    """The recurrence in PyTorch ops: one ``lerp`` per step forward, one ``addcmul`` backward.

    Padded steps are folded into the gates (``f = 1``, ``x~ = 0`` there) so that each step is a
    single op: ``lerp(0, c, 1)`` returns ``c`` exactly, as ``where(pad, c, ...)`` did.
    """

    @staticmethod
    def forward(u: Tensor, bias: Tensor, highway: Tensor | None, keep: Tensor
                ) -> tuple[Tensor, Tensor]:
        x_tilde, forget, reset, hw = _gates(u, bias, highway)
        pad = keep[:, :, None]
        x_eff = x_tilde.masked_fill(pad, 0.0)
        f_eff = forget.masked_fill(pad, 1.0)
        cells = torch.empty_like(x_tilde)
        c = x_tilde.new_zeros(x_tilde.shape[1:])
        for t in range(x_tilde.shape[0]):
            c = torch.lerp(x_eff[t], c, f_eff[t], out=cells[t])
        h = torch.lerp(hw, torch.tanh(cells), reset).masked_fill_(pad, 0.0)
        return h, cells

    @staticmethod
    def backward(u: Tensor, bias: Tensor, highway: Tensor | None, keep: Tensor, cells: Tensor,
                 grad_h: Tensor, grad_c: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        x_tilde, forget, reset, hw = _gates(u, bias, highway)
        pad = keep[:, :, None]
        f_eff = forget.masked_fill(pad, 1.0)
        grad_h = grad_h.to(cells.dtype).masked_fill(pad, 0.0)  # h was 0 there
        tanh_c = torch.tanh(cells)
        # g[t] = dL/dc_t: the direct term through h_t, plus what flows back from c_{t+1}.
        g = grad_h * reset * (1 - tanh_c * tanh_c)
        g[-1] += grad_c
        for t in range(g.shape[0] - 2, -1, -1):
            g[t].addcmul_(g[t + 1], f_eff[t + 1])
        prev = torch.cat([cells.new_zeros(1, *cells.shape[1:]), cells[:-1]])
        grad_x = g * (1 - f_eff)  # 0 at padded steps, where f_eff = 1
        grad_f = (g * (prev - x_tilde) * forget * (1 - forget)).masked_fill_(pad, 0.0)
        grad_r = grad_h * (tanh_c - hw) * reset * (1 - reset)
        grad_hw = grad_h * (1 - reset)
        parts = [grad_x, grad_f, grad_r] + ([grad_hw] if highway is None else [])
        grad_u = torch.stack(parts, dim=2).to(u.dtype)
        grad_bias = torch.stack([grad_f.sum((0, 1)), grad_r.sum((0, 1))]).to(bias.dtype)
        return grad_u, grad_bias, None if highway is None else grad_hw.to(highway.dtype)


class _SRUFunction(torch.autograd.Function):
    """The SRU layer after its input matmul, as one autograd node.

    Saves ``u`` (in its own dtype: bf16 under autocast), the bias, the padding mask and the cells
    ``(T, N, H)`` in fp32; gates, ``tanh(c)`` and ``h`` are recomputed in backward instead of
    being kept for every step. (``highway`` is the layer input, which the matmul saves anyway.)
    """

    @staticmethod
    def forward(ctx, u: Tensor, bias: Tensor, highway: Tensor | None, keep: Tensor,
                use_triton: bool) -> tuple[Tensor, Tensor]:
        backend = _triton_backend() if use_triton else _LoopBackend
        h, cells = backend.forward(u, bias, highway, keep)
        ctx.backend = backend
        ctx.save_for_backward(u, bias, highway, keep, cells)
        return h, cells[-1].clone()  # padded steps carry c: the last row is each final state

    @staticmethod
    def backward(ctx, grad_h: Tensor | None, grad_c: Tensor | None):
        u, bias, highway, keep, cells = ctx.saved_tensors
        grad_h = torch.zeros_like(cells) if grad_h is None else grad_h.contiguous()
        grad_c = torch.zeros_like(cells[0]) if grad_c is None else grad_c.contiguous()
        grad_u, grad_bias, grad_hw = ctx.backend.backward(u, bias, highway, keep, cells,
                                                          grad_h, grad_c)
        return grad_u, grad_bias, grad_hw, None, None


def _triton_backend():
    from . import sru_triton  # lazily: the package imports without triton
    return sru_triton


def backend_for(u: Tensor) -> str:
    """``"triton"`` or ``"loop"``: what :func:`sru_recurrence` runs for ``u`` under the
    ``DMN_SRU_BACKEND`` environment variable (``auto`` = Triton for CUDA fp32/bf16/fp16 tensors
    when ``triton`` imports).

    Raises:
        ValueError: an unknown ``DMN_SRU_BACKEND`` value.
    """
    choice = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {', '.join(BACKENDS)}, got {choice!r}")
    if choice != "auto":
        return choice
    if not u.is_cuda or u.dtype == torch.float64 or not _triton_importable():
        return "loop"
    return "triton"


@functools.cache
def _triton_importable() -> bool:
    # Only asked for CUDA tensors, so CPU-only runs never pay for importing triton.
    try:
        _triton_backend()
    except ImportError:
        return False
    return True


def sru_recurrence(u: Tensor, bias: Tensor, highway: Tensor | None, mask_pad: Tensor | None
                   ) -> tuple[Tensor, Tensor]:
    """Everything of an SRU layer after its input matmul, fused: gates, cells and ``h``.

    Args:
        u: ``(T, N, k, H)``, ``x @ W`` per gate block (x~, f~, r~ [, x']); fp32, bf16, fp16 or
            fp64.
        bias: ``(2, H)``, forget- and reset-gate biases.
        highway: ``(T, N, H)``, the layer input when ``k == 3`` (``x' = x``); None when ``k == 4``.
        mask_pad: ``(T, N)`` bool, True = padding (c carried, h = 0), or None.

    Returns:
        h ``(T, N, H)`` and the final cells ``(N, H)``, both in fp32 for bf16/fp16/fp32 ``u``
        (fp64 for fp64). The Triton kernel runs for CUDA tensors (see :func:`backend_for`), the
        PyTorch loop otherwise; both compute in the state dtype.
    """
    if u.dim() != 4 or u.shape[2] not in (3, 4) or (u.shape[2] == 3) != (highway is not None):
        raise ValueError(f"sru_recurrence: u must be (T, N, 3, H) with a highway input or "
                         f"(T, N, 4, H) without, got {tuple(u.shape)} and "
                         f"highway={'given' if highway is not None else None}")
    keep = (torch.zeros(u.shape[:2], dtype=torch.bool, device=u.device)
            if mask_pad is None else mask_pad)
    return _SRUFunction.apply(u, bias, highway, keep, backend_for(u) == "triton")


def reference_sru_recurrence(u: Tensor, bias: Tensor, highway: Tensor | None,
                             mask_pad: Tensor | None) -> tuple[Tensor, Tensor]:
    """:func:`sru_recurrence` as plain per-step autograd ops, the way the SRU ran before it was
    fused (one ``lerp`` and one ``where`` node per step, every gate kept for backward). Same
    arguments and results; for tests and ``pipelines/bench_sru.py``."""
    x_tilde, forget, reset, hw = _gates(u, bias, highway)
    c = x_tilde.new_zeros(x_tilde.shape[1:])
    cells = []
    for t in range(x_tilde.shape[0]):
        step = torch.lerp(x_tilde[t], c, forget[t])
        c = step if mask_pad is None else torch.where(mask_pad[t, :, None], c, step)
        cells.append(c)
    h = torch.lerp(hw, torch.tanh(torch.stack(cells)), reset)
    if mask_pad is not None:
        h = h.masked_fill(mask_pad[:, :, None], 0.0)
    return h, c


def exclude_recurrence_from_compile() -> None:
    """Make ``torch.compile`` leave :func:`sru_recurrence` eager (a graph break around it).

    Tracing would unroll its step loop (minutes to compile the paper model, for nothing over the
    fused kernel). Done on request, by ``dmn_train``'s ``--compile``, rather than at import:
    ``torch.compiler.disable`` imports ``torch._dynamo``, seconds that eager users need not pay.
    Idempotent; affects every SRU of the process (it rebinds the module's function).
    """
    global sru_recurrence
    if not getattr(sru_recurrence, "_dmn_eager", False):
        sru_recurrence = torch.compiler.disable(sru_recurrence)
        sru_recurrence._dmn_eager = True
