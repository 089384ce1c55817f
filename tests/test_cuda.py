"""CUDA kernels: parity, gradcheck, determinism, odd sizes, opcheck, compile, launches.

Skipped where no GPU is visible (CI compiles the CUDA sources but cannot run them).
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import tbptt_ext
from tbptt_ext import reference
from tbptt_ext.functions import GRUChunk, LSTMChunk, RNNChunk

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or "cuda" not in tbptt_ext.compiled_backends(),
    reason="needs a GPU and the compiled CUDA kernels",
)
OPS = torch.ops.tbptt_ext
CELLS = [("rnn", False), ("rnn", True), ("lstm", False), ("gru", False)]
# fp32 with TF32 off against a float64 reference; half types against float64 too.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
}


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def inputs(cell, T, B, H, dtype, device="cuda", seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device, dtype).requires_grad_(
            requires_grad
        )

    args = [rand(T, B, G * H), rand(G * H, H, scale=H**-0.5)]
    if cell == "gru":
        args.append(rand(3 * H))
    args.append(rand(B, H))
    if cell == "lstm":
        args.append(rand(B, H))
    return args


def fwd(impl, cell, args, relu):
    return getattr(impl, f"{cell}_chunk_forward")(*args, *((relu,) if cell == "rnn" else ()))


def bwd_args(cell, args, out, seed=1):
    g = torch.Generator().manual_seed(seed)

    def like(t):
        return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)

    if cell == "rnn":
        xproj, w, h0 = args
        return [like(out[0]), like(out[1]), out[0], w, h0]
    if cell == "lstm":
        xproj, w, h0, c0 = args
        return [like(out[0]), like(out[1]), like(out[2]), out[0], out[3], out[4], w, h0, c0]
    xproj, w, b, h0 = args
    return [like(out[0]), like(out[1]), out[0], out[2], w, h0]


def bwd(impl, cell, args, relu):
    return getattr(impl, f"{cell}_chunk_backward")(*args, *((relu,) if cell == "rnn" else ()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T,B,H", [(1, 1, 1), (7, 3, 33), (16, 8, 256), (5, 130, 64), (3, 2, 1100)])
@pytest.mark.parametrize("cell,relu", CELLS)
def test_ops_match_float64_reference(cell, relu, T, B, H, dtype):
    args = inputs(cell, T, B, H, dtype)
    ref_args = [a.double() for a in args]
    out = fwd(OPS, cell, args, relu)
    ref_out = fwd(reference, cell, ref_args, relu)
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a.double(), b, **TOL[dtype])
    grads = bwd(OPS, cell, bwd_args(cell, args, out), relu)
    ref_grads = bwd(reference, cell, [a.double() for a in bwd_args(cell, args, out)], relu)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), b, **TOL[dtype])


@pytest.mark.parametrize("cell,relu", CELLS)
def test_gradcheck_float64_on_gpu(cell, relu):
    args = inputs(cell, 4, 3, 5, torch.float64, requires_grad=True)
    fn = {
        "rnn": lambda x, w, h: RNNChunk.apply(x, w, h, relu, True),
        "lstm": lambda x, w, h, c: LSTMChunk.apply(x, w, h, c, True),
        "gru": lambda x, w, b, h: GRUChunk.apply(x, w, b, h, True),
    }[cell]
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("cell,relu", CELLS)
def test_bitwise_deterministic(cell, relu):
    args = inputs(cell, 33, 17, 300, torch.float32)
    out1, out2 = fwd(OPS, cell, args, relu), fwd(OPS, cell, args, relu)
    g1 = bwd(OPS, cell, bwd_args(cell, args, out1), relu)
    g2 = bwd(OPS, cell, bwd_args(cell, args, out2), relu)
    for a, b in zip([*out1, *g1], [*out2, *g2]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell,relu", CELLS)
def test_opcheck_on_gpu(cell, relu):
    args = inputs(cell, 5, 3, 6, torch.float32)
    torch.library.opcheck(getattr(OPS, f"{cell}_chunk_forward").default, (*args, *((relu,) if cell == "rnn" else ())))
    out = fwd(OPS, cell, args, relu)
    torch.library.opcheck(getattr(OPS, f"{cell}_chunk_backward").default,
                          (*bwd_args(cell, args, out), *((relu,) if cell == "rnn" else ())))


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_modules_match_cudnn(name, dtype, kind):
    torch.manual_seed(0)
    ours = getattr(tbptt_ext, name)(8, 32, num_layers=2, bidirectional=True, device="cuda", dtype=dtype,
                                    backend="fused")
    theirs = getattr(torch.nn, name)(8, 32, num_layers=2, bidirectional=True, device="cuda", dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(11, 5, 8, device="cuda", dtype=dtype)
    if kind == "packed":
        x = pack_padded_sequence(x, torch.tensor([11, 3, 7, 1, 11]), enforce_sorted=False)
    out_a, state_a = ours(x)
    out_b, state_b = theirs(x)
    a, b = (out_a.data, out_b.data) if kind == "packed" else (out_a, out_b)
    tol = TOL[dtype] if dtype != torch.float32 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.double(), b.double(), **tol)
    (a.float().square().sum()).backward()
    (b.float().square().sum()).backward()
    for (n, p), q in zip(ours.named_parameters(), theirs.parameters()):
        scale = q.grad.abs().max().item() + 1e-6
        torch.testing.assert_close(p.grad.double() / scale, q.grad.double() / scale, **tol, msg=n)


def test_compile_on_gpu():
    model = tbptt_ext.LSTM(8, 32, device="cuda")
    x = torch.randn(6, 4, 8, device="cuda")
    step = torch.compile(lambda inp: model(inp)[0].square().sum(), fullgraph=True)
    loss = step(x)
    loss.backward()
    torch.testing.assert_close(loss, model(x)[0].square().sum())


def test_one_recurrence_launch_per_chunk_each_way():
    model = tbptt_ext.GRU(64, 64, device="cuda", backend="fused")
    x = torch.randn(50, 8, 64, device="cuda")
    model(x)[0].sum().backward()  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        model(x)[0].sum().backward()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert sum("chunk_forward_kernel" in n for n in names) == 1, names
    assert sum("chunk_backward_kernel" in n for n in names) == 1, names


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_gpu():
    args = inputs("lstm", 5, 3, 40, torch.float32, device="cuda:1")
    out = fwd(OPS, "lstm", args, False)
    assert out[0].device == torch.device("cuda:1")
    ref = fwd(reference, "lstm", [a.double() for a in args], False)
    torch.testing.assert_close(out[0].double(), ref[0], **TOL[torch.float32])
