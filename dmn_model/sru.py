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

import math

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
        # Under autocast the matmul is bf16; the recurrence and its gates run in fp32 so the cell
        # state keeps full precision over the steps (and lerp sees one dtype). No-op in fp32/fp64.
        state_dtype = torch.promote_types(u.dtype, torch.float32)
        u = u.to(state_dtype)
        x_tilde = u[:, :, 0]
        forget = torch.sigmoid(u[:, :, 1] + self.bias[0].to(state_dtype))
        reset = torch.sigmoid(u[:, :, 2] + self.bias[1].to(state_dtype))
        highway = u[:, :, 3] if self.k == 4 else x.to(state_dtype)

        # c_t = f_t * c_{t-1} + (1 - f_t) * x~_t == lerp(x~_t, c_{t-1}, f_t), as one autograd node.
        cells = sru_recurrence(x_tilde, forget, mask_pad)
        c = cells[-1]  # padded steps carry the state, so the last row is each sequence's final c
        h = torch.lerp(highway, torch.tanh(cells), reset)
        if mask_pad is not None:
            h = h.masked_fill(mask_pad[:, :, None], 0.0)
        return h, c


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
        """Args and returns as :meth:`SRU.forward` (final states are the LSTM's ``c_n``)."""
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


class _SRURecurrence(torch.autograd.Function):
    """``c_t = where(pad_t, c_{t-1}, lerp(x~_t, c_{t-1}, f_t))`` for all t as one autograd node.

    Saves the inputs and the cells ``(T, B, H)`` only, instead of autograd's per-step lerp/where
    intermediates; backward runs the recurrence in reverse.
    """

    @staticmethod
    def forward(ctx, x_tilde: Tensor, forget: Tensor, keep: Tensor) -> Tensor:
        steps = x_tilde.shape[0]
        cells = x_tilde.new_empty(x_tilde.shape)
        c = x_tilde.new_zeros(x_tilde.shape[1:])
        for t in range(steps):
            c = torch.where(keep[t], c, torch.lerp(x_tilde[t], c, forget[t]))
            cells[t] = c
        ctx.save_for_backward(x_tilde, forget, keep, cells)
        return cells

    @staticmethod
    def backward(ctx, grad_cells: Tensor):
        x_tilde, forget, keep, cells = ctx.saved_tensors
        grad_x = torch.zeros_like(x_tilde)
        grad_f = torch.zeros_like(forget)
        g = torch.zeros_like(x_tilde[0])  # dL/dc_t flowing back from later steps
        for t in range(x_tilde.shape[0] - 1, -1, -1):
            g = g + grad_cells[t]
            prev = cells[t - 1] if t > 0 else torch.zeros_like(g)
            upd = ~keep[t]
            grad_x[t] = torch.where(upd, g * (1 - forget[t]), 0.0)
            grad_f[t] = torch.where(upd, g * (prev - x_tilde[t]), 0.0)
            g = torch.where(upd, g * forget[t], g)
        return grad_x, grad_f, None


def sru_recurrence(x_tilde: Tensor, forget: Tensor, mask_pad: Tensor | None) -> Tensor:
    """All cell states ``(T, B, H)`` from ``x~`` and ``f`` ``(T, B, H)`` (same float dtype) and
    ``mask_pad`` ``(T, B)`` bool (True = padding: the state is carried)."""
    keep = (torch.zeros(x_tilde.shape[:2], dtype=torch.bool, device=x_tilde.device)
            if mask_pad is None else mask_pad)
    return _SRURecurrence.apply(x_tilde, forget, keep[:, :, None])  # (T, B, 1): broadcast
