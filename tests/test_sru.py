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


def _loop_recurrence(x_tilde, forget, mask_pad):
    """The per-step lerp/where loop the SRU used before the fused autograd function."""
    c = x_tilde.new_zeros(x_tilde.shape[1:])
    cells = []
    for t in range(x_tilde.shape[0]):
        c = torch.where(mask_pad[t, :, None], c, torch.lerp(x_tilde[t], c, forget[t]))
        cells.append(c)
    return torch.stack(cells)


def test_fused_recurrence_matches_the_loop_and_gradchecks():
    from dmn_model.sru import sru_recurrence
    torch.manual_seed(0)
    steps, batch, hidden = 6, 3, 5
    x_tilde = torch.randn(steps, batch, hidden, dtype=torch.float64, requires_grad=True)
    forget = torch.rand(steps, batch, hidden, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(steps, batch, dtype=torch.bool)
    mask[4:, 1] = True
    mask[5:, 2] = True
    fused, loop = sru_recurrence(x_tilde, forget, mask), _loop_recurrence(x_tilde, forget, mask)
    assert torch.equal(fused, loop)
    grad = torch.randn_like(fused)
    for a, b in zip(torch.autograd.grad(fused, (x_tilde, forget), grad),
                    torch.autograd.grad(loop, (x_tilde, forget), grad)):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, f: sru_recurrence(x, f, mask), (x_tilde, forget))
    assert torch.autograd.gradcheck(lambda x, f: sru_recurrence(x, f, None), (x_tilde, forget))
