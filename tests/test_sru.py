"""dmn_model.sru: the 2017 SRU against the `sru` package, padding semantics, the LSTM wrapper."""

import pytest
import torch

from dmn_model.sru import LSTM, SRU, make_rnn


def _padded_batch(steps: int, batch: int, size: int, lengths: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, size, generator=gen)
    mask_pad = torch.arange(steps)[:, None] >= torch.tensor(lengths)[None, :]
    return x, mask_pad


def _copy_from_reference(ours: SRU, ref) -> None:
    """sru 2.6.0 stores W as (in, hidden * k) with the k blocks interleaved per unit."""
    with torch.no_grad():
        for mine, theirs in zip(ours.layers, ref.rnn_lst):
            w = theirs.weight.view(mine.input_size, mine.hidden_size, mine.k)
            mine.weight.copy_(w.permute(0, 2, 1))
            mine.bias.copy_(theirs.bias.view(2, mine.hidden_size))


@pytest.mark.filterwarnings("ignore:.*(use_tanh|grad_enabled).*:UserWarning")
@pytest.mark.parametrize("input_size", [12, 16])  # 12 != hidden: the 4-matrix highway projection
def test_matches_sru_package_v1_tanh_on_padded_batch(input_size):
    sru = pytest.importorskip("sru")
    torch.manual_seed(0)
    ref = sru.SRU(input_size, 16, num_layers=3, v1=True, use_tanh=True, rescale=False)
    with torch.no_grad():  # non-zero gate biases so that a swapped bias would show
        for layer in ref.rnn_lst:
            layer.bias.uniform_(-1, 1)
    ours = SRU(input_size, 16, num_layers=3)
    _copy_from_reference(ours, ref)
    x, mask_pad = _padded_batch(7, 4, input_size, [7, 3, 5, 1])

    h_ref, c_ref = ref(x, mask_pad=mask_pad)
    h, c = ours(x, mask_pad)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c, c_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rnn_cls", [SRU, LSTM])
def test_padding_does_not_leak(rnn_cls):
    torch.manual_seed(0)
    rnn = rnn_cls(5, 6, 2)
    x, mask_pad = _padded_batch(6, 3, 5, [6, 2, 4])
    h, c = rnn(x, mask_pad)
    garbage = x.clone()
    garbage[mask_pad] = 1e3 * torch.randn(int(mask_pad.sum()), 5)
    h2, c2 = rnn(garbage, mask_pad)
    torch.testing.assert_close(h2, h)
    torch.testing.assert_close(c2, c)
    assert torch.all(h[mask_pad] == 0)
    # A sequence alone, unpadded, gives the same valid outputs as inside the padded batch.
    h_alone, _ = rnn(x[:2, 1:2], None)
    torch.testing.assert_close(h_alone, h[:2, 1:2], atol=1e-6, rtol=1e-6)


def test_gradients_flow_only_through_valid_steps():
    torch.manual_seed(0)
    rnn = SRU(4, 4, 2)
    x, mask_pad = _padded_batch(5, 2, 4, [5, 2])
    x.requires_grad_(True)
    h, _ = rnn(x, mask_pad)
    h.sum().backward()
    assert torch.all(x.grad[mask_pad] == 0)
    assert torch.all(x.grad[~mask_pad].abs().sum(-1) > 0)


def test_make_rnn_picks_the_cell():
    assert isinstance(make_rnn(False, 3, 4, 1), SRU)
    assert isinstance(make_rnn(True, 3, 4, 1), LSTM)
