"""tbptt_ext.diagnostics: GradientFlow against autograd through torch.nn cell loops,
and the truncation-bias probe against an independent computation."""

import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import tbptt_ext
from tbptt_ext.diagnostics import GradientFlow, truncation_bias

T, B, I, H = 7, 3, 4, 5
CELLS = {"RNN_TANH": nn.RNNCell, "RNN_RELU": nn.RNNCell, "LSTM": nn.LSTMCell, "GRU": nn.GRUCell}


def make(cell, layers, bidirectional, backend="auto"):
    kwargs = dict(num_layers=layers, bidirectional=bidirectional, dtype=torch.float64, backend=backend)
    if cell.startswith("RNN"):
        kwargs["nonlinearity"] = "tanh" if cell == "RNN_TANH" else "relu"
    return getattr(tbptt_ext, "RNN" if cell.startswith("RNN") else cell)(I, H, **kwargs)


def cell_loop_norms(module, cell, x, weights):
    """||dL/dh_t|| by autograd through torch.nn cells, one step at a time: [L*D, T]."""
    directions = 2 if module.bidirectional else 1
    hs = {}
    layer_input = x
    for layer in range(module.num_layers):
        outs = []
        for d in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            kwargs = {"nonlinearity": "tanh" if cell == "RNN_TANH" else "relu"} if cell.startswith("RNN") else {}
            c = CELLS[cell](layer_input.shape[-1], H, dtype=torch.float64, **kwargs)
            with torch.no_grad():
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(c, name).copy_(getattr(module, name + suffix))
            state = None
            steps = reversed(range(T)) if d else range(T)
            out = [None] * T
            for t in steps:
                state = c(layer_input[t], state)
                h = state[0] if cell == "LSTM" else state
                h.retain_grad()
                hs[(layer * directions + d, t)] = h
                out[t] = h
            outs.append(torch.stack(out))
        layer_input = torch.cat(outs, -1)
    (layer_input * weights).sum().backward()
    return torch.tensor([[hs[(row, t)].grad.norm().item() for t in range(T)]
                         for row in range(module.num_layers * directions)], dtype=torch.float64)


@pytest.mark.parametrize("cell,layers,bidirectional,backend",
                         list(itertools.product(CELLS, [1, 2], [False, True], ["fused", "reference"])))
def test_gradient_flow_matches_autograd_through_a_cell_loop(cell, layers, bidirectional, backend):
    if backend == "fused" and "cpu" not in tbptt_ext.compiled_backends():
        pytest.skip("compiled CPU kernels not available")
    torch.manual_seed(0)
    module = make(cell, layers, bidirectional, backend)
    x = torch.randn(T, B, I, dtype=torch.float64)
    weights = torch.randn(T, B, H * (2 if bidirectional else 1), dtype=torch.float64)
    with GradientFlow(module) as flow:
        out, _ = module(x)
        (out * weights).sum().backward()
    assert len(flow.records) == 1 and flow.records[0].shape == (layers * (1 + bidirectional), T)
    truth = cell_loop_norms(module, cell, x, weights)
    torch.testing.assert_close(flow.records[0], truth, rtol=1e-10, atol=1e-12)


