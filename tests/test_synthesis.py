"""dmn_model.synthesis: the decomposed fusion equals the original's per-word concatenation."""

import pytest
import torch

from dmn_model.config import preset
from dmn_model.synthesis import NUM_COORDS, Synthesis, reference_fused_input


def _inputs(cfg, vis_channels=24, batch=3, steps=5, size=(3, 4), seed=0):
    gen = torch.Generator().manual_seed(seed)
    vis = torch.randn(batch, vis_channels + NUM_COORDS, *size, generator=gen)
    emb = torch.randn(steps, batch, cfg.emb_size, generator=gen)
    hid = torch.randn(steps, batch, cfg.hid_size, generator=gen)
    return vis, emb, hid


@pytest.mark.parametrize("mix_we", [True, False])
def test_decomposed_fusion_equals_per_word_concatenation(mix_we):
    torch.manual_seed(0)
    cfg = preset("tiny", emb_size=16, hid_size=12, mixed_size=20, num_filters=4, mix_we=mix_we)
    synth = Synthesis(24, cfg)
    vis, emb, hid = _inputs(cfg)
    fast = synth.fused_input(vis, emb, hid)
    slow = reference_fused_input(synth, vis, emb, hid)
    assert fast.shape == (5, 3, 12, 20)
    scale = slow.abs().max()
    torch.testing.assert_close(fast / scale, slow / scale, atol=1e-5, rtol=0)


def test_decomposed_fusion_gradients_match_reference():
    torch.manual_seed(0)
    cfg = preset("tiny", emb_size=8, hid_size=8, mixed_size=10, num_filters=3)
    synth = Synthesis(6, cfg)
    vis, emb, hid = (t.requires_grad_(True) for t in _inputs(cfg, vis_channels=6))
    grads = []
    for fn in (synth.fused_input, lambda *a: reference_fused_input(synth, *a)):
        synth.zero_grad()
        out = fn(vis, emb, hid)
        g = torch.autograd.grad(out.square().sum(), [vis, emb, hid, *synth.parameters()],
                                allow_unused=True)
        grads.append([x for x in g if x is not None])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_reads_each_sentence_at_its_last_real_word():
    torch.manual_seed(0)
    cfg = preset("tiny", emb_size=8, hid_size=8, mixed_size=10, hid_mixed_size=6, num_filters=3)
    synth = Synthesis(6, cfg)
    vis, emb, hid = _inputs(cfg, vis_channels=6, batch=2, steps=4)
    lengths = torch.tensor([4, 2])
    mask_pad = torch.arange(4)[:, None] >= lengths[None, :]
    out = synth(vis, emb, hid, mask_pad, lengths)
    assert out.shape == (2, 6, 3, 4)
    alone = synth(vis[1:], emb[:2, 1:], hid[:2, 1:], torch.zeros(2, 1, dtype=torch.bool),
                  lengths[1:])
    torch.testing.assert_close(out[1:], alone, atol=1e-6, rtol=1e-5)
