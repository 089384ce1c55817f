"""CUDA kernels: parity, gradcheck, determinism, odd sizes, opcheck, compile, launches.

Skipped where no GPU is visible (CI compiles the CUDA sources but cannot run them).

Accuracy criteria: float64 and float32 (TF32 off) are compared elementwise with a
float64 truth. bfloat16 and float16 cannot be: the state is rounded every step, and
cuDNN misses any elementwise bound too. They are judged by the error norm against the
float64 truth, ||x - x64|| / ||x64||, relative to the error of an independent
computation in the same dtype on the same inputs: cuDNN (torch.nn) where it runs the
cell, the plain-PyTorch reference in that dtype elsewhere.
"""

import os

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import tbptt_ext
from tbptt_ext import ops, reference
from test_ops import CELLS, apply_function, forward_args, run_backward, run_forward

DEVICE = "cuda"
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or "cuda" not in tbptt_ext.compiled_backends(),
    reason="needs a GPU and the compiled CUDA kernels",
)
ELEMENTWISE = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=2e-5),
}
HALF_TYPES = [torch.bfloat16, torch.float16]


# The recurrence paths to test; benchmarks/gpu_session.sh can narrow them (PATHS=...).
PATHS = os.environ.get("TBPTT_EXT_TEST_CUDA_PATHS", "auto,persistent,latency,throughput,stepwise").split(",")


@pytest.fixture(autouse=True, params=PATHS)
def cuda_path(request, monkeypatch):
    """Every test runs on every recurrence path (csrc/cuda/cuda_ops.cpp: cuda_path)."""
    monkeypatch.setenv("TBPTT_EXT_CUDA_PATH", request.param)
    return request.param


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def to_device(args, dtype, device=None):
    """float64 CPU arguments -> `dtype` on the GPU (masks keep their dtype)."""
    device = device or DEVICE
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            a = a.to(device, dtype) if a.is_floating_point() else a.to(device)
        out.append(a)
    return out


def relative_error(x, truth):
    x, truth = x.double(), truth.double().to(x.device)
    return ((x - truth).norm() / truth.norm().clamp_min(1e-300)).item()


def fwd_bwd(impl, cell, relu, args, reverse, seed=1):
    """Forward, then backward with random output gradients (drawn in float64 on the CPU,
    so every dtype and device gets the same values)."""
    out = run_forward(impl, cell, relu, args, reverse)
    g = torch.Generator().manual_seed(seed)
    grads_in = [torch.randn(o.shape, dtype=torch.float64, generator=g).to(o.device, o.dtype)
                for o in out[: 3 if cell == "lstm" else 2]]
    return out, run_backward(impl, cell, relu, [*grads_in, *build_backward_rest(cell, args, out)], reverse)


def build_backward_rest(cell, args, out):
    """The backward op's arguments after the output gradients."""
    input, w_ih, w_hh, b_ih, b_hh, h0, *more = args
    reset = more[-1]
    if cell == "rnn":
        return [input, out[0], w_ih, w_hh, h0, reset]
    if cell == "lstm":
        return [input, out[0], out[3], w_ih, w_hh, h0, more[0], reset]
    return [input, out[0], out[2], w_ih, w_hh, h0, reset]