def test_records_per_backward_only_inside_the_context(tmp_path):
    torch.manual_seed(0)
    module = make("LSTM", 2, False)
    x = torch.randn(T, B, I, dtype=torch.float64)
    module(x)[0].sum().backward()  # outside: nothing
    with GradientFlow(module) as flow:
        for _ in range(3):
            module(x)[0].square().sum().backward()
        with torch.no_grad():
            module(x)  # no backward, no record
        out, _ = module(x)
        out.sum().backward(retain_graph=True)
        out.sum().backward()  # a second backward through the same graph: a second record
    assert len(flow.records) == 5
    module(x)[0].sum().backward()
    assert len(flow.records) == 5 and module._flow_recorder is None
    stats = flow.summary()
    assert stats["mean"].shape == (2, T) and torch.all(stats["min"] <= stats["max"])
    flow.plot(tmp_path / "flow.png")
    assert (tmp_path / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_packed_input_and_truncated_chunks():
    torch.manual_seed(0)
    module = make("GRU", 1, True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    packed = pack_padded_sequence(x, [7, 5, 2])
    with GradientFlow(module) as flow:
        out, _ = module(packed)
        out.data.sum().backward()
        state = None
        for chunk in x.split(3):  # TBPTT-style chunks of 3, 3, 1 steps
            out, state = module(chunk, state)
            out.sum().backward()
            state = state.detach()
    assert [r.shape[1] for r in flow.records] == [T, 3, 3, 1]
    assert not torch.isnan(flow.records[0]).any()


def test_one_record_per_backward_across_forward_calls():
    # TBPTT(k1, k2 > k1) runs several chunks forward, then one backward over the window:
    # one record per backward, the calls side by side in the order they ran, equal to one
    # call over the whole window (validated against autograd above)
    torch.manual_seed(0)
    module = make("LSTM", 2, False)
    x = torch.randn(T, B, I, dtype=torch.float64)
    weights = torch.randn(T, B, H, dtype=torch.float64)
    with GradientFlow(module) as flow:
        out, _ = module(x)
        (out * weights).sum().backward()
        first, state = module(x[:3])
        second, _ = module(x[3:], state)
        (torch.cat([first, second]) * weights).sum().backward()
    assert len(flow.records) == 2 and flow.records[1].shape == (2, T)
    torch.testing.assert_close(flow.records[1], flow.records[0], rtol=1e-12, atol=0)
    # the TBPTT helper with k2 = 2 k1: one record per update, each as wide as its window
    model = Net(tbptt_ext.GRU(I, H, dtype=torch.float64))
    trainer = tbptt_ext.TBPTT(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.MSELoss(), k1=2, k2=4)
    with GradientFlow(model.rnn) as flow:
        result = trainer.run(x, torch.randn(T, B, 2, dtype=torch.float64))
    assert len(flow.records) == len(result.losses) == 4  # chunks of 2, 2, 2, 1 steps (T = 7)
    assert [r.shape[1] for r in flow.records] == [2, 4, 4, 3]
    assert not any(torch.isnan(r).any() for r in flow.records)


def test_record_of_a_backward_that_skips_a_layer():
    # the lowest layer frozen and the input without a gradient: its backward never runs,
    # the record still comes, NaN in that layer's row
    torch.manual_seed(0)
    module = make("LSTM", 2, False)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with GradientFlow(module) as flow:
        module(x)[0].sum().backward()
        for name, p in module.named_parameters():
            p.requires_grad_(not name.endswith("_l0"))
        module(x)[0].sum().backward()
    full, partial = flow.records
    assert torch.isnan(partial[0]).all() and not torch.isnan(partial[1]).any()
    torch.testing.assert_close(partial[1], full[1], rtol=1e-12, atol=0)


def test_a_backward_that_fails_leaves_no_record_and_does_not_spoil_the_next():
    torch.manual_seed(0)
    module = make("GRU", 2, False)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    with GradientFlow(module) as flow:
        out, _ = module(x)
        (out * 2).sum().backward()
        out, _ = module(x)
        x.register_hook(lambda g: (_ for _ in ()).throw(RuntimeError("hook failed")))  # after the module's backward
        with pytest.raises(RuntimeError, match="hook failed"):
            (out * 2).sum().backward()
        x._backward_hooks.clear()
        out, _ = module(x)
        (out * 2).sum().backward()
    assert len(flow.records) == 2
    torch.testing.assert_close(flow.records[1], flow.records[0], rtol=1e-12, atol=0)


def test_records_of_nested_threaded_vmapped_and_late_backwards():
    import threading

    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    module = make("GRU", 1, False)
    x = torch.randn(6, 2, I, dtype=torch.float64, requires_grad=True)
    # a reentrant checkpoint's recompute is a backward of its own inside the outer one:
    # its steps are its own record, the outer one keeps the rest (none lost)
    with GradientFlow(module) as flow:
        a, s = module(x[:3])
        b, _ = module(x[3:], s)
        torch.cat([a, b]).sum().backward()
        a, s = checkpoint(lambda xx: module(xx), x[:3], use_reentrant=True)
        b, _ = module(x[3:], s)
        torch.cat([a, b]).sum().backward()
    whole, *split = flow.records
    assert whole.shape == (1, 6) and sorted(r.shape[1] for r in split) == [3, 3]
    torch.testing.assert_close(torch.cat(split, 1).sort().values, whole.sort().values)
    # two threads backpropagating at once: each backward its own record
    barrier = threading.Barrier(2)

    def work(xs):
        a, s = module(xs[:3])
        a.register_hook(lambda g: (barrier.wait(), g)[1])  # the two backwards interleave
        b, _ = module(xs[3:], s)
        torch.cat([a, b]).sum().backward()

    with GradientFlow(module) as flow:
        threads = [threading.Thread(target=work, args=(torch.randn(6, 2, I, dtype=torch.float64),)) for _ in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert [r.shape for r in flow.records] == [(1, 6), (1, 6)]
    assert not any(torch.isnan(r).any() for r in flow.records)
    # under vmap (jacrev) nothing is recorded, and reading the records works
    with GradientFlow(module) as flow:
        torch.func.jacrev(lambda xx: module(xx)[0])(x.detach())
        out, _ = module(x)
    assert flow.records == []
    out.sum().backward()  # after the context: not recorded either
    assert flow.records == []


def test_gradient_flow_errors():
    with pytest.raises(TypeError, match="needs a tbptt_ext RNN, LSTM or GRU"):
        GradientFlow(nn.LSTM(3, 4))
    module = make("RNN_TANH", 1, False)
    with GradientFlow(module):
        with pytest.raises(RuntimeError, match="already being recorded"):
            GradientFlow(module).__enter__()
    with pytest.raises(RuntimeError, match="recorded nothing"):
        GradientFlow(module).summary()


# ---------------------------------------------------------------- probe
class Net(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, 2, dtype=torch.float64)

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return self.head(out), state


def independent_truncated_gradient(model, x, y, k):
    """The gradient of one loss over the window with the state detached every k steps,
    by a torch.nn cell loop written out."""
    rnn = model.rnn
    cell = nn.LSTMCell(I, H, dtype=torch.float64)
    cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh = (rnn.weight_ih_l0, rnn.weight_hh_l0,
                                                                  rnn.bias_ih_l0, rnn.bias_hh_l0)
    state, outs = None, []
    for t in range(x.shape[0]):
        if t % k == 0 and state is not None:
            state = tuple(s.detach() for s in state)
        state = cell(x[t], state)
        outs.append(state[0])
    loss = nn.functional.mse_loss(model.head(torch.stack(outs)), y)
    return torch.autograd.grad(loss, list(model.parameters()))


def test_truncation_bias_against_an_independent_computation(tmp_path):
    torch.manual_seed(0)
    model = Net(tbptt_ext.LSTM(I, H, dtype=torch.float64))
    x, y = torch.randn(24, B, I, dtype=torch.float64), torch.randn(24, B, 2, dtype=torch.float64)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)  # must survive untouched
    before = [p.detach().clone() for p in model.parameters()]
    result = truncation_bias(model, x, y, nn.functional.mse_loss, ks=[1, 4, 8, 24])
    full = torch.cat([g.reshape(-1) for g in independent_truncated_gradient(model, x, y, 24)])
    for k, cosine, rel in zip(result.ks, result.cosine, result.relative_error):
        g = torch.cat([g.reshape(-1) for g in independent_truncated_gradient(model, x, y, k)])
        assert cosine == pytest.approx(torch.nn.functional.cosine_similarity(g, full, 0).item(), abs=1e-10)
        assert rel == pytest.approx(((g - full).norm() / full.norm()).item(), abs=1e-10)
    assert result.cosine[-1] == pytest.approx(1.0) and result.relative_error[-1] == pytest.approx(0.0, abs=1e-12)
    assert result.cosine[0] < 1.0
    assert set(result.per_parameter) == {n for n, _ in model.named_parameters()}
    assert result.suggest(threshold=1.0 - 1e-9) == 24
    assert result.suggest(threshold=-1.0) == 1
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b) and torch.equal(p.grad, torch.full_like(p, 7.0))
    assert "cosine" in result.table()
    result.plot(tmp_path / "bias.png")
    assert (tmp_path / "bias.png").stat().st_size > 0


def test_truncation_bias_same_dropout_masks_and_errors():
    torch.manual_seed(0)
    model = Net(tbptt_ext.GRU(I, H, num_layers=2, dropout=0.5, dtype=torch.float64))
    x, y = torch.randn(12, B, I, dtype=torch.float64), torch.randn(12, B, 2, dtype=torch.float64)
    result = truncation_bias(model, x, y, nn.functional.mse_loss, ks=[12])
    assert result.cosine[0] == pytest.approx(1.0)  # k = window: the same masks, the same gradient
    for ks in ([0], [2.5], [True]):
        with pytest.raises(ValueError, match="each of ks must be a positive integer"):
            truncation_bias(model, x, y, nn.functional.mse_loss, ks=ks)
    with pytest.raises(ValueError, match="ks must list at least one"):
        truncation_bias(model, x, y, nn.functional.mse_loss, ks=[])


class DroppedNet(nn.Module):
    """A recurrence that truncation cannot bend (W_hh = 0, frozen) but with dropout drawn in
    several calls per forward: between layers of a 3-layer RNN and again in the head."""

    def __init__(self):
        super().__init__()
        self.rnn = tbptt_ext.RNN(I, H, num_layers=3, dropout=0.5, dtype=torch.float64)
        for name, p in self.rnn.named_parameters():
            if "weight_hh" in name:
                p.data.zero_()
                p.requires_grad_(False)
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(H, 2, dtype=torch.float64))

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return self.head(out), state


