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


def _reference_forward(synth, vis, emb, hid, mask_pad, lengths, image_index):
    """The straightforward computation: visual map copied per sentence, the full ``M_t`` through
    the stock multimodal RNN at every step."""
    per_sentence = vis if image_index is None else vis[image_index]
    return synth.recur(reference_fused_input(synth, per_sentence, emb, hid), mask_pad, lengths,
                       vis.shape[-2:])


@pytest.mark.parametrize("mixed_size,hid_mixed_size,layers", [
    (10, 6, 3),  # first layer projects its highway (k = 4), as the paper's 1000 → 1005
    (6, 6, 2),  # the highway is M_t itself (k = 3)
    (10, 6, 1),  # one layer: the first is also the last
    (6, 6, 1),
])
@pytest.mark.parametrize("shared", [True, False])
def test_sru_forward_equals_reference_values_and_gradients(mixed_size, hid_mixed_size, layers,
                                                           shared):
    torch.manual_seed(0)
    cfg = preset("tiny", emb_size=8, hid_size=8, mixed_size=mixed_size,
                 hid_mixed_size=hid_mixed_size, mixed_layers=layers, num_filters=3)
    synth = Synthesis(6, cfg)
    for p in synth.mrnn.parameters():  # non-zero gate biases, so that a lost bias shows
        torch.nn.init.uniform_(p, -0.5, 0.5)
    batch, steps = 8, 5
    vis, emb, hid = _inputs(cfg, vis_channels=6, batch=batch, steps=steps, size=(3, 5))
    # shared: 8 sentences about 2 images; else one image per sentence (training's B == N)
    image_index = torch.tensor([0, 1, 1, 0, 0, 1, 0, 0]) if shared else None
    vis = (vis[:2] if shared else vis).requires_grad_(True)
    emb, hid = emb.requires_grad_(True), hid.requires_grad_(True)
    lengths = torch.tensor([5, 1, 3, 2, 5, 4, 1, 2])
    mask_pad = torch.arange(steps)[:, None] >= lengths[None, :]
    results = []
    for fn in (synth, lambda *a: _reference_forward(synth, *a)):
        out = fn(vis, emb, hid, mask_pad, lengths, image_index)
        inputs = [vis, emb, hid, *synth.parameters()]
        grads = torch.autograd.grad((out * torch.linspace(-1, 2, out.numel()).view(out.shape))
                                    .sum(), inputs, allow_unused=True)
        results.append((out, grads))
    (fast, fast_grads), (slow, slow_grads) = results
    assert fast.shape == (batch, hid_mixed_size, 3, 5)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_grads, slow_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_fused_input_with_image_index_equals_per_sentence_copy():
    torch.manual_seed(0)
    cfg = preset("tiny", emb_size=8, hid_size=8, mixed_size=10, num_filters=3)
    synth = Synthesis(6, cfg)
    vis, emb, hid = _inputs(cfg, vis_channels=6, batch=6)
    image_index = torch.tensor([2, 0, 2, 2, 1, 0])
    vis = vis[:3]
    fast = synth.fused_input(vis, emb, hid, image_index)
    slow = reference_fused_input(synth, vis[image_index], emb, hid)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
