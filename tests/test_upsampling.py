"""dmn_model.upsampling: stage order, shapes and odd sizes."""

import pytest
import torch

from dmn_model.upsampling import Upsampling, reference_upsampling


def _pyramid(size, channels, batch=2):
    """Feature maps at strides 32, 16, ... (coarsest first), rounded up like a strided CNN."""
    feats = []
    for i, c in enumerate(channels):
        stride = 32 // 2 ** i
        feats.append(torch.randn(batch, c, -(-size // stride), -(-size // stride)))
    return feats


@pytest.mark.parametrize("activation", ["none", "relu", "prelu"])
def test_five_stages_reach_stride_one(activation):
    skips = _pyramid(64, [40, 30, 20, 10, 5])
    up = Upsampling(7, [40, 30, 20, 10, 5], [16, 8, 8, 4, 4], activation=activation)
    out = up(torch.randn(2, 7, 2, 2), skips)
    assert out.shape == (2, 1, 64, 64)
    assert [c.in_channels for c in up.convs] == [47, 46, 28, 18, 9]


def test_fewer_stages_and_odd_sizes():
    skips = _pyramid(100, [12, 6, 3])  # 4x4, 7x7, 13x13
    up = Upsampling(5, [12, 6, 3], [8, 8, 8], mode="nearest")
    out = up(torch.randn(2, 5, 4, 4), skips)
    assert out.shape == (2, 1, 26, 26)


def test_every_skip_feeds_the_output():
    torch.manual_seed(0)
    skips = [s.requires_grad_(True) for s in _pyramid(32, [4, 4, 4])]
    up = Upsampling(3, [4, 4, 4], [4, 4, 4], activation="relu")
    up(torch.randn(2, 3, 1, 1), skips).sum().backward()
    assert all(s.grad.abs().sum() > 0 for s in skips)


@pytest.mark.parametrize("mode,activation", [("bilinear", "prelu"), ("nearest", "relu"),
                                             ("bilinear", "none")])
@pytest.mark.parametrize("shared", [True, False])
def test_split_conv_equals_conv_of_concatenation(mode, activation, shared):
    """Skip terms once per image (then gathered) = one conv over cat[x, skip] per sentence:
    values and gradients, odd sizes (the interpolate branch) included. In float64, so that
    only a different summation order could tell them apart."""
    torch.manual_seed(0)
    up = Upsampling(5, [12, 6, 3], [8, 7, 6], mode=mode, activation=activation).double()
    image_index = torch.tensor([1, 0, 1, 1, 0]) if shared else None
    skips = [s.double().requires_grad_(True)
             for s in _pyramid(100, [12, 6, 3], batch=2 if shared else 5)]
    x = torch.randn(5, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    results = []
    for fn in (up, lambda *a: reference_upsampling(up, *a)):
        out = fn(x, skips, image_index)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
        grads = torch.autograd.grad((out * weights).sum(), [x, *skips, *up.parameters()])
        results.append((out, grads))
    (fast, fast_grads), (slow, slow_grads) = results
    assert fast.shape == (5, 1, 26, 26)
    torch.testing.assert_close(fast, slow, atol=1e-12, rtol=1e-10)
    for a, b in zip(fast_grads, slow_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    with torch.no_grad():  # and in float32 at float32's precision
        up.float()
        single = [s.detach().float() for s in skips], x.detach().float()
        torch.testing.assert_close(up(single[1], single[0], image_index),
                                   reference_upsampling(up, single[1], single[0], image_index),
                                   atol=1e-5, rtol=1e-5)
