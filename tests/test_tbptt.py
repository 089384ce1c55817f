"""tbptt_ext.TBPTT and detach_state against hand-written loops."""

import collections
import gc
import weakref

import pytest
import torch
from torch import nn

import tbptt_ext
from tbptt_ext import TBPTT, detach_state
from conftest import requires_fused_cpu


class RNNWithHead(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, 2, dtype=rnn.weight_hh_l0.dtype)

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return self.head(out), state


def make_models(name, dtype=torch.float64):
    torch.manual_seed(0)
    ours = RNNWithHead(getattr(tbptt_ext, name)(3, 6, dtype=dtype))
    theirs = RNNWithHead(getattr(nn, name)(3, 6, dtype=dtype))
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def data(T=97, B=4, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, 3, dtype=dtype, generator=g), torch.randn(T, B, 2, dtype=dtype, generator=g)


def seed_loop(model, x, y, k, lr=0.1, clip=None):
    """The seed's loop, written out."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    state, losses = None, []
    for x_chunk, y_chunk in zip(x.split(k), y.split(k)):
        output, state = model(x_chunk, state)
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        loss = nn.functional.mse_loss(output, y_chunk)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, state


def windowed_loop(model, x, y, k1, k2, lr=0.1):
    """A plain implementation of the TBPTT(k1, k2) rule."""
    n = k2 // k1
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    xs, ys = x.split(k1), y.split(k1)
    anchors = {0: None}  # detached state at the start of chunk s
    losses, final = [], None
    for c in range(len(xs)):
        s = max(0, c - n + 1)
        state = anchors[s]
        for j in range(s, c + 1):
            output, state = model(xs[j], state)
            if j == s:  # the last window to write it is the one right before its use
                anchors[s + 1] = detach_state(state)
        loss = nn.functional.mse_loss(output, ys[c])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        final = detach_state(state)
    return losses, final


def assert_same_run(result, losses, state, model_a, model_b):
    torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(losses), rtol=1e-10, atol=1e-12)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(tbptt_ext.tbptt._flatten(result.state), tbptt_ext.tbptt._flatten(state)):
        assert not a.requires_grad
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@requires_fused_cpu
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("k", [1, 10, 32])
def test_k2_equal_k1_is_the_seed_loop(name, k):
    ours, theirs = make_models(name)
    x, y = data()
    for helper_model, loop_model in [(ours, RNNWithHead(getattr(tbptt_ext, name)(3, 6, dtype=torch.float64))),
                                     (theirs, RNNWithHead(getattr(nn, name)(3, 6, dtype=torch.float64)))]:
        loop_model.load_state_dict(helper_model.state_dict())
        opt = torch.optim.SGD(helper_model.parameters(), lr=0.1)
        result = TBPTT(helper_model, opt, nn.functional.mse_loss, k1=k).run(x, y)
        losses, state = seed_loop(loop_model, x, y, k)
        assert len(result.losses) == -(-x.shape[0] // k)
        assert_same_run(result, losses, state, helper_model, loop_model)
    # and tbptt_ext against torch.nn under the helper
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@requires_fused_cpu
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("k1,k2", [(5, 10), (8, 24), (7, 28)])
def test_k2_multiple_of_k1_follows_the_rule(name, k1, k2):
    for module in (tbptt_ext, nn):
        torch.manual_seed(0)
        model = RNNWithHead(getattr(module, name)(3, 6, dtype=torch.float64))
        reference = RNNWithHead(getattr(module, name)(3, 6, dtype=torch.float64))
        reference.load_state_dict(model.state_dict())
        x, y = data()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        result = TBPTT(model, opt, nn.functional.mse_loss, k1=k1, k2=k2).run(x, y)
        losses, state = windowed_loop(reference, x, y, k1, k2)
        assert_same_run(result, losses, state, model, reference)


def test_k2_differs_from_k1_in_effect():
    x, y = data()
    runs = []
    for k2 in (5, 15):
        torch.manual_seed(0)
        model = RNNWithHead(tbptt_ext.GRU(3, 6, dtype=torch.float64))
        runs.append(TBPTT(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, 5, k2).run(x, y))
    assert runs[0].losses[0] == runs[1].losses[0]  # the first window is one chunk either way
    assert runs[0].losses[5] != runs[1].losses[5]


@requires_fused_cpu
def test_clipping_batch_first_iterable_and_initial_state():
    ours, theirs = make_models("LSTM")
    x, y = data()
    h0 = (torch.randn(1, 4, 6, dtype=torch.float64), torch.randn(1, 4, 6, dtype=torch.float64))
    # batch_first: same run on transposed data
    model_bf = RNNWithHead(tbptt_ext.LSTM(3, 6, batch_first=True, dtype=torch.float64))
    model_bf.load_state_dict(ours.state_dict())
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    a = TBPTT(ours, opt, nn.functional.mse_loss, k1=9, max_grad_norm=0.05).run(x, y, state=h0)
    opt_bf = torch.optim.SGD(model_bf.parameters(), lr=0.1)
    b = TBPTT(model_bf, opt_bf, nn.functional.mse_loss, k1=9, max_grad_norm=0.05, batch_first=True).run(
        x.transpose(0, 1), y.transpose(0, 1), state=h0
    )
    torch.testing.assert_close(torch.tensor(a.losses), torch.tensor(b.losses))
    # an iterable of chunks (a DataLoader over a stream) gives the same as tensors
    opt_it = torch.optim.SGD(theirs.parameters(), lr=0.1)
    loader = list(zip(x.split(9), y.split(9)))
    c = TBPTT(theirs, opt_it, nn.functional.mse_loss, k1=9, max_grad_norm=0.05).run(loader, state=h0)
    torch.testing.assert_close(torch.tensor(a.losses), torch.tensor(c.losses), rtol=1e-9, atol=1e-10)
    # clipping did something: without it the run differs
    torch.manual_seed(0)
    plain = RNNWithHead(tbptt_ext.LSTM(3, 6, dtype=torch.float64))
    plain.load_state_dict(model_bf.state_dict())
    assert a.losses != TBPTT(plain, torch.optim.SGD(plain.parameters(), lr=0.1), nn.functional.mse_loss, 9).run(x, y).losses


def test_callback_and_progress_bar():
    model = RNNWithHead(tbptt_ext.RNN(3, 6, dtype=torch.float64))
    updates = []
    x, y = data(T=40)
    TBPTT(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, 10,
          callback=updates.append).run(x, y)
    assert [u.update for u in updates] == [0, 1, 2, 3]
    assert [u.steps for u in updates] == [10, 20, 30, 40]
    assert all(u.steps_per_second > 0 and u.loss > 0 for u in updates)
    pytest.importorskip("tqdm")
    result = TBPTT(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, 10,
                   progress=True).run(x, y)
    assert len(result.losses) == 4


def test_detach_state_nested():
    Pair = collections.namedtuple("Pair", "h c")
    w = torch.randn(3, requires_grad=True)
    big = torch.randn(10, 3) * w  # a state that is a view of a larger buffer: big[-1]
    state = {"lstm": Pair(w * 2, w * 3), "list": [w + 1, None, (w - 1,)], "view": big[-1], "none": None}
    out = detach_state(state)
    assert isinstance(out, dict) and isinstance(out["lstm"], Pair) and isinstance(out["list"], list)
    assert out["list"][1] is None and isinstance(out["list"][2], tuple) and out["none"] is None
    for t in [out["lstm"].h, out["lstm"].c, out["list"][0], out["list"][2][0], out["view"]]:
        assert not t.requires_grad and t.grad_fn is None
    torch.testing.assert_close(out["lstm"].c, (w * 3).detach())
    # the view was copied: it does not pin the 10x3 buffer
    assert out["view"].untyped_storage().nbytes() == 3 * 4
    torch.testing.assert_close(out["view"], big[-1].detach())
    assert detach_state(None) is None
    with pytest.raises(TypeError, match="expected a tensor, tuple, list, dict or None"):
        detach_state(object())


def test_detach_state_keeps_dict_subclasses():
    # a defaultdict's constructor takes its factory first: rebuilding it from pairs raised
    w = torch.randn(3, requires_grad=True)
    state = collections.defaultdict(list, h=w * 2)
    out = detach_state(state)
    assert type(out) is collections.defaultdict and out.default_factory is list
    assert not out["h"].requires_grad and torch.equal(out["h"], (w * 2).detach())
    assert state["h"].requires_grad  # the input is left as it was
    ordered = detach_state(collections.OrderedDict([("b", w + 1), ("a", w - 1)]))
    assert type(ordered) is collections.OrderedDict and list(ordered) == ["b", "a"]


def saved_bytes_after_updates(T):
    """Bytes of tensors that autograd saved for backward and that are still alive
    after updates of a TBPTT run over T steps (parameters and views of the inputs
    excluded: those live as long as the caller keeps them)."""
    live = {}
    owned_elsewhere = set()

    def pack(t):
        key = id(t)
        if t.untyped_storage().data_ptr() not in owned_elsewhere:
            live[key] = t.numel() * t.element_size()
            weakref.finalize(t, live.pop, key, None)
        return t

    retained = []

    def after_update(update):
        if update.update % 100 == 99:
            gc.collect()
            retained.append(sum(live.values()))

    torch.manual_seed(0)
    model = RNNWithHead(tbptt_ext.LSTM(3, 16, num_layers=2))
    x = torch.randn(T, 8, 3)
    y = torch.randn(T, 8, 2)
    owned_elsewhere.update(t.untyped_storage().data_ptr() for t in [x, y, *model.parameters()])
    trainer = TBPTT(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.functional.mse_loss, 20, 40,
                    callback=after_update)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = trainer.run(x, y)
    return retained, result


def test_memory_is_flat_in_sequence_length():
    short, _ = saved_bytes_after_updates(4_000)
    long, result = saved_bytes_after_updates(20_000)
    assert len(result.losses) == 1000 and len(long) == 10
    # nothing saved for backward outlives its window, however long the run
    assert max(long) == max(short) == 0
    # the carried state owns its memory (no view pinning a larger buffer)
    for s in result.state:
        assert s.untyped_storage().nbytes() == s.numel() * s.element_size()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(k1=0), "k1 must be an integer >= 1"),
        (dict(k1=2.5), "k1 must be an integer >= 1"),
        (dict(k1=4, k2=6), "k2 must be a multiple of k1 = 4"),
        (dict(k1=4, k2=2), "k2 must be a multiple of k1 = 4"),
        (dict(k1=True), "k1 must be an integer >= 1"),
        (dict(k1=4, k2=8.0), "k2 must be a multiple of k1 = 4"),
        (dict(k1=4, max_grad_norm=0), "max_grad_norm must be a positive number"),
        (dict(k1=4, max_grad_norm=True), "max_grad_norm must be a positive number"),
        (dict(k1=4, max_grad_norm="1"), "max_grad_norm must be a positive number"),
    ],
)
def test_bad_arguments(kwargs, match):
    model = RNNWithHead(tbptt_ext.RNN(3, 6))
    with pytest.raises(ValueError, match=match):
        TBPTT(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, **kwargs)


def test_not_an_optimizer_or_not_callables():
    model = RNNWithHead(tbptt_ext.RNN(3, 6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer .*got str"):
        TBPTT(model, "sgd", nn.functional.mse_loss, 4)
    with pytest.raises(ValueError, match="model and loss_fn must be callables, got RNNWithHead and str"):
        TBPTT(model, optimizer, "mse", 4)


def test_numpy_integers_and_tensor_norm_accepted():
    np = pytest.importorskip("numpy")
    model = RNNWithHead(tbptt_ext.RNN(3, 6))
    trainer = TBPTT(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, np.int64(2),
                    k2=np.int32(4), max_grad_norm=torch.tensor(0.5))
    assert (trainer.k1, trainer.k2, trainer.max_grad_norm) == (2, 4, 0.5)
    assert type(trainer.k1) is int and type(trainer.max_grad_norm) is float


def test_bad_inputs():
    model = RNNWithHead(tbptt_ext.RNN(3, 6))
    trainer = TBPTT(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, 5)
    with pytest.raises(ValueError, match="same length along time \\(dim 0\\), got 10 and 9"):
        trainer.run(torch.randn(10, 2, 3), torch.randn(9, 2, 2))
    with pytest.raises(ValueError, match="targets is required"):
        trainer.run(torch.randn(10, 2, 3))
    bf = TBPTT(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, 5, batch_first=True)
    with pytest.raises(ValueError, match="inputs must have a time dimension at dim 1"):
        bf.run(torch.randn(10), torch.randn(10))
    with pytest.raises(ValueError, match="expected an \\(x_chunk, y_chunk\\) pair"):
        trainer.run([torch.randn(5, 2, 3)])
    bad_loss = TBPTT(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda o, y: (o - y).abs(), 5)
    with pytest.raises(ValueError, match="loss_fn must return a scalar tensor"):
        bad_loss.run(torch.randn(10, 2, 3), torch.randn(10, 2, 2))


class ResettableRNNWithHead(RNNWithHead):
    def forward(self, x, state=None, reset=None):
        out, state = self.rnn(x, state, reset=reset)
        return self.head(out), state


def masked_loop(model, x, y, resets, k, lr=0.1):
    """What people write without reset support: the RNN a step at a time, the state
    multiplied by (1 - reset) before each step, TBPTT(k) around it. The truth here."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    state, losses = None, []
    for start in range(0, x.shape[0], k):
        outputs = []
        for t in range(start, min(start + k, x.shape[0])):
            keep = (~resets[t]).to(x.dtype).view(1, -1, 1)
            if state is None:
                state = torch.zeros(1, x.shape[1], model.rnn.hidden_size, dtype=x.dtype)
            state = state * keep
            out, state = model.rnn(x[t : t + 1], state)
            outputs.append(out)
        state = state.detach()
        loss = nn.functional.mse_loss(model.head(torch.cat(outputs)), y[start : start + k])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, state


