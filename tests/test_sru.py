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


def _recurrence_inputs(k: int, dtype=torch.float64, steps=6, batch=3, hidden=5, seed=0):
    """u, bias, highway (k = 3 only) and a padded mask (one full, two shorter sequences)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(steps, batch, k, hidden, generator=gen, dtype=dtype).requires_grad_()
    bias = torch.randn(2, hidden, generator=gen, dtype=dtype).requires_grad_()
    highway = (torch.randn(steps, batch, hidden, generator=gen, dtype=dtype).requires_grad_()
               if k == 3 else None)
    mask = torch.zeros(steps, batch, dtype=torch.bool)
    mask[steps - 2:, 1] = True
    mask[steps - 1:, 2] = True
    return u, bias, highway, mask


@pytest.mark.parametrize("k", [3, 4])
def test_fused_recurrence_matches_per_step_ops_and_gradchecks(k, monkeypatch):
    from dmn_model.sru import reference_sru_recurrence, sru_recurrence
    monkeypatch.setenv("DMN_SRU_BACKEND", "loop")
    u, bias, highway, mask = _recurrence_inputs(k)
    inputs = [t for t in (u, bias, highway) if t is not None]
    fused = sru_recurrence(u, bias, highway, mask)
    ref = reference_sru_recurrence(u, bias, highway, mask)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    grads = [torch.randn_like(fused[0]), torch.randn_like(fused[1])]
    for a, b in zip(torch.autograd.grad(fused, inputs, grads),
                    torch.autograd.grad(ref, inputs, grads)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.all(fused[0][mask] == 0)

    def run(mask_pad):
        def fn(*args):
            args = list(args)
            return sru_recurrence(args[0], args[1], args[2] if k == 3 else None, mask_pad)
        return fn
    assert torch.autograd.gradcheck(run(mask), inputs)
    assert torch.autograd.gradcheck(run(None), inputs)


def test_fused_recurrence_saves_less_than_per_step_ops():
    from dmn_model.sru import reference_sru_recurrence, sru_recurrence
    u, bias, _, mask = _recurrence_inputs(4, torch.float32, steps=10, batch=8, hidden=32)

    def saved(fn) -> int:
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(u, bias, None, mask)
        return sum(storages.values())
    fused, ref = saved(sru_recurrence), saved(reference_sru_recurrence)
    cells = u[:, :, 0].numel() * 4
    assert fused <= u.numel() * 4 + cells + 4096  # u, cells, the mask and the bias only
    assert ref >= fused + 2 * cells  # the reference also keeps f, r, tanh(c) per step


def test_unknown_backend_is_a_clear_error(monkeypatch):
    from dmn_model.sru import sru_recurrence
    monkeypatch.setenv("DMN_SRU_BACKEND", "cudnn")
    u, bias, _, mask = _recurrence_inputs(4)
    with pytest.raises(ValueError, match="DMN_SRU_BACKEND must be one of auto, loop, triton"):
        sru_recurrence(u, bias, None, mask)


def test_bench_sru_quick(tmp_path, capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "pipelines" / "bench_sru.py"
    spec = importlib.util.spec_from_file_location("bench_sru", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        bench.main(["--quick", "--threads", "1", "--out", str(tmp_path / "t.md")])
    finally:
        torch.set_num_threads(threads)
    rows = [r for r in (tmp_path / "t.md").read_text().splitlines() if r.startswith("| 1 |")]
    assert [r.split(" | ")[2:4] for r in rows] == [
        ["fp32", "per-step ops"], ["fp32", "fused loop"], ["bf16", "per-step ops"],
        ["bf16", "fused loop"]]
    for ref, fused in (rows[:2], rows[2:]):  # the fused recurrence saves less
        assert float(fused.split(" | ")[6]) < float(ref.split(" | ")[6])
