"""torch.func transforms (grad, vjp, jacrev, jvp, functional_call) and forward-mode AD over
the modules, against torch.nn's under the same transforms, in float64."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, jacrev, jvp, vjp

import tbptt_ext
from conftest import assert_close
from tbptt_ext.diagnostics import GradientFlow

CONFIGS = [
    ("RNN", {"nonlinearity": "relu"}), ("RNN", {"num_layers": 2, "bidirectional": True}),
    ("LSTM", {"num_layers": 2, "bidirectional": True}), ("LSTM", {"proj_size": 2}),
    ("GRU", {"num_layers": 2}), ("GRU", {"bias": False, "bidirectional": True}),
]


def pair(name, kwargs, backend="auto", seed=0):
    torch.manual_seed(seed)
    ours = getattr(tbptt_ext, name)(3, 4, dtype=torch.float64, backend=backend, **kwargs)
    theirs = getattr(torch.nn, name)(3, 4, dtype=torch.float64, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    params = {k: v.detach().clone() for k, v in ours.named_parameters()}
    return ours, theirs, params


def loss_of(module):
    def loss(params, x):
        out, state = functional_call(module, params, (x,))
        h = state[0] if isinstance(state, tuple) else state
        return out.sin().sum() + (h * h).sum()

    return loss


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("name,kwargs", CONFIGS)
def test_func_grad_like_torch_nn(name, kwargs, backend):
    ours, theirs, params = pair(name, kwargs, backend)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    got = grad(loss_of(ours), argnums=(0, 1))(params, x)
    want = grad(loss_of(theirs), argnums=(0, 1))(params, x)
    for key in params:
        assert_close(got[0][key], want[0][key], torch.float64, f"grad of {key}")
        assert got[0][key].abs().sum() > 0
    assert_close(got[1], want[1], torch.float64, "grad of the input")


@pytest.mark.parametrize("name,kwargs", CONFIGS[1:4])
def test_jacrev_of_the_output_like_torch_nn(name, kwargs):
    ours, theirs, params = pair(name, kwargs)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    got = jacrev(lambda x: functional_call(ours, params, (x,))[0])(x)
    want = jacrev(lambda x: functional_call(theirs, params, (x,))[0])(x)
    assert got.shape == (4, 2, 8 if "bidirectional" in kwargs else 2 if "proj_size" in kwargs else 4, 4, 2, 3)
    assert_close(got, want, torch.float64, "jacobian")


@pytest.mark.parametrize("name,kwargs", [CONFIGS[0], CONFIGS[2], CONFIGS[4]])
def test_hessian_vector_product_like_torch_nn(name, kwargs):
    # grad of grad: the inner backward must itself be differentiable under the transform
    ours, theirs, params = pair(name, kwargs, seed=1)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    v = {k: torch.randn_like(p) for k, p in params.items()}

    def hvp(module):
        first = grad(loss_of(module))
        return grad(lambda p: sum((first(p, x)[k] * v[k]).sum() for k in p))(params)

    got, want = hvp(ours), hvp(theirs)
    for key in params:
        assert_close(got[key], want[key], torch.float64, f"hvp of {key}")


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_vjp_with_reset_matches_autograd(name):
    # torch.nn has no reset masks: the truth here is the same module under plain autograd
    torch.manual_seed(2)
    module = getattr(tbptt_ext, name)(3, 4, dtype=torch.float64)
    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    reset = torch.rand(5, 3) < 0.4
    reset[2, 1] = True
    out, vjp_fn = vjp(lambda p, x: functional_call(module, p, (x,), {"reset": reset})[0], params, x)
    cotangent = torch.randn_like(out)
    got_params, got_x = vjp_fn(cotangent)
    xr = x.clone().requires_grad_()
    want = torch.autograd.grad((module(xr, reset=reset)[0] * cotangent).sum(), [xr, *module.parameters()])
    assert_close(got_x, want[0], torch.float64, "input")
    for (key, _), w in zip(module.named_parameters(), want[1:]):
        assert_close(got_params[key], w, torch.float64, key)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_gradient_flow_recorded_under_func_grad(name):
    torch.manual_seed(3)
    module = getattr(tbptt_ext, name)(3, 4, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    with GradientFlow(module) as flow:
        module(x)[0].sin().sum().backward()
        grad(lambda p: functional_call(module, p, (x,))[0].sin().sum())(
            {k: v.detach() for k, v in module.named_parameters()})
    assert len(flow.records) == 2
    torch.testing.assert_close(flow.records[1], flow.records[0], rtol=1e-12, atol=0)


def test_public_functions_keep_their_outputs_and_work_under_func_grad():
    torch.manual_seed(4)
    T, B, I, H = 4, 2, 3, 5
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(B, H, dtype=torch.float64)
    ws = {g: (torch.randn(g * H, I, dtype=torch.float64), torch.randn(g * H, H, dtype=torch.float64),
              torch.randn(g * H, dtype=torch.float64), torch.randn(g * H, dtype=torch.float64)) for g in (1, 3, 4)}
    calls = {
        "RNN": lambda w: tbptt_ext.RNNChunk.apply(x, *w, h0),
        "GRU": lambda w: tbptt_ext.GRUChunk.apply(x, *w, h0),
        "LSTM": lambda w: tbptt_ext.LSTMChunk.apply(x, *w, h0, torch.zeros_like(h0)),
    }
    for (cell, call), gates in zip(calls.items(), (1, 3, 4)):
        outputs = call(ws[gates])
        assert len(outputs) == (3 if cell == "LSTM" else 2)
        assert outputs[0].shape == (T, B, H)
        got = grad(lambda w: call(w)[0].sin().sum())(ws[gates])
        w = [t.clone().requires_grad_() for t in ws[gates]]
        want = torch.autograd.grad(call(w)[0].sin().sum(), w)
        for a, b in zip(got, want):
            assert_close(a, b, torch.float64, cell)


@pytest.mark.parametrize("name,kwargs", CONFIGS)
def test_jvp_and_forward_ad_like_torch_nn(name, kwargs):
    ours, theirs, params = pair(name, kwargs, seed=5)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    tangent_x = torch.randn_like(x)
    tangent_p = {k: torch.randn_like(p) for k, p in params.items()}

    def out(module):
        return lambda p, x: functional_call(module, p, (x,))[0]

    got = jvp(out(ours), (params, x), (tangent_p, tangent_x))
    want = jvp(out(theirs), (params, x), (tangent_p, tangent_x))
    assert_close(got[0], want[0], torch.float64, "output")
    assert_close(got[1], want[1], torch.float64, "jvp")
    assert got[1].abs().sum() > 0
    # torch.autograd.forward_ad along the input only
    with fwAD.dual_level():
        dual = ours(fwAD.make_dual(x, tangent_x))[0]
        tangent = fwAD.unpack_dual(dual).tangent
    zero_p = {k: torch.zeros_like(p) for k, p in params.items()}
    assert_close(tangent.detach(), jvp(out(theirs), (params, x), (zero_p, tangent_x))[1], torch.float64, "dual")


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_jvp_with_reset_matches_finite_differences(name):
    torch.manual_seed(6)
    module = getattr(tbptt_ext, name)(3, 4, num_layers=2, dtype=torch.float64)
    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    reset = torch.rand(6, 3) < 0.4
    direction = {k: torch.randn_like(p) for k, p in params.items()}
    f = lambda p: functional_call(module, p, (x,), {"reset": reset})[0]  # noqa: E731
    _, got = jvp(f, (params,), (direction,))
    eps = 1e-6
    plus = f({k: p + eps * direction[k] for k, p in params.items()})
    minus = f({k: p - eps * direction[k] for k, p in params.items()})
    torch.testing.assert_close(got, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)


# vmap (and jacfwd, hessian, which vmap a jvp or a backward): the modules run the
# reference forward as plain ops there. torch.nn's RNNs have no batching rule, so the
# truth is torch.nn one sample at a time, and torch.nn's jacrev / autograd.functional.
@pytest.mark.parametrize("name,kwargs", CONFIGS + [("GRU", {"batch_first": True})])
def test_vmap_like_torch_nn_sample_by_sample(name, kwargs):
    ours, theirs, params = pair(name, kwargs, seed=3)
    batch_first = kwargs.get("batch_first", False)
    xs = torch.randn(4, *((2, 5) if batch_first else (5, 2)), 3, dtype=torch.float64)  # T = 5, B = 2
    h0 = torch.randn(4, (2 if kwargs.get("bidirectional") else 1) * kwargs.get("num_layers", 1), 2,
                     2 if kwargs.get("proj_size") else 4, dtype=torch.float64)
    c0 = torch.randn(4, h0.shape[1], 2, 4, dtype=torch.float64)

    def call(module, x, h, c):
        hx = (h, c) if name == "LSTM" else h
        out, state = module(x, hx)
        return out, *(state if isinstance(state, tuple) else (state,))

    got = torch.func.vmap(lambda x, h, c: call(ours, x, h, c))(xs, h0, c0)
    want = [torch.stack(t) for t in zip(*(call(theirs, x, h, c) for x, h, c in zip(xs, h0, c0)))]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_close(g, w, torch.float64, "vmap")
    # a reset mask shared by the batch of samples
    reset = torch.rand(*((2, 5) if batch_first else (5, 2))) < 0.4
    got = torch.func.vmap(lambda x: ours(x, reset=reset)[0])(xs)
    want = torch.stack([ours(x, reset=reset)[0] for x in xs])
    assert_close(got, want, torch.float64, "vmap with a reset mask")


@pytest.mark.parametrize("name,kwargs", CONFIGS[1:4])
def test_jacfwd_like_torch_nn_jacrev(name, kwargs):
    ours, theirs, params = pair(name, kwargs, seed=4)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    got = torch.func.jacfwd(lambda x: functional_call(ours, params, (x,))[0])(x)
    want = jacrev(lambda x: functional_call(theirs, params, (x,))[0])(x)
    assert_close(got, want, torch.float64, "jacobian of the output by the input")
    got = torch.func.jacfwd(lambda p: loss_of(ours)(p, x))(params)
    want = grad(loss_of(theirs))(params, x)
    for key in params:
        assert_close(got[key], want[key], torch.float64, f"jacfwd of the loss by {key}")


@pytest.mark.parametrize("name,kwargs", [CONFIGS[0], CONFIGS[3], CONFIGS[4]])
def test_hessian_like_torch_nn(name, kwargs):
    ours, theirs, params = pair(name, kwargs, seed=5)
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    got = torch.func.hessian(lambda x: loss_of(ours)(params, x))(x)
    want = torch.autograd.functional.hessian(lambda x: loss_of(theirs)(params, x), x)
    assert got.shape == (3, 2, 3, 3, 2, 3)
    assert_close(got, want, torch.float64, "hessian by the input")
