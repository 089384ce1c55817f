"""tbptt_ext modules against torch.nn: outputs, final states and every gradient."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import tbptt_ext
from conftest import assert_close, requires_fused_cpu

CELLS = ["RNN_TANH", "RNN_RELU", "LSTM", "LSTM_PROJ", "GRU"]
# torch.nn.LSTM(proj_size > 0) on the CPU warns that oneDNN has no projections
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


def make_pair(cell, input_size, hidden_size, backend, **kwargs):
    if cell.startswith("RNN"):
        kwargs["nonlinearity"] = "tanh" if cell == "RNN_TANH" else "relu"
        name = "RNN"
    elif cell == "LSTM_PROJ":  # LSTM with projections (proj_size < hidden_size)
        kwargs["proj_size"] = hidden_size // 2
        name = "LSTM"
    else:
        name = cell
    ours = getattr(tbptt_ext, name)(input_size, hidden_size, backend=backend, **kwargs)
    theirs = getattr(torch.nn, name)(input_size, hidden_size, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def random_state(cell, shape, dtype, generator):
    if cell == "LSTM_PROJ":  # h is proj_size wide, c hidden_size wide
        h = torch.randn((*shape[:-1], shape[-1] // 2), dtype=dtype, generator=generator)
        return (h, torch.randn(shape, dtype=dtype, generator=generator))
    h = torch.randn(shape, dtype=dtype, generator=generator)
    if cell == "LSTM":
        return (h, torch.randn(shape, dtype=dtype, generator=generator))
    return h


def flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def run_and_grad(module, x, hx, seed):
    """Forward, a random linear functional of output and final state, backward."""
    out, state = module(x, hx)
    out_data = out.data if isinstance(out, PackedSequence) else out
    g = torch.Generator().manual_seed(seed)
    loss = (out_data * torch.randn(out_data.shape, dtype=out_data.dtype, generator=g)).sum()
    for s in flat(state):
        loss = loss + (s * torch.randn(s.shape, dtype=s.dtype, generator=g)).sum()
    inputs = [x.data if isinstance(x, PackedSequence) else x] + flat(hx) + list(module.parameters())
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return out_data, flat(state), grads


CASES = list(
    itertools.product(
        CELLS,
        [1, 2, 3],  # layers
        [False, True],  # bidirectional
        [False, True],  # batch_first
        [True, False],  # bias
        [torch.float64, torch.float32],
        ["padded", "packed", "unbatched"],
    )
)


@requires_fused_cpu
@pytest.mark.parametrize("cell,layers,bidirectional,batch_first,bias,dtype,kind", CASES)
def test_fused_matches_torch_nn(cell, layers, bidirectional, batch_first, bias, dtype, kind):
    check_against_torch_nn(cell, layers, bidirectional, batch_first, bias, dtype, kind, "fused")


@pytest.mark.parametrize(
    "cell,layers,bidirectional,batch_first,bias,dtype,kind",
    [c for c in CASES if c[1] == 2 and c[4] and c[5] == torch.float64],
)
def test_reference_backend_matches_torch_nn(cell, layers, bidirectional, batch_first, bias, dtype, kind):
    check_against_torch_nn(cell, layers, bidirectional, batch_first, bias, dtype, kind, "reference")


def check_against_torch_nn(cell, layers, bidirectional, batch_first, bias, dtype, kind, backend):
    seed = hash((cell, layers, bidirectional, batch_first, bias, str(dtype), kind)) % 2**31
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    input_size, hidden, steps, batch = 4, 6, 7, 5
    ours, theirs = make_pair(
        cell, input_size, hidden, backend, num_layers=layers, bidirectional=bidirectional,
        batch_first=batch_first, bias=bias, dtype=dtype,
    )
    directions = 2 if bidirectional else 1
    if kind == "unbatched":
        x = torch.randn(steps, input_size, dtype=dtype, generator=g)
        hx = random_state(cell, (layers * directions, hidden), dtype, g)
    else:
        shape = (batch, steps, input_size) if batch_first else (steps, batch, input_size)
        x = torch.randn(shape, dtype=dtype, generator=g)
        hx = random_state(cell, (layers * directions, batch, hidden), dtype, g)
        if kind == "packed":
            lengths = torch.tensor([5, 7, 2, 7, 1])  # unsorted, with ties
            x = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    if isinstance(x, PackedSequence):
        x.data.requires_grad_(True)
    else:
        x.requires_grad_(True)
    for h in flat(hx):
        h.requires_grad_(True)
    out_a, state_a, grads_a = run_and_grad(ours, x, hx, seed)
    out_b, state_b, grads_b = run_and_grad(theirs, x, hx, seed)
    assert_close(out_a, out_b, dtype, "output")
    for a, b in zip(state_a, state_b):
        assert_close(a, b, dtype, "final state")
    names = ["input"] + [f"hx[{i}]" for i in range(len(flat(hx)))] + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, grads_a, grads_b):
        assert_close(a, b, dtype, f"grad of {name}")


@requires_fused_cpu
@pytest.mark.parametrize("cell", CELLS)
def test_dropout_between_layers_matches_torch_nn(cell):
    torch.manual_seed(0)
    ours, theirs = make_pair(cell, 3, 5, "fused", num_layers=3, dropout=0.5, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    for packed in (False, True):
        inp = pack_padded_sequence(x, [6, 4]) if packed else x
        torch.manual_seed(1)
        out_a, _ = ours(inp)
        torch.manual_seed(1)
        out_b, _ = theirs(inp)
        a, b = (out_a.data, out_b.data) if packed else (out_a, out_b)
        assert_close(a, b, torch.float64, "output with dropout")
    ours.eval()
    assert torch.equal(ours(x)[0], ours(x)[0])  # no dropout in eval mode
    ours.train()
    torch.manual_seed(2)
    first = ours(x)[0]
    torch.manual_seed(3)
    assert not torch.allclose(first, ours(x)[0])  # dropout active in training
