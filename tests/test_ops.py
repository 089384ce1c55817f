"""The fused chunk ops against tbptt_ext.reference, gradcheck, opcheck and torch.compile."""

import pytest
import torch

import tbptt_ext
from tbptt_ext import reference
from tbptt_ext.functions import GRUChunk, LSTMChunk, RNNChunk
from conftest import assert_close, requires_fused_cpu

pytestmark = requires_fused_cpu
OPS = torch.ops.tbptt_ext
# (T, B, H): odd sizes, one step, one row, a hidden size off every vector width,
# and a batch above the small-batch kernel's limit (BLAS path).
SHAPES = [(1, 1, 1), (5, 3, 7), (9, 4, 33), (6, 13, 40), (4, 2, 64)]


def chunk_inputs(cell, T, B, H, dtype, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    blocks = {"rnn": 1, "lstm": 4, "gru": 3}[cell]

    def rand(*shape, scale=1.0):
        t = (torch.randn(*shape, dtype=dtype, generator=g) * scale).requires_grad_(requires_grad)
        return t

    xproj = rand(T, B, blocks * H)
    w_hh = rand(blocks * H, H, scale=H**-0.5)
    h0 = rand(B, H)
    if cell == "rnn":
        return (xproj, w_hh, h0)
    if cell == "lstm":
        return (xproj, w_hh, h0, rand(B, H))
    return (xproj, w_hh, rand(3 * H), h0)


def backward_args(cell, fwd_in, fwd_out, seed):
    g = torch.Generator().manual_seed(seed + 1)

    def like(t):
        return torch.randn(t.shape, dtype=t.dtype, generator=g)

    if cell == "rnn":
        xproj, w_hh, h0 = fwd_in
        output, h_n = fwd_out
        return (like(output), like(h_n), output, w_hh, h0)
    if cell == "lstm":
        xproj, w_hh, h0, c0 = fwd_in
        output, h_n, c_n, gates, cell_seq = fwd_out
        return (like(output), like(h_n), like(c_n), output, gates, cell_seq, w_hh, h0, c0)
    xproj, w_hh, b_hh, h0 = fwd_in
    output, h_n, gates = fwd_out
    return (like(output), like(h_n), output, gates, w_hh, h0)


def extra(cell, relu):
    return (relu,) if cell == "rnn" else ()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,B,H", SHAPES)
@pytest.mark.parametrize("cell,relu", [("rnn", False), ("rnn", True), ("lstm", False), ("gru", False)])
def test_fused_ops_match_reference(cell, relu, T, B, H, dtype):
    seed = T * 1000 + B * 100 + H
    fwd_in = chunk_inputs(cell, T, B, H, dtype, seed)
    fused_out = getattr(OPS, f"{cell}_chunk_forward")(*fwd_in, *extra(cell, relu))
    ref_out = getattr(reference, f"{cell}_chunk_forward")(*fwd_in, *extra(cell, relu))
    for a, b in zip(fused_out, ref_out):
        assert_close(a, b, dtype, f"{cell} forward")
    bwd_in = backward_args(cell, fwd_in, ref_out, seed)
    fused_grads = getattr(OPS, f"{cell}_chunk_backward")(*bwd_in, *extra(cell, relu))
    ref_grads = getattr(reference, f"{cell}_chunk_backward")(*bwd_in, *extra(cell, relu))
    for a, b in zip(fused_grads, ref_grads):
        assert_close(a, b, dtype, f"{cell} backward")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_zero_steps_and_zero_batch(cell):
    for T, B in [(0, 3), (4, 0)]:
        fwd_in = chunk_inputs(cell, T, B, 5, torch.float64, 0)
        fused_out = getattr(OPS, f"{cell}_chunk_forward")(*fwd_in, *extra(cell, False))
        ref_out = getattr(reference, f"{cell}_chunk_forward")(*fwd_in, *extra(cell, False))
        for a, b in zip(fused_out, ref_out):
            assert a.shape == b.shape
            assert_close(a, b, torch.float64, "forward")
        bwd_in = backward_args(cell, fwd_in, ref_out, 0)
        fused_grads = getattr(OPS, f"{cell}_chunk_backward")(*bwd_in, *extra(cell, False))
        ref_grads = getattr(reference, f"{cell}_chunk_backward")(*bwd_in, *extra(cell, False))
        for a, b in zip(fused_grads, ref_grads):
            assert a.shape == b.shape
            assert_close(a, b, torch.float64, "backward")


def apply_function(cell, fused, relu=False):
    if cell == "rnn":
        return lambda xproj, w_hh, h0: RNNChunk.apply(xproj, w_hh, h0, relu, fused)
    if cell == "lstm":
        return lambda xproj, w_hh, h0, c0: LSTMChunk.apply(xproj, w_hh, h0, c0, fused)
    return lambda xproj, w_hh, b_hh, h0: GRUChunk.apply(xproj, w_hh, b_hh, h0, fused)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("cell,relu", [("rnn", False), ("rnn", True), ("lstm", False), ("gru", False)])
def test_gradcheck(cell, relu, fused):
    inputs = chunk_inputs(cell, 4, 3, 5, torch.float64, 7, requires_grad=True)
    assert torch.autograd.gradcheck(apply_function(cell, fused, relu), inputs, atol=1e-7, rtol=1e-6)


def test_gru_without_bias_gradcheck():
    xproj, w_hh, _, h0 = chunk_inputs("gru", 4, 3, 5, torch.float64, 3, requires_grad=True)
    fn = lambda x, w, h: GRUChunk.apply(x, w, None, h, True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (xproj, w_hh, h0))


@pytest.mark.parametrize("cell,relu", [("rnn", False), ("rnn", True), ("lstm", False), ("gru", False)])
def test_opcheck(cell, relu):
    fwd_in = chunk_inputs(cell, 5, 3, 6, torch.float32, 11)
    fwd_op = getattr(OPS, f"{cell}_chunk_forward").default
    torch.library.opcheck(fwd_op, (*fwd_in, *extra(cell, relu)))
    fwd_out = fwd_op(*fwd_in, *extra(cell, relu))
    bwd_op = getattr(OPS, f"{cell}_chunk_backward").default
    torch.library.opcheck(bwd_op, (*backward_args(cell, fwd_in, fwd_out, 11), *extra(cell, relu)))
    if cell == "gru":
        xproj, w_hh, _, h0 = fwd_in
        torch.library.opcheck(fwd_op, (xproj, w_hh, None, h0))


def test_compiled_backends():
    backends = tbptt_ext.compiled_backends()
    assert isinstance(backends, set)
    assert "cpu" in backends
    assert backends <= {"cpu", "cuda"}


def test_op_argument_errors_are_clear():
    xproj, w_hh, h0 = chunk_inputs("rnn", 3, 2, 4, torch.float32, 0)
    with pytest.raises(RuntimeError, match="w_hh must be"):
        OPS.rnn_chunk_forward(xproj, w_hh[:, :3], h0, False)
    with pytest.raises(RuntimeError, match="batch size"):
        OPS.rnn_chunk_forward(xproj, w_hh, h0[:1], False)
    with pytest.raises(RuntimeError, match="dtype"):
        OPS.rnn_chunk_forward(xproj, w_hh.double(), h0, False)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        OPS.rnn_chunk_forward(xproj.half(), w_hh.half(), h0.half(), False)
    with pytest.raises(RuntimeError, match="xproj must be"):
        OPS.lstm_chunk_forward(xproj[0], w_hh, h0, h0)


@pytest.mark.parametrize("cell,relu", [("rnn", False), ("lstm", False), ("gru", False)])
def test_bitwise_identical_across_runs_and_thread_counts(cell, relu):
    fwd_in = chunk_inputs(cell, 12, 9, 70, torch.float32, 5)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (threads, 1, threads):
            torch.set_num_threads(n)
            out = getattr(OPS, f"{cell}_chunk_forward")(*fwd_in, *extra(cell, relu))
            grads = getattr(OPS, f"{cell}_chunk_backward")(*backward_args(cell, fwd_in, out, 5), *extra(cell, relu))
            results.append([*out, *grads])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
