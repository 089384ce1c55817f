"""The fused chunk ops against tbptt_ext.reference, gradcheck, opcheck, determinism."""

import os
import subprocess
import sys

import pytest
import torch

import tbptt_ext
from tbptt_ext import ops, reference
from tbptt_ext.functions import GRUChunk, LSTMChunk, RNNChunk
from conftest import assert_close, requires_fused_cpu

pytestmark = requires_fused_cpu
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
CELLS = [("rnn", False), ("rnn", True), ("lstm", False), ("gru", False)]
# (T, B, I, H): one step, one row, hidden sizes off every vector and panel width, a
# batch off the tile height, an input wider than the hidden state.
SHAPES = [(1, 1, 1, 1), (5, 3, 4, 7), (9, 4, 5, 33), (6, 13, 3, 40), (4, 2, 70, 64), (3, 7, 8, 17)]


def random_reset(T, B, generator, kind="random"):
    if kind == "none":
        return None
    if kind == "random":
        return torch.rand(T, B, generator=generator) < 0.3
    reset = torch.zeros(T, B, dtype=torch.bool)
    if kind == "first":
        reset[0] = True
    elif kind == "last":
        reset[-1] = True
    elif kind == "all":
        reset[:] = True
    return reset


def forward_args(cell, T, B, I, H, dtype, seed, bias=True, reset_kind="none", requires_grad=False):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=dtype, generator=g) * scale).requires_grad_(requires_grad)

    G = GATES[cell]
    args = [rand(T, B, I), rand(G * H, I, scale=I**-0.5), rand(G * H, H, scale=H**-0.5)]
    args += [rand(G * H), rand(G * H)] if bias else [None, None]
    args.append(rand(B, H))
    if cell == "lstm":
        args.append(rand(B, H))
    args.append(random_reset(T, B, g, reset_kind))
    return args


def run_forward(impl, cell, relu, args, reverse):
    fn = getattr(impl, f"{cell}_chunk_forward")
    return fn(*args, reverse, relu) if cell == "rnn" else fn(*args, reverse)


def backward_args(cell, args, out, seed):
    """Random output gradients and the saved tensors, in the backward op's order."""
    g = torch.Generator().manual_seed(seed + 1)

    def like(t):
        return torch.randn(t.shape, dtype=t.dtype, generator=g)

    input, w_ih, w_hh, b_ih, b_hh, h0, *rest = args
    reset = rest[-1]
    if cell == "rnn":
        output, h_n = out
        return [like(output), like(h_n), input, output, w_ih, w_hh, h0, reset]
    if cell == "lstm":
        output, h_n, c_n, saved = out
        return [like(output), like(h_n), like(c_n), input, output, saved, w_ih, w_hh, h0, rest[0], reset]
    output, h_n, saved = out
    return [like(output), like(h_n), input, output, saved, w_ih, w_hh, h0, reset]


def run_backward(impl, cell, relu, bargs, reverse, input_needs_grad=True, record_flow=True):
    fn = getattr(impl, f"{cell}_chunk_backward")
    flags = (reverse, relu) if cell == "rnn" else (reverse,)
    return fn(*bargs, *flags, input_needs_grad, record_flow)