SHAPES = [(1, 1, 1, 1), (7, 3, 5, 33), (16, 8, 64, 256), (5, 130, 16, 64), (3, 2, 8, 1100)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("cell,relu", CELLS)
def test_ops_match_float64_reference(cell, relu, T, B, I, H, dtype):
    for reverse, reset_kind in [(False, "none"), (True, "random"), (False, "random")]:
        args64 = forward_args(cell, T, B, I, H, torch.float64, seed=T + B + H, reset_kind=reset_kind)
        out, grads = fwd_bwd(ops, cell, relu, to_device(args64, dtype), reverse)
        ref_out, ref_grads = fwd_bwd(reference, cell, relu, args64, reverse)
        for i, (a, b) in enumerate(zip([*out, *grads], [*ref_out, *ref_grads])):
            assert a.shape == b.shape, i
            torch.testing.assert_close(a.double().cpu(), b, **ELEMENTWISE[dtype], msg=lambda m: f"output {i}: {m}")


@pytest.mark.parametrize("dtype", HALF_TYPES, ids=["bfloat16", "float16"])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("cell,relu", CELLS)
def test_half_ops_error_within_twice_the_reference_in_same_dtype(cell, relu, T, B, I, H, dtype):
    """Error norm at most twice that of plain PyTorch in the same dtype, plus a floor,
    against float64 on the same inputs:
    - forward: the float64 reference on the dtype-rounded inputs, so that the rounding of
      the inputs, which every implementation in the dtype shares, is left out;
    - backward: every implementation on the same saved tensors, the fused forward's. The
      relu RNN's gradient is discontinuous where a pre-activation crosses zero, so each
      forward's own rounding would flip a few units' masks and change the gradient there
      by a whole term: on the CPU, float64 arithmetic on bfloat16-rounded inputs was
      3.5e-2 off in grad_input at T=7 B=3 H=33, plain bfloat16 3.7e-3, by luck.
    The floor is one rounding of a stored result (eps / 2); for tensors of fewer than 100
    elements, two units of eps, as a handful of roundings decide their norm and plain
    PyTorch's can be luckily near zero (one-element LSTM gradient on an H200: 1.6e-3
    against plain float16's 3.1e-5)."""
    eps = torch.finfo(dtype).eps
    g = torch.Generator().manual_seed(T + B + H)
    for reverse, reset_kind in [(False, "none"), (True, "random")]:
        args = to_device(forward_args(cell, T, B, I, H, torch.float64, seed=T * B + H, reset_kind=reset_kind), dtype)
        fused = run_forward(ops, cell, relu, args, reverse)
        plain = run_forward(reference, cell, relu, args, reverse)
        truth = run_forward(reference, cell, relu, to_device(args, torch.float64, "cpu"), reverse)
        n_grads = 3 if cell == "lstm" else 2
        grads_in = [torch.randn(o.shape, dtype=torch.float64, generator=g).to(DEVICE, dtype) for o in fused[:n_grads]]
        bargs = [*grads_in, *build_backward_rest(cell, args, fused)]
        checks = [("forward", fused, plain, truth),
                  ("backward", run_backward(ops, cell, relu, bargs, reverse),
                   run_backward(reference, cell, relu, bargs, reverse),
                   run_backward(reference, cell, relu, to_device(bargs, torch.float64, "cpu"), reverse))]
        for what, ours_all, plain_all, truth_all in checks:
            for i, (a, b, x) in enumerate(zip(ours_all, plain_all, truth_all)):
                if x.numel() == 0:
                    continue
                ours, theirs = relative_error(a, x), relative_error(b, x)
                floor = 2 * eps if x.numel() < 100 else eps / 2
                assert ours <= 2 * theirs + floor, (
                    f"{what} output {i}: error {ours:.2e} vs plain PyTorch {theirs:.2e} (reverse={reverse})")


@pytest.mark.parametrize("cell,relu", CELLS)
def test_gradcheck_float64_on_gpu(cell, relu):
    for reverse, reset_kind in [(False, "none"), (True, "random")]:
        *inputs, reset = to_device(forward_args(cell, 4, 3, 2, 5, torch.float64, 7, reset_kind=reset_kind),
                                   torch.float64)
        inputs = [t.requires_grad_(True) if t is not None else None for t in inputs]
        assert torch.autograd.gradcheck(apply_function(cell, True, relu, reverse, reset), inputs)


@pytest.mark.parametrize("cell,relu", CELLS)
def test_bitwise_deterministic(cell, relu):
    args = to_device(forward_args(cell, 33, 17, 20, 300, torch.float64, 3, reset_kind="random"), torch.float32)
    first = fwd_bwd(ops, cell, relu, args, False)
    second = fwd_bwd(ops, cell, relu, args, False)
    for a, b in zip([*first[0], *first[1]], [*second[0], *second[1]]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell,relu", CELLS)
def test_opcheck_on_gpu(cell, relu):
    args = to_device(forward_args(cell, 5, 3, 4, 6, torch.float64, 11, reset_kind="random"), torch.float32)
    flags = (True, relu) if cell == "rnn" else (True,)
    fwd = getattr(torch.ops.tbptt_ext, f"{cell}_chunk_forward").default
    torch.library.opcheck(fwd, (*args, *flags))
    out = fwd(*args, *flags)
    grads_in = [torch.randn_like(o) for o in out[: 3 if cell == "lstm" else 2]]
    bwd = getattr(torch.ops.tbptt_ext, f"{cell}_chunk_backward").default
    torch.library.opcheck(bwd, (*grads_in, *build_backward_rest(cell, args, out), *flags, True, True))


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("dtype,tf32", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False),
                                        (torch.float16, False)])
