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
from .sru import SRU, make_rnn, sru_recurrence

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

    def fused_input(self, vis: Tensor, emb: Tensor, hid: Tensor,
                    image_index: Tensor | None = None) -> Tensor:
        """The multimodal RNN's input M_t, by the decomposed 1×1 conv.

        Args:
            vis: ``(N, C, h, w)`` float, top feature of ``N`` images with coordinates.
            emb: ``(T, B, E)`` word embeddings.
            hid: ``(T, B, H)`` language states.
            image_index: ``(B,)`` int64, the image of each sentence; None: ``B == N``, sentence
                ``i`` is about image ``i``.

        Returns:
            ``(T, B, h·w, mixed_size)``.
        """
        w_vis, w_emb, w_hid, w_resp = self.fuse.weight.flatten(1).split(self.split, dim=1)
        visual = _take(self._visual(vis, w_vis), image_index)  # (B, P, mixed)
        words = F.linear(emb, w_emb) + F.linear(hid, w_hid, self.fuse.bias)  # (T, B, mixed)
        responses = self.responses(vis, self.dynamic_filters(emb, hid), image_index)
        return visual + words[:, :, None] + F.linear(responses, w_resp)

    @staticmethod
    def _visual(vis: Tensor, w_vis: Tensor) -> Tensor:
        """``W_V V`` once per image: ``(N, C, h, w)`` → ``(N, P, mixed)``."""
        return torch.matmul(vis.flatten(2).transpose(1, 2), w_vis.t())

    def responses(self, vis: Tensor, filters: Tensor, image_index: Tensor | None = None
                  ) -> Tensor:
        """The K response maps of every word: ``vis (N, C, h, w)``, ``filters (B, T, K, C)`` →
        ``(T, B, P, K)``.

        One batched product ``(B, T·K, C) @ (B, C, P)`` when each sentence has its own image;
        with ``image_index``, one product per image over the filters of all its sentences, so
        the visual map is read in place instead of copied per sentence.
        """
        batch, steps, k, channels = filters.shape
        v = vis.flatten(2)  # (N, C, P)
        if image_index is None:
            out = torch.bmm(filters.reshape(batch, steps * k, channels), v)
        else:
            out = v.new_empty(batch, steps * k, v.shape[-1])
            for image in torch.unique(image_index).tolist():
                rows = (image_index == image).nonzero().flatten()
                out = out.index_copy(0, rows, torch.matmul(
                    filters.index_select(0, rows).reshape(-1, steps * k, channels), v[image]))
        return out.view(batch, steps, k, -1).permute(1, 0, 3, 2)

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

    def forward(self, vis: Tensor, emb: Tensor, hid: Tensor, mask_pad: Tensor, lengths: Tensor,
                image_index: Tensor | None = None) -> Tensor:
        """``vis (N, C, h, w)``, ``emb (T, B, E)``, ``hid (T, B, H)``, ``mask_pad (T, B)``,
        ``lengths (B,)``, ``image_index (B,)`` or None (``B == N``) → multimodal features
        ``(B, hid_mixed_size, h, w)``.

        With the SRU, :meth:`_forward_sru` (the same values, see the module docstring);
        the LSTM runs :meth:`recur` on :meth:`fused_input`.
        """
        if isinstance(self.mrnn, SRU):
            return self._forward_sru(vis, emb, hid, mask_pad, lengths, image_index)
        return self.recur(self.fused_input(vis, emb, hid, image_index), mask_pad, lengths,
                          vis.shape[-2:])

    def _forward_sru(self, vis: Tensor, emb: Tensor, hid: Tensor, mask_pad: Tensor,
                     lengths: Tensor, image_index: Tensor | None) -> Tensor:
        """:meth:`recur` of :meth:`fused_input` for the SRU, without building ``M_t``'s
        projection cell by cell, and without computing anything at padded steps.

        The first SRU layer only ever multiplies ``M_t`` by its weight ``U``, and
        ``U M_t = (U W_V) V + U (W_e e_t + W_h h_t + b) + (U W_F) F_t``: a per-image term (once
        per image, not per sentence and word), a per-word vector, and K channels per cell.
        Sentences of equal length run together, so no padded step is projected or recurred
        (a sentence's output does not depend on its padding). The last layer computes its
        reset gate and highway only at the last word, the one that is read.
        """
        steps, batch = emb.shape[:2]
        height, width = vis.shape[-2:]
        w_vis, w_emb, w_hid, w_resp = self.fuse.weight.flatten(1).split(self.split, dim=1)
        first = self.mrnn.layers[0]
        w_first = first.weight.flatten(1)  # (mixed, k·H)
        visual = self._visual(vis, w_vis)  # (N, P, mixed)
        visual_u = visual @ w_first  # (N, P, k·H): the first layer's image term
        words = F.linear(emb, w_emb) + F.linear(hid, w_hid, self.fuse.bias)  # (T, B, mixed)
        words_u = words @ w_first  # (T, B, k·H)
        responses = self.responses(vis, self._valid_filters(emb, hid, ~mask_pad), image_index)
        responses_u = w_resp.t() @ w_first  # (K, k·H)
        index = (image_index if image_index is not None
                 else torch.arange(batch, device=emb.device))
        out = None
        groups = torch.unique(lengths).tolist()
        for length in groups:
            rows = (lengths == length).nonzero().flatten() if len(groups) > 1 else None
            sel = (lambda t: t) if rows is None else (lambda t: t.index_select(1, rows))
            image = index if rows is None else index[rows]
            resp = sel(responses[:length])  # (L, b, P, K)
            u = torch.baddbmm(  # visual + words + responses, the last one accumulated in place
                (visual_u.index_select(0, image)[None] + sel(words_u[:length])[:, :, None])
                .flatten(0, 1), resp.flatten(0, 1),
                responses_u.expand(resp.shape[0] * resp.shape[1], -1, -1))
            # k == 3: the highway is M_t itself (the input size is the hidden size).
            x = None if first.k == 4 else (visual.index_select(0, image)[None]
                                           + sel(words[:length])[:, :, None]
                                           + F.linear(resp, w_resp))
            result = self._recur_unpadded(u.view(*resp.shape[:3], -1), x)
            out = result if rows is None else (
                result.new_zeros(batch, *result.shape[1:]) if out is None else out
            ).index_copy(0, rows, result)
        return out.view(batch, height, width, -1).permute(0, 3, 1, 2)

    def _recur_unpadded(self, u: Tensor, x: Tensor | None) -> Tensor:
        """The SRU stack over sentences without padding, from the first layer's projection
        ``u (L, b, P, k·H)`` (and its input ``x (L, b, P, mixed)`` when that is the highway,
        else None) → the last layer's state at the last word ``(b, P, hid_mixed)``.

        The steps of :class:`dmn_model.sru.SRULayer`, the projection excepted.
        """
        steps, batch, cells = u.shape[:3]
        layers = list(self.mrnn.layers)
        for i, layer in enumerate(layers):
            final = i == len(layers) - 1
            if i > 0:
                # The last layer's reset gate and highway are only read at the last word.
                weight = layer.weight[:, :2] if final else layer.weight
                u = x @ weight.flatten(1)
            u = u.view(steps, batch * cells, -1, layer.hidden_size)
            state_dtype = torch.promote_types(u.dtype, torch.float32)
            highway = None if layer.k == 4 else x.reshape(steps, batch * cells, -1)
            if final:
                # Only the cells are wanted here: the fused recurrence gets zeros for the gates
                # it would spend on h (elementwise work, not the projection they would cost).
                full = u.new_zeros(steps, batch * cells, layer.k, layer.hidden_size)
                full[:, :, :2] = u[:, :, :2]
                _, last_c = sru_recurrence(full, layer.bias, None if layer.k == 4 else
                                           torch.zeros_like(full[:, :, 0]), None)
                break
            h, _ = sru_recurrence(u, layer.bias, highway, None)
            x = h.view(steps, batch, cells, -1)
        x_last = None if x is None else x[-1]  # (b, P, in)
        if i == 0:
            gates = u[-1, :, 2:].view(batch, cells, layer.k - 2, -1)
        else:
            gates = (x_last @ layer.weight[:, 2:].flatten(1)).view(
                batch, cells, layer.k - 2, layer.hidden_size).to(state_dtype)
        reset = torch.sigmoid(gates[:, :, 0].to(state_dtype) + layer.bias[1].to(state_dtype))
        highway = gates[:, :, 1].to(state_dtype) if layer.k == 4 else x_last.to(state_dtype)
        return torch.lerp(highway, torch.tanh(last_c.view(batch, cells, -1)), reset)

    def _valid_filters(self, emb: Tensor, hid: Tensor, valid: Tensor) -> Tensor:
        """:meth:`dynamic_filters` for real words only (zeros at padding): ``(B, T, K, C)``."""
        inp = torch.cat([emb, hid], dim=-1) if self.mix_we else hid
        inp = inp.transpose(0, 1)  # (B, T, ·)
        rows = valid.t()
        out = torch.sigmoid(self.filters(inp[rows]))
        filters = out.new_zeros(*rows.shape, out.shape[-1]).index_put((rows,), out)
        return filters.view(*rows.shape, self.num_filters, self.channels)


def _take(per_image: Tensor, image_index: Tensor | None) -> Tensor:
    """Rows of a per-image tensor for each sentence (all of them, in order, without an index)."""
    return per_image if image_index is None else per_image.index_select(0, image_index)


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
