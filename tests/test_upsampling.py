"""dmn_model.upsampling: stage order, shapes and odd sizes."""

import pytest
import torch

from dmn_model.upsampling import Upsampling


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