@pytest.mark.parametrize("name", ["RNN", "GRU"])
def test_run_with_resets_matches_masked_step_loop(name):
    torch.manual_seed(0)
    ours = ResettableRNNWithHead(getattr(tbptt_ext, name)(3, 6, dtype=torch.float64))
    theirs = RNNWithHead(getattr(nn, name)(3, 6, dtype=torch.float64))
    theirs.load_state_dict(ours.state_dict())
    x, y = data(T=40)
    resets = torch.rand(40, 4, generator=torch.Generator().manual_seed(2)) < 0.1
    result = TBPTT(ours, torch.optim.SGD(ours.parameters(), lr=0.1), nn.functional.mse_loss, k1=8).run(
        x, y, resets=resets
    )
    losses, state = masked_loop(theirs, x, y, resets, 8)
    torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(losses), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(result.state, state, rtol=1e-10, atol=1e-10)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_run_with_resets_as_triples_and_k2():
    torch.manual_seed(0)
    model = ResettableRNNWithHead(tbptt_ext.LSTM(3, 6, dtype=torch.float64))
    twin = ResettableRNNWithHead(tbptt_ext.LSTM(3, 6, dtype=torch.float64))
    twin.load_state_dict(model.state_dict())
    x, y = data(T=30)
    resets = torch.rand(30, 4, generator=torch.Generator().manual_seed(3)) < 0.2
    a = TBPTT(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, k1=5, k2=10)
    b = TBPTT(twin, torch.optim.SGD(twin.parameters(), lr=0.1), nn.functional.mse_loss, k1=5, k2=10)
    r1 = a.run(x, y, resets=resets)
    r2 = b.run(list(zip(x.split(5), y.split(5), resets.split(5))))
    assert r1.losses == r2.losses
    with pytest.raises(ValueError, match="inputs and resets must have the same length"):
        a.run(x, y, resets=resets[:10])
    with pytest.raises(ValueError, match=r"yield \(x, y, reset\) triples"):
        a.run(list(zip(x.split(5), y.split(5))), resets=resets)


class ProjectedLSTMWithHead(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.rnn = module.LSTM(3, 6, proj_size=4, num_layers=2, dtype=torch.float64)
        self.head = nn.Linear(4, 2, dtype=torch.float64)

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return self.head(out), state


@requires_fused_cpu
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("k1,k2", [(10, 10), (5, 15)])
def test_projected_lstm_trains_like_torch_nn(k1, k2):
    torch.manual_seed(0)
    ours = ProjectedLSTMWithHead(tbptt_ext)
    theirs = ProjectedLSTMWithHead(nn)
    theirs.load_state_dict(ours.state_dict())
    x, y = data()
    runs = [TBPTT(m, torch.optim.Adam(m.parameters(), lr=1e-2), nn.functional.mse_loss, k1=k1, k2=k2,
                  max_grad_norm=1.0).run(x, y) for m in (ours, theirs)]
    torch.testing.assert_close(torch.tensor(runs[0].losses), torch.tensor(runs[1].losses), rtol=1e-9, atol=1e-10)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