def check_against_reference(cell, relu, T, B, I, H, dtype, reverse, reset_kind, bias=True, seed=0):
    args = forward_args(cell, T, B, I, H, dtype, seed, bias=bias, reset_kind=reset_kind)
    fused = run_forward(ops, cell, relu, args, reverse)
    ref = run_forward(reference, cell, relu, args, reverse)
    for a, b in zip(fused, ref):
        assert a.shape == b.shape
        assert_close(a, b, dtype, f"{cell} forward")
    bargs = backward_args(cell, args, ref, seed)
    for needs_input in (True, False):
        fused_grads = run_backward(ops, cell, relu, bargs, reverse, needs_input)
        ref_grads = run_backward(reference, cell, relu, bargs, reverse, needs_input)
        for i, (a, b) in enumerate(zip(fused_grads, ref_grads)):
            assert a.shape == b.shape, (i, a.shape, b.shape)
            assert_close(a, b, dtype, f"{cell} backward output {i}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("cell,relu", CELLS)
def test_fused_ops_match_reference(cell, relu, T, B, I, H, dtype):
    for reverse in (False, True):
        check_against_reference(cell, relu, T, B, I, H, dtype, reverse, "none", seed=T * 1000 + B * 100 + H)


@pytest.mark.parametrize("reset_kind", ["random", "first", "last", "all"])
@pytest.mark.parametrize("cell,relu", CELLS)
def test_fused_ops_with_reset_match_reference(cell, relu, reset_kind):
    for reverse in (False, True):
        # B = 33 and 32: a batch wider than the product's tiles many times over, the input
        # side in the loop (2 I <= H) and as one GEMM (I = 30)
        for T, B, I, H in [(7, 5, 3, 9), (12, 9, 6, 40), (6, 33, 5, 20), (5, 32, 30, 20)]:
            check_against_reference(cell, relu, T, B, I, H, torch.float64, reverse, reset_kind, seed=T + B)


# T * B rows over several of the CPU weight-gradient kernel's K blocks (256 rows each)
# and a part block; G * H, I and H off its tile height (6 or 12) and panel widths.
LONG_SHAPE = (37, 19, 21, 35)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cell,relu", CELLS)
def test_weight_gradients_over_several_blocks_of_rows(cell, relu, dtype):
    for reverse, reset_kind in [(False, "none"), (True, "none"), (False, "random"), (True, "random")]:
        check_against_reference(cell, relu, *LONG_SHAPE, dtype, reverse, reset_kind, seed=41)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_weight_gradients_over_several_spans_of_packed_rows(cell, dtype):
    # T * B = 2800 rows of [h_prev | x] 512 (LSTM) or 384 (GRU) wide: more than the 4 MB
    # of packed rows the CPU kernel takes at a time
    check_against_reference(cell, False, 70, 40, 384, 128, dtype, True, "random", seed=43)


@pytest.mark.parametrize("cell,relu", CELLS)
def test_without_bias(cell, relu):
    check_against_reference(cell, relu, 6, 3, 4, 10, torch.float64, False, "random", bias=False)


@pytest.mark.parametrize("cell,relu", CELLS)
def test_zero_steps_and_zero_batch(cell, relu):
    for T, B in [(0, 3), (4, 0)]:
        args = forward_args(cell, T, B, 3, 5, torch.float64, 0)
        fused = run_forward(ops, cell, relu, args, False)
        ref = run_forward(reference, cell, relu, args, False)
        for a, b in zip(fused, ref):
            assert a.shape == b.shape
            assert_close(a, b, torch.float64, "forward")
        bargs = backward_args(cell, args, ref, 0)
        for a, b in zip(run_backward(ops, cell, relu, bargs, False), run_backward(reference, cell, relu, bargs, False)):
            assert a.shape == b.shape
            assert_close(a, b, torch.float64, "backward")


def apply_function(cell, fused, relu=False, reverse=False, reset=None):
    if cell == "rnn":
        return lambda *a: RNNChunk.apply(*a, reset, reverse, relu, fused)
    if cell == "lstm":
        return lambda *a: LSTMChunk.apply(*a, reset, reverse, fused)
    return lambda *a: GRUChunk.apply(*a, reset, reverse, fused)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("cell,relu", CELLS)
def test_gradcheck(cell, relu, fused):
    for reverse, reset_kind in [(False, "none"), (True, "random"), (False, "random")]:
        *inputs, reset = forward_args(cell, 4, 3, 2, 5, torch.float64, 7, reset_kind=reset_kind, requires_grad=True)
        fn = apply_function(cell, fused, relu, reverse, reset)
        assert torch.autograd.gradcheck(fn, inputs, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("cell,relu", CELLS)
def test_gradcheck_without_bias(cell, relu):
    *inputs, reset = forward_args(cell, 4, 3, 2, 5, torch.float64, 3, bias=False, requires_grad=True)
    assert torch.autograd.gradcheck(apply_function(cell, True, relu), inputs)


@pytest.mark.parametrize("cell,relu", CELLS)
def test_opcheck(cell, relu):
    for reset_kind in ("none", "random"):
        args = forward_args(cell, 5, 3, 4, 6, torch.float32, 11, reset_kind=reset_kind)
        fwd = getattr(torch.ops.tbptt_ext, f"{cell}_chunk_forward").default
        flags = (True, relu) if cell == "rnn" else (True,)
        torch.library.opcheck(fwd, (*args, *flags))
        out = fwd(*args, *flags)
        bwd = getattr(torch.ops.tbptt_ext, f"{cell}_chunk_backward").default
        for needs_input, record in [(True, True), (False, False)]:
            torch.library.opcheck(bwd, (*backward_args(cell, args, out, 11), *flags, needs_input, record))


def test_compiled_backends():
    backends = tbptt_ext.compiled_backends()
    assert isinstance(backends, set)
    assert "cpu" in backends
    assert backends <= {"cpu", "cuda"}
    assert ops.cpu_isa() in {"baseline", "avx2", "avx512"}


def test_op_argument_errors_are_clear():
    x, w_ih, w_hh, b_ih, b_hh, h0, reset = forward_args("rnn", 3, 2, 3, 4, torch.float32, 0)
    fwd = torch.ops.tbptt_ext.rnn_chunk_forward
    with pytest.raises(RuntimeError, match=r"w_hh must have shape \[4, 4\]"):
        fwd(x, w_ih, w_hh[:, :3], b_ih, b_hh, h0, None, False, False)
    with pytest.raises(RuntimeError, match=r"w_ih must have shape \[4, 3\]"):
        fwd(x, w_ih[:, :2], w_hh, b_ih, b_hh, h0, None, False, False)
    with pytest.raises(RuntimeError, match=r"h0 must have shape \[2, 4\]"):
        fwd(x, w_ih, w_hh, b_ih, b_hh, h0[:1], None, False, False)
    with pytest.raises(RuntimeError, match="dtype"):
        fwd(x, w_ih, w_hh.double(), b_ih, b_hh, h0, None, False, False)
    with pytest.raises(RuntimeError, match=r"b_hh must have shape \[4\]"):
        fwd(x, w_ih, w_hh, b_ih, b_hh[:2], h0, None, False, False)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        fwd(x.half(), w_ih.half(), w_hh.half(), None, None, h0.half(), None, False, False)
    with pytest.raises(RuntimeError, match=r"input must be \[T, B, I\]"):
        fwd(x[0], w_ih, w_hh, b_ih, b_hh, h0, None, False, False)
    with pytest.raises(RuntimeError, match=r"reset must have shape \[T, B\] = \[3, 2\]"):
        fwd(x, w_ih, w_hh, b_ih, b_hh, h0, torch.zeros(2, 3, dtype=torch.bool), False, False)
    with pytest.raises(RuntimeError, match="reset must be a bool"):
        fwd(x, w_ih, w_hh, b_ih, b_hh, h0, torch.zeros(3, 2), False, False)


@pytest.mark.parametrize("cell,relu", CELLS)
@pytest.mark.parametrize("T,B,I,H", [(12, 9, 6, 70), LONG_SHAPE, (9, 34, 20, 40)])
def test_bitwise_identical_across_runs_and_thread_counts(cell, relu, T, B, I, H):
    args = forward_args(cell, T, B, I, H, torch.float32, 5, reset_kind="random")
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (threads, 1, threads):
            torch.set_num_threads(n)
            out = run_forward(ops, cell, relu, args, False)
            grads = run_backward(ops, cell, relu, backward_args(cell, args, out, 5), False)
            results.append([*out, *grads])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("cell,relu", CELLS)
def test_one_to_three_threads_give_the_same_results(cell, relu):
    """B = 50 with 1 to 3 threads (three on a 2-core machine: the team's threads take
    over each other's work): every result of the step loops bitwise equal (the RNN's
    weight gradients come from BLAS, whose split of the sum changes with 3 threads), and
    equal to the reference."""
    args = forward_args(cell, 11, 50, 7, 24, torch.float32, 3, reset_kind="random")
    threads = torch.get_num_threads()
    results = {}
    try:
        for n in (1, 2, 3, 2):
            torch.set_num_threads(n)
            for reverse in (False, True):
                out = run_forward(ops, cell, relu, args, reverse)
                grads = run_backward(ops, cell, relu, backward_args(cell, args, out, 5), reverse)
                results.setdefault(reverse, []).append((n, [*out, *grads]))
    finally:
        torch.set_num_threads(threads)
    for runs in results.values():
        _, first = runs[0]
        for n, other in runs[1:]:
            for i, (a, b) in enumerate(zip(first, other)):
                if cell == "rnn" and n == 3 and i in (4, 5, 6):  # grad_w_ih, grad_w_hh, grad_bias
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
                else:
                    assert torch.equal(a, b), (n, i)
    check_against_reference(cell, relu, 11, 50, 7, 24, torch.float64, True, "random", seed=3)


# Pre-activations where the float32 activations change regime: 0 and ±0, tiny (tanh must
# stay relatively accurate), the clamp at [-87, 88] on either side, far beyond, ±inf, NaN.
EXTREMES = [0.0, -0.0, 1e-8, -1e-8, 0.3, -2.5, 15.0, -15.0, 43.9, -43.9, 86.9, -86.9, 87.5, -87.5, 88.5,
            -88.5, 100.0, -100.0, 1e30, -1e30, float("inf"), float("-inf"), float("nan")]


def check_activations_at_extremes():
    """Every cell's float32 kernel on one step whose pre-activations are exactly EXTREMES
    (one input feature, weight 1, no recurrent weight, bias or state), against the same
    formula on torch's float64 sigmoid and tanh: within a few float32 ulps (or 1e-37
    absolutely, for results that underflow; the GRU's 1 - z also two ulps of 1, the
    cancellation every float32 GRU has), NaN where torch gives NaN."""
    x = torch.tensor(EXTREMES, dtype=torch.float32).view(1, -1, 1)
    n = x.shape[1]
    xd = x.double().view(-1)
    sig, tanh = torch.sigmoid(xd), torch.tanh(xd)
    zeros = torch.zeros
    cases = {  # cell: (output, expected, absolute tolerance)
        "rnn": (ops.rnn_chunk_forward(x, torch.ones(1, 1), zeros(1, 1), zeros(1), zeros(1), zeros(n, 1))[0], tanh,
                1e-37),
        "lstm": (ops.lstm_chunk_forward(x, torch.ones(4, 1), zeros(4, 1), zeros(4), zeros(4), zeros(n, 1),
                                        zeros(n, 1))[0], sig * torch.tanh(sig * tanh), 1e-37),
        "gru": (ops.gru_chunk_forward(x, torch.ones(3, 1), zeros(3, 1), zeros(3), zeros(3), zeros(n, 1))[0],
                (1 - sig) * tanh, 2.4e-7 * tanh.abs() + 1e-37),
    }
    for cell, (out, expected, atol) in cases.items():
        out = out.view(-1).double()
        assert torch.equal(out.isnan(), expected.isnan()), (cell, out, expected)
        ok = expected.isnan() | ((out - expected).abs() <= 1e-6 * expected.abs() + atol)
        assert ok.all(), f"{cell}: at {xd[~ok].tolist()} got {out[~ok].tolist()}, expected {expected[~ok].tolist()}"


def test_float32_activations_at_extremes():
    check_activations_at_extremes()


ISA_CHECK = """
import torch
from tbptt_ext import ops
import test_ops
assert ops.cpu_isa() == {isa!r}, ops.cpu_isa()
for cell, relu in test_ops.CELLS:
    for dtype in (torch.float32, torch.float64):
        for T, B, I, H in [(5, 3, 4, 7), (4, 13, 5, 70), test_ops.LONG_SHAPE]:
            for reverse, reset in [(False, "none"), (True, "random")]:
                test_ops.check_against_reference(cell, relu, T, B, I, H, dtype, reverse, reset)
    test_ops.test_projected_lstm_ops_match_reference(5, 13, 3, 40, 17, dtype)
test_ops.check_activations_at_extremes()
print("ok")
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_instruction_set_variant(isa):
    """The kernels are compiled per instruction set; run each one this machine has."""
    order = ["baseline", "avx2", "avx512"]
    if order.index(isa) > order.index(ops.cpu_isa()):
        pytest.skip(f"this CPU runs {ops.cpu_isa()}, not {isa}")
    env = dict(os.environ, TBPTT_EXT_CPU_ISA=isa)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", ISA_CHECK.format(isa=isa)], cwd=tests_dir, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_misspelt_instruction_set_cap_is_an_error():
    env = dict(os.environ, TBPTT_EXT_CPU_ISA="avx")
    out = subprocess.run([sys.executable, "-c", "import tbptt_ext"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "TBPTT_EXT_CPU_ISA must be one of baseline, avx2 or avx512" in out.stderr and "'avx'" in out.stderr


# ----------------------------------------------------------- LSTM projections
def projected_args(T, B, I, H, P, dtype, seed, reset_kind="none", requires_grad=False):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=dtype, generator=g) * scale).requires_grad_(requires_grad)

    args = [rand(T, B, I), rand(4 * H, I, scale=I**-0.5), rand(4 * H, P, scale=P**-0.5), rand(4 * H), rand(4 * H),
            rand(B, P), rand(B, H)]
    return args, random_reset(T, B, g, reset_kind), rand(P, H, scale=H**-0.5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,B,I,H,P", [(1, 1, 1, 2, 1), (6, 3, 4, 9, 5), (5, 13, 3, 40, 17), (4, 9, 30, 33, 8),
                                       (5, 35, 7, 24, 11)])
def test_projected_lstm_ops_match_reference(T, B, I, H, P, dtype):
    for reverse, reset_kind in [(False, "none"), (True, "random"), (False, "first")]:
        args, reset, w_hr = projected_args(T, B, I, H, P, dtype, T + B + P, reset_kind)
        fused = ops.lstm_chunk_forward(*args, reset, reverse, w_hr)
        ref = reference.lstm_chunk_forward(*args, reset, reverse, w_hr)
        assert fused[0].shape == (T, B, P) and fused[3].shape == (T, B, 6 * H)
        for a, b in zip(fused, ref):
            assert_close(a, b, dtype, "projected forward")
        g = torch.Generator().manual_seed(1)
        grads = [torch.randn(t.shape, dtype=dtype, generator=g) for t in ref[:3]]
        bargs = [*grads, args[0], ref[0], ref[3], args[1], args[2], args[5], args[6], reset, reverse]
        for needs_input, record in [(True, True), (False, False)]:
            a = ops.lstm_chunk_backward(*bargs, needs_input, record, w_hr)
            b = reference.lstm_chunk_backward(*bargs, needs_input, record, w_hr)
            for i, (x, y) in enumerate(zip(a, b)):
                assert x.shape == y.shape, i
                assert_close(x, y, dtype, f"projected backward output {i}")


@pytest.mark.parametrize("fused", [True, False])
def test_projected_lstm_gradcheck_and_opcheck(fused):
    for reverse, reset_kind in [(False, "none"), (True, "random")]:
        args, reset, w_hr = projected_args(4, 3, 2, 5, 3, torch.float64, 9, reset_kind, requires_grad=True)
        fn = lambda *a: LSTMChunk.apply(*a[:-1], reset, reverse, fused, None, a[-1])  # noqa: E731
        assert torch.autograd.gradcheck(fn, [*args, w_hr], atol=1e-7, rtol=1e-6)
    args, reset, w_hr = projected_args(5, 3, 4, 6, 2, torch.float32, 3, "random")
    fwd = torch.ops.tbptt_ext.lstm_chunk_forward.default
    torch.library.opcheck(fwd, (*args, reset, False, w_hr))
    out = fwd(*args, reset, False, w_hr)
    grads = [torch.randn_like(t) for t in out[:3]]
    torch.library.opcheck(torch.ops.tbptt_ext.lstm_chunk_backward.default,
                          (*grads, args[0], out[0], out[3], args[1], args[2], args[5], args[6], reset, False, True,
                           True, w_hr))


def test_projection_argument_errors():
    args, _, w_hr = projected_args(3, 2, 4, 6, 3, torch.float32, 0)
    fwd = torch.ops.tbptt_ext.lstm_chunk_forward
    with pytest.raises(RuntimeError, match=r"w_hr must have shape \[3, 6\]"):
        fwd(*args, None, False, w_hr[:, :5])
    message = "projection size P \\(the width of h0\\) must be at least 1 and smaller than the hidden size"
    with pytest.raises(RuntimeError, match=message):
        fwd(*projected_args(3, 2, 4, 6, 6, torch.float32, 0)[0], None, False, torch.randn(6, 6))
    # an empty projection (P = 0) ran, with the gates reading stale workspace
    x, w_ih, _, b_ih, b_hh, _, c0 = args
    with pytest.raises(RuntimeError, match=message + ".*got P = 0"):
        fwd(x, w_ih, torch.empty(24, 0), b_ih, b_hh, torch.empty(2, 0), c0, None, False, torch.empty(0, 6))
    with pytest.raises(RuntimeError, match=r"w_hr must be \[P, H\].*got shape \[6\]"):
        fwd(*projected_args(3, 2, 4, 6, 6, torch.float32, 0)[0], None, False, torch.randn(6))


def test_rnn_backward_output_of_the_wrong_rank():
    x, w_ih, w_hh, h0 = torch.randn(3, 2, 4), torch.randn(5, 4), torch.randn(5, 5), torch.randn(2, 5)
    out, h_n = torch.ops.tbptt_ext.rnn_chunk_forward(x, w_ih, w_hh, None, None, h0, None, False, False)
    for bad in (out.flatten(), torch.tensor(1.0)):
        with pytest.raises(RuntimeError, match=r"rnn_chunk_backward: output must be \[T, B, H\]"):
            torch.ops.tbptt_ext.rnn_chunk_backward(torch.randn_like(out), torch.randn_like(h_n), x, bad, w_ih, w_hh,
                                                   h0, None, False, False, True, False)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_fake_kernels_check_their_arguments(cell):
    """The fake kernels run for every call with an argument on the meta device (and under
    torch.compile); they raise where the compiled ops do, instead of returning outputs of
    a wrong shape or on mixed devices (a meta reset among CPU tensors gave uninitialised
    CPU outputs)."""
    G, T, B, I, H = {"rnn": 1, "lstm": 4, "gru": 3}[cell], 3, 2, 4, 5
    fwd = getattr(torch.ops.tbptt_ext, f"{cell}_chunk_forward")

    def call(x, w_ih, w_hh, h0, reset=None, device="meta"):
        args = [t.to(device) if t is not None and t.device.type != "meta" else t for t in (x, w_ih, w_hh)]
        tail = (reset, False, False) if cell == "rnn" else (reset, False)
        states = (h0, torch.zeros(B, H, device=device)) if cell == "lstm" else (h0,)
        return fwd(*args, None, None, *states, *tail)

    x, w_ih, w_hh, h0 = torch.randn(T, B, I), torch.randn(G * H, I), torch.randn(G * H, H), torch.randn(B, H)
    outputs = call(x, w_ih, w_hh, h0.to("meta"))
    assert outputs[0].shape == (T, B, H) and outputs[0].device.type == "meta"
    with pytest.raises(RuntimeError, match=r"h0 must have shape \[2, 5\], got \[7, 9\]"):
        call(x, w_ih, w_hh, torch.randn(7, 9, device="meta"))
    with pytest.raises(RuntimeError, match=r"w_ih must have shape"):
        call(x, w_ih[:, :3], w_hh, h0.to("meta"))
    with pytest.raises(RuntimeError, match=r"reset must have shape \[T, B\] = \[3, 2\]"):
        call(x, w_ih, w_hh, h0.to("meta"), torch.zeros(2, 3, dtype=torch.bool, device="meta"))
    # one meta argument among CPU ones: an error, not uninitialised CPU outputs
    with pytest.raises(RuntimeError, match="reset must be on cpu, got meta"):
        call(x, w_ih, w_hh, h0, torch.zeros(T, B, dtype=torch.bool, device="meta"), device="cpu")
    with pytest.raises(RuntimeError, match=r"h0 must be on meta \(the device of input\), got cpu"):
        call(x.to("meta"), w_ih, w_hh, h0, device="cpu")


def _raw_op_args(cell, T=3, B=2, I=3, H=4, P=0, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    width = P or H

    def rand(*shape):
        return (torch.randn(*shape, dtype=torch.float64, generator=g) * 0.5).requires_grad_()

    x, w_ih, w_hh = rand(T, B, I), rand(G * H, I), rand(G * H, width)
    b_ih, b_hh = (rand(G * H), rand(G * H)) if bias else (None, None)
    h0 = rand(B, width)
    reset = torch.rand(T, B, generator=g) < 0.3
    if cell == "rnn":
        return (x, w_ih, w_hh, b_ih, b_hh, h0, reset), (True, False)  # reverse, relu
    if cell == "gru":
        return (x, w_ih, w_hh, b_ih, b_hh, h0, reset), (True,)
    return (x, w_ih, w_hh, b_ih, b_hh, h0, rand(B, H), reset), (True, rand(P, H) if P else None)


@pytest.mark.parametrize("cell,P,bias", [("rnn", 0, True), ("rnn", 0, False), ("lstm", 0, True), ("lstm", 2, False),
                                         ("gru", 0, True)])
def test_forward_ops_called_directly_are_differentiable(cell, P, bias):
    """The forward ops' autograd formula (their backward op) against finite differences:
    a graph that calls them directly (torch.export of a module) gets gradients, where
    they were None with only a warning."""
    fwd = getattr(torch.ops.tbptt_ext, f"{cell}_chunk_forward")
    tensors, tail = _raw_op_args(cell, P=P, bias=bias)
    inputs = [t for t in (*tensors, *tail) if isinstance(t, torch.Tensor) and t.requires_grad]

    def f(*args):
        it = iter(args)
        full = [next(it) if isinstance(t, torch.Tensor) and t.requires_grad else t for t in (*tensors, *tail)]
        outputs = fwd(*full)
        return outputs[:3] if cell == "lstm" else outputs[:2]  # not the saved activations

    assert torch.autograd.gradcheck(f, inputs)
    outputs = fwd(*tensors, *tail)
    if cell != "rnn":
        assert not outputs[-1].requires_grad  # the saved activations
    with pytest.raises(RuntimeError, match="has no derivative of its own"):
        grads = torch.autograd.grad(outputs[0].pow(2).sum(), inputs, create_graph=True)
        torch.autograd.grad(sum(g.sum() for g in grads), inputs)


@requires_fused_cpu
@pytest.mark.filterwarnings("ignore:The tensor attributes self._flat_weights")  # torch.nn's modules warn alike
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_exported_module_gradients(name):
    torch.manual_seed(0)
    module = getattr(tbptt_ext, name)(3, 5, num_layers=2, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    exported = torch.export.export(module, (x,)).module()
    results = []
    for m in (module, exported):
        xi = x.clone().requires_grad_()
        out, state = m(xi)
        (out.pow(2).sum() + (state[0] if name == "LSTM" else state).sum()).backward()
        results.append([out.detach(), xi.grad] + [p.grad.clone() for p in m.parameters()])
        m.zero_grad()
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
