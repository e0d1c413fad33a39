"""Synthesis module: dynamic filters, multimodal fusion, and the multimodal recurrent net.

Per word t (embedding e_t, language state h_t) and image (visual map V = [I_5, coords] with
C = C_vis + 8 channels at P = h·w cells), the DMN builds

    f_t = sigmoid(W_f [e_t, h_t] + b_f)               K dynamic 1×1 filters of size C
    F_t = f_t * V                                     K response maps
    M_t = Conv1×1([V, e_t, h_t, F_t])                 mixed_size channels
    R   = mRNN(M_1..M_T) at every cell, read at each sentence's last real word

The 1×1 conv of a concatenation is the sum of 1×1 convs of its parts, so
``M_t = W_V V + (W_e e_t + W_h h_t + b) + W_F F_t``: the visual term is computed once per image,
the word terms are per-word vectors broadcast over cells, and the K response maps of all words
come from one batched matmul. The T-fold ``(C + E + H + K)``-channel concatenation the original
built is never materialised; :func:`reference_fused_input` builds it, for tests and benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DMNConfig
from .sru import make_rnn

#: channels of the coordinate maps appended to the top visual feature
NUM_COORDS = 8


class Synthesis(nn.Module):
    """Dynamic filters + fusion conv + multimodal RNN.

    Args:
        vis_channels: channels of the top backbone feature (coordinates excluded).
        config: sizes (``emb_size``, ``hid_size``, ``num_filters``, ``mix_we``, ``mixed_size``,
            ``hid_mixed_size``, ``mixed_layers``, ``lstm``).

    Parameters keep the original's layout: ``filters`` is ``Linear([e_t, h_t] → K·C)`` (or
    ``h_t`` alone without ``mix_we``), ``fuse`` is one 1×1 conv over ``[V, e_t, h_t, F_t]``.
    """

    def __init__(self, vis_channels: int, config: DMNConfig) -> None:
        super().__init__()
        self.channels = vis_channels + NUM_COORDS
        self.num_filters = config.num_filters
        self.mix_we = config.mix_we
        self.split = [self.channels, config.emb_size, config.hid_size, config.num_filters]
        filter_in = config.hid_size + (config.emb_size if config.mix_we else 0)
        self.filters = nn.Linear(filter_in, config.num_filters * self.channels)
        self.fuse = nn.Conv2d(sum(self.split), config.mixed_size, kernel_size=1)
        self.mrnn = make_rnn(config.lstm, config.mixed_size, config.hid_mixed_size,
                             config.mixed_layers)

    def dynamic_filters(self, emb: Tensor, hid: Tensor) -> Tensor:
        """``emb (T, B, E)``, ``hid (T, B, H)`` → filters ``(B, T, K, C)`` in (0, 1).

        Batch-major so that the response ``bmm`` reads them without a copy.
        """
        inp = torch.cat([emb, hid], dim=-1) if self.mix_we else hid
        out = torch.sigmoid(self.filters(inp.transpose(0, 1)))
        return out.view(*out.shape[:2], self.num_filters, self.channels)

    def fused_input(self, vis: Tensor, emb: Tensor, hid: Tensor) -> Tensor:
        """The multimodal RNN's input M_t, by the decomposed 1×1 conv.

        Args:
            vis: ``(B, C, h, w)`` float, top feature with coordinates.
            emb: ``(T, B, E)`` word embeddings.
            hid: ``(T, B, H)`` language states.

        Returns:
            ``(T, B, h·w, mixed_size)``.
        """
        batch, channels, _, _ = vis.shape
        steps = emb.shape[0]
        v = vis.flatten(2)  # (B, C, P)
        w_vis, w_emb, w_hid, w_resp = self.fuse.weight.flatten(1).split(self.split, dim=1)
        visual = torch.matmul(v.transpose(1, 2), w_vis.t())  # (B, P, mixed), once per image
        words = F.linear(emb, w_emb) + F.linear(hid, w_hid, self.fuse.bias)  # (T, B, mixed)
        filters = self.dynamic_filters(emb, hid)  # (B, T, K, C)
        # All words' response maps in one batched product: (B, T·K, C) @ (B, C, P).
        responses = torch.bmm(filters.view(batch, -1, channels), v)
        responses = responses.view(batch, steps, self.num_filters, -1).permute(1, 0, 3, 2)
        return visual + words[:, :, None] + F.linear(responses, w_resp)

    def recur(self, fused: Tensor, mask_pad: Tensor, lengths: Tensor, size: tuple[int, int]
              ) -> Tensor:
        """Run the multimodal RNN over the words at every cell; read each sentence's last word.

        Args:
            fused: ``(T, B, P, mixed_size)`` from :meth:`fused_input`.
            mask_pad: ``(T, B)`` bool, True = padding.
            lengths: ``(B,)`` int64, real words per sentence (≥ 1).
            size: ``(h, w)`` with ``h·w = P``.

        Returns:
            ``(B, hid_mixed_size, h, w)``.
        """
        steps, batch, cells, mixed = fused.shape
        cell_mask = mask_pad[:, :, None].expand(steps, batch, cells).reshape(steps, -1)
        out, _ = self.mrnn(fused.reshape(steps, batch * cells, mixed), cell_mask)
        last = (lengths - 1).repeat_interleave(cells)  # (B·P,)
        final = out[last, torch.arange(batch * cells, device=out.device)]  # (B·P, hid_mixed)
        return final.view(batch, *size, -1).permute(0, 3, 1, 2)

    def forward(self, vis: Tensor, emb: Tensor, hid: Tensor, mask_pad: Tensor, lengths: Tensor
                ) -> Tensor:
        """``vis (B, C, h, w)``, ``emb (T, B, E)``, ``hid (T, B, H)``, ``mask_pad (T, B)``,
        ``lengths (B,)`` → multimodal features ``(B, hid_mixed_size, h, w)``."""
        return self.recur(self.fused_input(vis, emb, hid), mask_pad, lengths, vis.shape[-2:])


def reference_fused_input(synthesis: Synthesis, vis: Tensor, emb: Tensor, hid: Tensor) -> Tensor:
    """:meth:`Synthesis.fused_input` computed the way the original code did, for comparison.

    One image at a time, one word at a time: per word a ``conv2d`` with that word's K filters,
    then the full ``(T, C + E + H + K, h, w)`` concatenation through the fusion conv.
    Same arguments and result as :meth:`Synthesis.fused_input`; slow and memory-hungry.
    """
    steps, batch, _ = emb.shape
    height, width = vis.shape[-2:]
    filters = synthesis.dynamic_filters(emb, hid)
    per_image = []
    for b in range(batch):
        image = vis[b:b + 1]
        responses = torch.cat([F.conv2d(image, filters[b, t][:, :, None, None])
                               for t in range(steps)])  # (T, K, h, w)
        lang = torch.cat([emb[:, b], hid[:, b]], dim=-1)[:, :, None, None]
        stacked = torch.cat([image.expand(steps, -1, -1, -1),
                             lang.expand(-1, -1, height, width), responses], dim=1)
        per_image.append(synthesis.fuse(stacked).flatten(2).transpose(1, 2))  # (T, P, mixed)
    return torch.stack(per_image, dim=1)
