"""Reset masks: tbptt_ext modules with `reset` against per-segment torch.nn runs.

The truth: each sample's sequence is cut into segments at its resets and every segment
runs through a torch.nn module on its own, from a zero state, except that the initial
state enters the segment where each direction starts (forward: the first segment,
unless reset[0]; reverse: the last). Outputs, final states and the gradients of the
input, the initial state and every parameter must agree (float64, 1e-10).
"""

import itertools

import pytest
import torch

import tbptt_ext
from conftest import assert_close, requires_fused_cpu

CELLS = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]
T, B, I, H = 9, 4, 3, 5


def reset_mask(kind, generator):
    reset = torch.zeros(T, B, dtype=torch.bool)
    if kind == "random":
        reset = torch.rand(T, B, generator=generator) < 0.3
    elif kind == "first":
        reset[0] = True
    elif kind == "last":
        reset[-1] = True
    elif kind == "adjacent":
        reset[3:5, 1] = True
        reset[6:9, 2] = True
        reset[1:3, 0] = True
    elif kind == "all":
        reset[:] = True
    return reset


def make_modules(cell, layers, bidirectional, backend, batch_first=False):
    kwargs = dict(num_layers=layers, bidirectional=bidirectional, dtype=torch.float64)
    if cell.startswith("RNN"):
        kwargs["nonlinearity"] = "tanh" if cell == "RNN_TANH" else "relu"
    name = "RNN" if cell.startswith("RNN") else cell
    ours = getattr(tbptt_ext, name)(I, H, backend=backend, batch_first=batch_first, **kwargs)
    theirs = getattr(torch.nn, name)(I, H, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def per_segment_truth(module, x, hx, reset, directions):
    """torch.nn run on every segment of every sample; returns (output [T, B, D*H],
    final states as module returns them)."""
    lstm = isinstance(hx, tuple)
    states = flat(hx)
    outputs, finals = [], [[None] * B for _ in states]
    for b in range(B):
        starts = [0] + [t for t in range(1, T) if reset[t, b]]
        bounds = list(zip(starts, starts[1:] + [T]))
        pieces = []
        for k, (s, e) in enumerate(bounds):
            init = []
            for st in states:
                rows = []
                for index in range(st.shape[0]):
                    direction = index % directions
                    keep = (k == 0 and not reset[0, b]) if direction == 0 else k == len(bounds) - 1
                    rows.append(st[index, b] if keep else torch.zeros_like(st[index, b]))
                init.append(torch.stack(rows).unsqueeze(1))
            out, final = module(x[s:e, b : b + 1], tuple(init) if lstm else init[0])
            pieces.append(out[:, 0])
            for i, f in enumerate(flat(final)):
                for index in range(f.shape[0]):
                    direction = index % directions
                    # forward directions end in the last segment, reverse ones in the first
                    if (direction == 0 and k == len(bounds) - 1) or (direction == 1 and k == 0):
                        if finals[i][b] is None:
                            finals[i][b] = [None] * f.shape[0]
                        finals[i][b][index] = f[index, 0]
        outputs.append(torch.cat(pieces, 0))
    output = torch.stack(outputs, 1)
    final = [torch.stack([torch.stack(finals[i][b]) for b in range(B)], 1) for i in range(len(states))]
    return output, (tuple(final) if lstm else final[0])


def loss_of(output, state, seed):
    g = torch.Generator().manual_seed(seed)
    loss = (output * torch.randn(output.shape, dtype=output.dtype, generator=g)).sum()
    for s in flat(state):
        loss = loss + (s * torch.randn(s.shape, dtype=s.dtype, generator=g)).sum()
    return loss


CASES = list(itertools.product(CELLS, [1, 2], [False, True], [False, True],
                               ["random", "first", "last", "adjacent", "none", "all"]))


@requires_fused_cpu
@pytest.mark.parametrize("cell,layers,bidirectional,batch_first,kind", CASES)
def test_reset_matches_per_segment_torch_nn(cell, layers, bidirectional, batch_first, kind):
    check(cell, layers, bidirectional, batch_first, kind, "fused")


@pytest.mark.parametrize("cell,layers,bidirectional,batch_first,kind",
                         [c for c in CASES if c[1] == 2 and c[4] in ("random", "adjacent")])
def test_reference_backend_reset(cell, layers, bidirectional, batch_first, kind):
    check(cell, layers, bidirectional, batch_first, kind, "reference")


def check(cell, layers, bidirectional, batch_first, kind, backend):
    seed = hash((cell, layers, bidirectional, batch_first, kind)) % 2**31
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ours, theirs = make_modules(cell, layers, bidirectional, backend, batch_first)
    directions = 2 if bidirectional else 1
    x = torch.randn(T, B, I, dtype=torch.float64, generator=g, requires_grad=True)
    h = torch.randn(layers * directions, B, H, dtype=torch.float64, generator=g, requires_grad=True)
    hx = (h, torch.randn(h.shape, dtype=torch.float64, generator=g, requires_grad=True)) if cell == "LSTM" else h
    reset = reset_mask(kind, g)

    if batch_first:
        out_a, state_a = ours(x.transpose(0, 1), hx, reset=reset.t())
        out_a = out_a.transpose(0, 1)
    else:
        out_a, state_a = ours(x, hx, reset=reset)
    out_b, state_b = per_segment_truth(theirs, x, hx, reset, directions)
    assert_close(out_a, out_b, torch.float64, "output")
    for a, b in zip(flat(state_a), flat(state_b)):
        assert_close(a, b, torch.float64, "final state")
    inputs = [x, *flat(hx)]
    grads_a = torch.autograd.grad(loss_of(out_a, state_a, seed), inputs + list(ours.parameters()), allow_unused=True)
    grads_b = torch.autograd.grad(loss_of(out_b, state_b, seed), inputs + list(theirs.parameters()),
                                  allow_unused=True)  # (h0 is unused where every row restarts at t = 0)
    names = ["input"] + [f"hx[{i}]" for i in range(len(flat(hx)))] + [n for n, _ in ours.named_parameters()]
    for name, a, b, t in zip(names, grads_a, grads_b, inputs + list(ours.parameters())):
        zeros = torch.zeros_like(t)
        assert_close(zeros if a is None else a, zeros if b is None else b, torch.float64, f"grad of {name}")


@requires_fused_cpu
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_unbatched_and_integer_reset(name):
    torch.manual_seed(0)
    m = getattr(tbptt_ext, name)(I, H, dtype=torch.float64)
    x = torch.randn(T, I, dtype=torch.float64)
    reset = torch.zeros(T, dtype=torch.long)
    reset[4] = 1
    out, _ = m(x, reset=reset)
    # the steps from the reset on equal a fresh run over them
    fresh, _ = m(x[4:])
    assert_close(out[4:], fresh, torch.float64, "after the reset")
    assert_close(out, m(x.unsqueeze(1), reset=reset.bool().unsqueeze(1))[0][:, 0], torch.float64, "batched")


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_reset_errors_are_clear(name):
    m = getattr(tbptt_ext, name)(I, H)
    x = torch.randn(T, B, I)
    with pytest.raises(ValueError, match=r"reset must have shape \[T, B\] = \[9, 4\], got \[4, 9\]"):
        m(x, reset=torch.zeros(B, T, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[B, T\] \(batch_first=True\)"):
        getattr(tbptt_ext, name)(I, H, batch_first=True)(x.transpose(0, 1), reset=torch.zeros(T, B, dtype=torch.bool))
    with pytest.raises(TypeError, match="reset must be a bool"):
        m(x, reset=torch.zeros(T, B))
    with pytest.raises(TypeError, match="reset must be a bool tensor"):
        m(x, reset=[[0] * B] * T)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [9, 7, 3, 2])
    with pytest.raises(ValueError, match="not supported with PackedSequence"):
        m(packed, reset=torch.zeros(T, B, dtype=torch.bool))