def test_truncation_bias_is_not_dropout_noise():
    # Chunked forwards draw the masks in another order than one forward over the window;
    # each k must be compared with a full gradient drawn in the same order, else dropout
    # noise reads as truncation bias (cosine 0.80-0.86 here before).
    torch.manual_seed(0)
    model = DroppedNet()
    x, y = torch.randn(16, B, I, dtype=torch.float64), torch.randn(16, B, 2, dtype=torch.float64)
    state = torch.get_rng_state()
    result = truncation_bias(model, x, y, nn.functional.mse_loss, ks=[1, 4, 16])
    assert torch.equal(torch.get_rng_state(), state)
    for cosine, rel in zip(result.cosine, result.relative_error):
        assert cosine == pytest.approx(1.0, abs=1e-12) and rel == pytest.approx(0.0, abs=1e-12)
    assert result.full_gradient_norm > 0


class DelayedReadout(nn.Module):
    """Reads out the state entering each step (a one-step-delayed prediction): with k = 1
    no loss term reaches the recurrence, so its truncated gradient is exactly zero."""

    def __init__(self):
        super().__init__()
        self.rnn = tbptt_ext.GRU(I, H, dtype=torch.float64)

    def forward(self, x, state=None):
        if state is None:
            state = x.new_zeros(1, x.shape[1], H)
        out, state_n = self.rnn(x, state)
        return torch.cat([state, out[:-1]]).sum(-1, keepdim=True), state_n