@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_modules_error_within_twice_cudnn(name, dtype, tf32, kind):
    """Output and every parameter gradient: error norm against float64 at most twice cuDNN's,
    fp32 with TF32 off and on (torch.backends.cudnn.allow_tf32, which both obey)."""
    torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    kwargs = dict(num_layers=2, bidirectional=True, device=DEVICE)
    truth = getattr(torch.nn, name)(8, 32, dtype=torch.float64, **kwargs)
    x64 = torch.randn(11, 5, 8, device=DEVICE, dtype=torch.float64)
    lengths = torch.tensor([11, 3, 7, 1, 11])

    def prepare(x):
        return pack_padded_sequence(x, lengths, enforce_sorted=False) if kind == "packed" else x

    def data(out):
        return out.data if kind == "packed" else out

    out64, _ = truth(prepare(x64))
    data(out64).square().sum().backward()
    truth_grads = [p.grad for p in truth.parameters()]
    errors = {}
    for label, cls in (("tbptt_ext", getattr(tbptt_ext, name)), ("cuDNN", getattr(torch.nn, name))):
        m = cls(8, 32, dtype=dtype, **kwargs, **({"backend": "fused"} if label == "tbptt_ext" else {}))
        m.load_state_dict({k: v.to(dtype) for k, v in truth.state_dict().items()})
        out, _ = m(prepare(x64.to(dtype)))
        data(out).float().square().sum().backward()
        errors[label] = [relative_error(data(out), data(out64))]
        errors[label] += [relative_error(p.grad, g) for p, g in zip(m.parameters(), truth_grads)]
    # plus the unit roundoff of the dtype (at least 1e-6): storing the exact result in it is that far off
    # (a parameter's gradient has few elements, so cuDNN's error can be luckily small:
    # 2.5e-3 against our 5.1e-3 for one 32-element bf16 bias gradient, on an H200)
    floor = max(torch.finfo(dtype).eps / 2, 1e-6)
    for i, (ours, theirs) in enumerate(zip(errors["tbptt_ext"], errors["cuDNN"])):
        assert ours <= 2 * theirs + floor, f"item {i}: error {ours:.2e} vs cuDNN {theirs:.2e}"


def test_compile_on_gpu():
    model = tbptt_ext.LSTM(8, 32, device=DEVICE)
    x = torch.randn(6, 4, 8, device=DEVICE)
    step = torch.compile(lambda inp: model(inp)[0].square().sum(), fullgraph=True)
    loss = step(x)
    loss.backward()
    torch.testing.assert_close(loss, model(x)[0].square().sum())