def test_truncation_bias_of_a_gradient_lost_entirely():
    # a zero truncated gradient shares no direction with the full one: cosine 0, not 1
    # (suggest() picked such a k before), while the exact k = window gives exactly 1
    torch.manual_seed(0)
    model = DelayedReadout()
    x, y = torch.randn(8, B, I, dtype=torch.float64), torch.randn(8, B, 1, dtype=torch.float64)
    result = truncation_bias(model, x, y, nn.functional.mse_loss, ks=[1, 2, 8])
    assert result.relative_error[0] == pytest.approx(1.0) and result.cosine[0] == 0.0
    assert 0.0 < abs(result.cosine[1]) < 1.0
    assert result.cosine[2] == 1.0 and result.relative_error[2] == 0.0
    assert result.suggest(threshold=1.0) == 8 and result.suggest(threshold=0.0) == 1
    for name, values in result.per_parameter.items():
        assert values["cosine"][0] == 0.0 and values["cosine"][2] == 1.0, name
        assert all(-1.0 <= c <= 1.0 for c in values["cosine"]), name
    # a NaN gradient gives a NaN cosine (not the clamp's -1)
    model.rnn.weight_hh_l0.data[0, 0] = float("nan")
    result = truncation_bias(model, x, y, nn.functional.mse_loss, ks=[2])
    assert math.isnan(result.cosine[0]) and result.suggest(threshold=-1.0) is None


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_gradient_flow_under_create_graph(cell):
    # a backward with create_graph=True (gradients recomputed through the reference
    # forward, see tbptt_ext.functions) still records the same per-step norms
    if "cpu" not in tbptt_ext.compiled_backends():
        pytest.skip("compiled CPU kernels not available")
    torch.manual_seed(0)
    module = make(cell, 1, False, "fused")
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(T, B, H, dtype=torch.float64)
    records = []
    for create_graph in (False, True):
        with GradientFlow(module) as flow:
            out, _ = module(x)
            (grad_x,) = torch.autograd.grad((out * weights).sum(), x, create_graph=create_graph)
        assert grad_x.requires_grad == create_graph and len(flow.records) == 1
        records.append(flow.records[0])
    torch.testing.assert_close(records[1], records[0], rtol=1e-12, atol=0)