def with_cuda_kernel_names(run):
    """(run()'s result, the names of the CUDA kernels it launched), by torch.profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        result = run()
        torch.cuda.synchronize()
    return result, [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def test_one_recurrence_launch_per_chunk_each_way(cuda_path):
    """The persistent paths run a chunk in one launch each way; the stepwise path one
    pointwise launch per step (and a GEMM)."""
    model = tbptt_ext.GRU(64, 64, device=DEVICE, backend="fused")
    x = torch.randn(50, 8, 64, device=DEVICE)
    model(x)[0].sum().backward()  # warm-up
    _, names = with_cuda_kernel_names(lambda: model(x)[0].sum().backward())
    # chunk_* (persistent), block_* (latency), tile_* (throughput), step_* (stepwise) kernels
    launches = 50 if cuda_path == "stepwise" else 1
    assert sum("_forward_kernel" in n for n in names) == launches, names
    assert sum("_backward_kernel" in n for n in names) == launches, names
    expected = {"auto": "tile_",  # fp32 GRU B = 8 H = 64: throughput (test_auto_path_follows_the_measured_rule)
                "persistent": "chunk_", "latency": "block_", "throughput": "tile_", "stepwise": "step_"}[cuda_path]
    assert all(expected in n for n in names if "_forward_kernel" in n or "_backward_kernel" in n), names


@pytest.mark.parametrize("cell,B,H,dtype,expected", [
    ("gru", 8, 512, torch.float32, "chunk_"),        # B <= 8, W_hh 3 MiB: persistent
    ("gru", 16, 256, torch.float32, "chunk_"),       # B <= 16 with H <= 256, fp32 GRU above 512 KiB: persistent
    ("gru", 16, 257, torch.float32, "tile_"),        # B = 16 with H > 256: throughput
    ("gru", 17, 64, torch.float32, "tile_"),         # B > 16: throughput
    ("lstm", 8, 128, torch.float32, "tile_"),        # fp32 LSTM W_hh 256 KiB: throughput
    ("lstm", 8, 182, torch.float32, "chunk_"),       # 529,984 bytes > 512 KiB: persistent
    ("lstm", 8, 256, torch.bfloat16, "tile_"),       # half types at small batches: throughput
    ("lstm", 8, 513, torch.bfloat16, "tile_"),       # bf16 W_hh just above 2 MiB: still throughput
    ("lstm", 16, 512, torch.float32, "tile_"),       # W_hh 4 MiB, not a small batch: throughput
    ("lstm", 4, 513, torch.float32, "step_"),        # W_hh above 4 MiB: stepwise
    ("rnn", 128, 1024, torch.bfloat16, "tile_"),     # 2 MiB: throughput
])
def test_auto_path_follows_the_measured_rule(cuda_path, cell, B, H, dtype, expected):
    """TBPTT_EXT_CUDA_PATH=auto (the default) at the edges of its rule (path_rule.h, also
    checked on the CPU in tests/test_tile_plan.py): the kernels that ran, forward and
    backward, and a float64 check."""
    if cuda_path != "auto":
        pytest.skip("the rule of the auto path")
    args64 = forward_args(cell, 3, B, 16, H, torch.float64, seed=B + H, reset_kind="random")
    args = to_device(args64, dtype)
    (out, grads), names = with_cuda_kernel_names(lambda: fwd_bwd(ops, cell, False, args, False))
    names = [n for n in names if "_forward_kernel" in n or "_backward_kernel" in n]
    assert names and all(expected in n for n in names), names
    assert any("_forward_kernel" in n for n in names) and any("_backward_kernel" in n for n in names), names
    truth = fwd_bwd(reference, cell, False, to_device(args, torch.float64, "cpu"), False)
    plain = fwd_bwd(reference, cell, False, args, False)
    for i, (a, b, x) in enumerate(zip([*out, *grads], [*plain[0], *plain[1]], [*truth[0], *truth[1]])):
        if x.numel():
            bound = 1e-5 if dtype == torch.float32 else 2 * relative_error(b, x) + 1e-3
            assert relative_error(a, x) <= bound, (i, relative_error(a, x), bound)


@pytest.mark.parametrize("cell,relu", CELLS)
def test_large_hidden_size_matches_float64(cell, relu):
    """H = 2048 in fp32 (W_hh 16 to 64 MB): the throughput path tiles RNN with one thin unit
    tile per multiprocessor and falls back to the stepwise path for LSTM and GRU, whose
    W_hh fits no tiling on chip; every path must stay exact (TF32 off)."""
    args64 = forward_args(cell, 3, 4, 16, 2048, torch.float64, seed=5, reset_kind="random")
    out, grads = fwd_bwd(ops, cell, relu, to_device(args64, torch.float32), False)
    ref_out, ref_grads = fwd_bwd(reference, cell, relu, args64, False)
    for i, (a, b) in enumerate(zip([*out, *grads], [*ref_out, *ref_grads])):
        torch.testing.assert_close(a.double().cpu(), b, rtol=1e-4, atol=1e-4, msg=lambda m: f"output {i}: {m}")


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0),
                    reason="TF32 needs compute capability 8.0")
@pytest.mark.skipif(os.environ.get("NVIDIA_TF32_OVERRIDE") == "0", reason="NVIDIA_TF32_OVERRIDE=0 disables TF32")
@pytest.mark.parametrize("matmul_tf32", [False, True])
@pytest.mark.parametrize("B,H", [(8, 256), (4, 640)])
def test_tf32_policy_follows_the_cudnn_flag(cuda_path, B, H, matmul_tf32):
    """fp32 products follow torch.backends.cudnn.allow_tf32, as torch.nn's cuDNN RNNs do,
    whatever torch.backends.cuda.matmul.allow_tf32 says; exact fp32 when the flag is off.
    The recurrent products run TF32 on the throughput and stepwise paths, judged on the
    output (forward) and on grad_h0 (the backward's carry through W_hh), each on its own;
    the products around the recurrence on every path, judged on dW_ih where the
    recurrence is exact (persistent, latency; auto at H = 256). On the stepwise products
    cuBLAS may still pick an exact kernel for a thin product. The input and W_ih are
    put on the bfloat16 grid, so that the input projection is exact even in TF32 and the
    output shows the recurrence alone. H = 640: LSTM W_hh of 6.25 MiB, which the
    throughput path still tiles at B = 4 (80 thin unit tiles) and auto sends to stepwise."""
    args64 = forward_args("lstm", 10, B, 32, H, torch.float64, seed=2)
    args64[0], args64[1] = args64[0].bfloat16().double(), args64[1].bfloat16().double()
    truth = fwd_bwd(reference, "lstm", False, args64, False)
    forward, carry, around = {}, {}, {}
    torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    for flag in (False, True):
        torch.backends.cudnn.allow_tf32 = flag
        out, grads = fwd_bwd(ops, "lstm", False, to_device(args64, torch.float32), False)
        forward[flag] = relative_error(out[0], truth[0][0])
        carry[flag] = relative_error(grads[1], truth[1][1])
        around[flag] = relative_error(grads[3], truth[1][3])
    errors = dict(forward=forward, carry=carry, around=around)
    assert all(e[False] < 1e-5 for e in errors.values()), errors
    assert 10 * around[False] < around[True] < 1e-2, errors
    if cuda_path == "throughput":  # our tiles: TF32 fragments both ways
        for e in (forward, carry):
            assert 10 * e[False] < e[True] < 1e-2, errors
    elif cuda_path == "stepwise" or (cuda_path == "auto" and H == 640):  # cuBLAS's per-step products
        # cuBLAS's per-step products under CUBLAS_COMPUTE_32F_FAST_TF32: TF32 is allowed, and
        # cuBLAS uses it where its kernel choice has tensor cores (on an H100 not for the
        # forward's [8, 256] x [256, 1024] product, which ran exact): within TF32's error
        # both ways, and TF32 seen in at least one direction
        assert forward[True] < 1e-2 and carry[True] < 1e-2, errors
        assert any(10 * e[False] < e[True] for e in (forward, carry)), errors
    else:
        assert forward[True] < 1e-5 and carry[True] < 1e-5, errors


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_gpu():
    args64 = forward_args("lstm", 5, 3, 4, 40, torch.float64, 0)
    out = run_forward(ops, "lstm", False, to_device(args64, torch.float32, "cuda:1"), False)
    assert out[0].device == torch.device("cuda:1")
    ref = run_forward(reference, "lstm", False, args64, False)
    torch.testing.assert_close(out[0].double().cpu(), ref[0], **ELEMENTWISE[torch.float32])


def test_projected_lstm_runs_the_reference_on_cuda():
    torch.manual_seed(0)
    ours = tbptt_ext.LSTM(8, 16, proj_size=5, num_layers=2, device=DEVICE, dtype=torch.float64)
    theirs = torch.nn.LSTM(8, 16, proj_size=5, num_layers=2, device=DEVICE, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(7, 3, 8, device=DEVICE, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], **ELEMENTWISE[torch.float64])
    with pytest.raises(RuntimeError, match="fused kernels on the CPU only"):
        tbptt_ext.LSTM(8, 16, proj_size=5, device=DEVICE, backend="fused")(x.float())
    args = to_device(forward_args("lstm", 3, 2, 4, 6, torch.float64, 0), torch.float32)
    w_hh, h0 = torch.randn(24, 3, device=DEVICE), torch.randn(2, 3, device=DEVICE)
    with pytest.raises(RuntimeError, match="CUDA kernels do not implement LSTM projections"):
        ops.lstm_chunk_forward(args[0], args[1], w_hh, args[3], args[4], h0, args[6], None, False,
                               torch.randn(3, 6, device=DEVICE))


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_autocast_runs_the_half_kernels(name, dtype):
    # under CUDA autocast the modules run in the autocast dtype (fused kernels exist for
    # both), as cuDNN does: the same results as the module cast to that dtype
    torch.manual_seed(0)
    module = getattr(tbptt_ext, name)(16, 32, num_layers=2, device=DEVICE)
    x = torch.randn(20, 4, 16, device=DEVICE)
    with torch.autocast("cuda", dtype=dtype):
        out, _ = module(x)
    assert out.dtype == dtype
    half = getattr(tbptt_ext, name)(16, 32, num_layers=2, device=DEVICE, dtype=dtype)
    half.load_state_dict(module.state_dict())
    expected, _ = half(x.to(dtype))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
