"""Drop-in behaviour: parameters, state_dicts, backends, odd inputs."""

import pytest
import torch

import tbptt_ext
from conftest import assert_close, requires_fused_cpu

MODULES = ["RNN", "LSTM", "GRU"]


@pytest.mark.parametrize("name", MODULES)
def test_parameters_and_state_dict_round_trip(name):
    kwargs = dict(num_layers=2, bidirectional=True, bias=True)
    ours = getattr(tbptt_ext, name)(3, 5, **kwargs)
    theirs = getattr(torch.nn, name)(3, 5, **kwargs)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in theirs.named_parameters()
    ]
    theirs.load_state_dict(ours.state_dict())  # ours -> torch.nn
    fresh = getattr(tbptt_ext, name)(3, 5, **kwargs)
    fresh.load_state_dict(theirs.state_dict())  # torch.nn -> ours
    for a, b in zip(fresh.parameters(), ours.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", MODULES)
def test_initialisation_like_torch_nn(name):
    torch.manual_seed(3)
    ours = getattr(tbptt_ext, name)(3, 16, num_layers=2)
    torch.manual_seed(3)
    theirs = getattr(torch.nn, name)(3, 16, num_layers=2)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def test_positional_arguments_like_torch_nn():
    ours = tbptt_ext.RNN(3, 5, 2, "relu", False, True, 0.0, True)
    theirs = torch.nn.RNN(3, 5, 2, "relu", False, True, 0.0, True)
    assert (ours.nonlinearity, ours.bias, ours.batch_first, ours.bidirectional) == (
        theirs.nonlinearity, theirs.bias, theirs.batch_first, theirs.bidirectional,
    )
    assert repr(ours) == repr(theirs)
    assert "backend='reference'" in repr(tbptt_ext.LSTM(3, 5, backend="reference"))


@requires_fused_cpu
@pytest.mark.parametrize("name", MODULES)
def test_non_contiguous_input_and_state(name):
    torch.manual_seed(0)
    ours = getattr(tbptt_ext, name)(4, 5, dtype=torch.float64)
    theirs = getattr(torch.nn, name)(4, 5, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 8, dtype=torch.float64)[:, :, ::2].transpose(0, 1)  # [6, 2, 4], strided
    h = torch.randn(2, 1, 5, dtype=torch.float64).transpose(0, 1)
    hx = (h, h.clone()) if name == "LSTM" else h
    assert not x.is_contiguous()
    out_a, state_a = ours(x, hx)
    out_b, state_b = theirs(x, hx)
    assert_close(out_a, out_b, torch.float64, "output")


@pytest.mark.parametrize("name", MODULES)
def test_zero_batch_like_torch_nn(name):
    ours = getattr(tbptt_ext, name)(4, 5)
    theirs = getattr(torch.nn, name)(4, 5)
    out_a, state_a = ours(torch.randn(3, 0, 4))
    out_b, state_b = theirs(torch.randn(3, 0, 4))
    assert out_a.shape == out_b.shape
    flat_a = state_a if isinstance(state_a, tuple) else (state_a,)
    flat_b = state_b if isinstance(state_b, tuple) else (state_b,)
    assert [s.shape for s in flat_a] == [s.shape for s in flat_b]


@pytest.mark.parametrize("name", MODULES)
def test_auto_backend_runs_reference_for_half_types(name):
    torch.manual_seed(0)
    ours = getattr(tbptt_ext, name)(4, 8, dtype=torch.bfloat16)
    theirs = getattr(torch.nn, name)(4, 8, dtype=torch.float32)
    theirs.load_state_dict({k: v.float() for k, v in ours.state_dict().items()})
    x = torch.randn(5, 2, 4)
    out, _ = ours(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), theirs(x)[0], rtol=0.05, atol=0.05)


@requires_fused_cpu
@pytest.mark.parametrize("name", MODULES)
def test_functional_call_and_to(name):
    m = getattr(tbptt_ext, name)(4, 5).double()
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    params = {k: torch.zeros_like(v) for k, v in m.named_parameters()}
    out, _ = torch.func.functional_call(m, params, (x,))
    assert torch.count_nonzero(out) == 0 if name != "GRU" else torch.allclose(out, torch.zeros_like(out))


@pytest.mark.parametrize("name", MODULES)
def test_functional_call_with_parameters_of_another_dtype_or_device(name):
    """As torch.nn: the module's checks and layers use the parameters passed to
    functional_call, also where they differ in dtype from the module's own, or where the
    module is a stateless meta-device copy (torch.func's model-ensembling recipe)."""
    import copy

    torch.manual_seed(0)
    ours = getattr(tbptt_ext, name)(4, 5, num_layers=2)
    theirs = getattr(torch.nn, name)(4, 5, num_layers=2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    params64 = {k: v.detach().double() for k, v in theirs.named_parameters()}
    out, _ = torch.func.functional_call(ours, params64, (x,))
    assert out.dtype == torch.float64
    assert_close(out, torch.func.functional_call(theirs, params64, (x,))[0], torch.float64, "float64 parameters")
    params32 = dict(theirs.named_parameters())
    out, _ = torch.func.functional_call(copy.deepcopy(ours).double(), params32, (x.float(),))
    assert_close(out, theirs(x.float())[0], torch.float32, "float32 parameters on a float64 module")
    # ensembling: three models' parameters stacked, one meta-device copy as the base, vmap
    models = [getattr(tbptt_ext, name)(4, 5, num_layers=2) for _ in range(3)]
    stacked, buffers = torch.func.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    xs = torch.randn(3, 2, 4)

    def run(params, buffers):
        return torch.func.functional_call(base, (params, buffers), (xs,))[0]

    ensemble = torch.vmap(run)(stacked, buffers)
    for i, model in enumerate(models):
        theirs.load_state_dict(model.state_dict())
        assert_close(ensemble[i], theirs(xs)[0], torch.float32, f"ensemble member {i}")


@pytest.mark.parametrize("name", MODULES)
def test_spectral_norm_trains_like_torch_nn(name):
    """A stateful parametrization (spectral_norm's power iteration, one per evaluation in
    train mode) is evaluated as often per forward as in torch.nn, so training matches."""
    from torch.nn.utils.parametrizations import spectral_norm

    torch.manual_seed(0)
    ours = getattr(tbptt_ext, name)(4, 5, dtype=torch.float64)
    theirs = getattr(torch.nn, name)(4, 5, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    for m in (ours, theirs):
        torch.manual_seed(1)  # the same initial power-iteration vectors
        spectral_norm(m, "weight_hh_l0")
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    for _ in range(3):
        a, b = ours(x)[0], theirs(x)[0]
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.parametrizations.weight_hh_l0[0]._u, theirs.parametrizations.weight_hh_l0[0]._u,
                               rtol=1e-12, atol=1e-12)


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    import tbptt_ext.ops as ops
    import tbptt_ext.modules as modules

    monkeypatch.setattr(ops, "EXTENSION_ERROR", ImportError("simulated"))
    monkeypatch.setattr(ops, "_COMPILED_BACKENDS", frozenset())
    monkeypatch.setattr(modules, "_warned_missing_extension", False)
    m = tbptt_ext.GRU(4, 5)
    x = torch.randn(3, 2, 4)
    with pytest.warns(RuntimeWarning, match="the plain-PyTorch reference runs instead.*Import error: simulated"):
        m(x)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x)  # only one warning
    with pytest.raises(RuntimeError, match="extension not loaded: simulated"):
        tbptt_ext.GRU(4, 5, backend="fused")(x)


def test_import_without_compiled_extension(tmp_path):
    """A copy of the package without _C imports, warns once and runs the reference."""
    import pathlib
    import shutil
    import subprocess
    import sys

    source = pathlib.Path(tbptt_ext.__file__).parent
    shutil.copytree(source, tmp_path / "tbptt_ext", ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    code = (
        "import importlib.util, sys, warnings, torch\n"
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f)]  # pip install -e\n"
        "spec = importlib.util.spec_from_file_location('tbptt_ext', 'tbptt_ext/__init__.py',\n"
        "    submodule_search_locations=['tbptt_ext'])\n"
        "tbptt_ext = importlib.util.module_from_spec(spec); sys.modules['tbptt_ext'] = tbptt_ext\n"
        "spec.loader.exec_module(tbptt_ext)\n"
        "assert tbptt_ext.ops.EXTENSION_ERROR is not None\n"
        "assert tbptt_ext.compiled_backends() == set()\n"
        "m = tbptt_ext.LSTM(3, 4)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    out, _ = m(torch.randn(5, 2, 3)); m(torch.randn(5, 2, 3))\n"
        "assert out.shape == (5, 2, 4)\n"
        "assert sum('reference' in str(x.message) for x in w) == 1, [str(x.message) for x in w]\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


@requires_fused_cpu
@pytest.mark.parametrize("name,kwargs", [("RNN", {"nonlinearity": "relu"}), ("RNN", {}), ("LSTM", {}), ("GRU", {})])
def test_nan_propagates_like_torch_nn(name, kwargs):
    torch.manual_seed(0)
    ours = getattr(tbptt_ext, name)(2, 3, **kwargs)
    theirs = getattr(torch.nn, name)(2, 3, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 2, 2)
    x[1, 0, 0] = float("nan")
    a, _ = ours(x)
    b, _ = theirs(x)
    assert torch.equal(a.isnan(), b.isnan()) and a.isnan().any()


@requires_fused_cpu
@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_infinities_give_nan_where_torch_nn_does(name):
    """float32: a closed gate (sigmoid of a pre-activation below -88) is exactly 0, so an
    infinite state or input under it gives torch.nn's NaN (0 * inf), not a finite or
    infinite value (the kernels' sigmoid was 6e-39 there)."""
    torch.manual_seed(0)
    ours = getattr(tbptt_ext, name)(4, 5)
    theirs = getattr(torch.nn, name)(4, 5)
    theirs.load_state_dict(ours.state_dict())
    x, h0 = torch.randn(3, 2, 4), torch.randn(1, 2, 5)
    h0[0, 0, 1] = float("inf")
    hx = (h0, torch.randn(1, 2, 5)) if name == "LSTM" else h0
    a, b = ours(x, hx)[0], theirs(x, hx)[0]
    assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())
    torch.testing.assert_close(a.nan_to_num(0, 0, 0), b.nan_to_num(0, 0, 0))
    nans = int(a.isnan().sum())
    x = torch.randn(2, 1, 4)
    x[0, 0, 2] = float("inf")  # saturates every gate of the first step
    grads = []
    for module in (ours, theirs):
        out, _ = module(x)
        out.sum().backward()
        grads.append([out.detach()] + [p.grad for p in module.parameters()])
        module.zero_grad()
    for a, b in zip(*grads):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())
        torch.testing.assert_close(a.nan_to_num(0, 0, 0), b.nan_to_num(0, 0, 0))
        nans += int(a.isnan().sum())
    assert nans > 0  # the cases reach 0 * inf


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("name,kwargs", [("RNN", {"nonlinearity": "relu"}), ("RNN", {}), ("LSTM", {}), ("GRU", {})])
def test_gradients_with_a_nan_input_like_torch_nn(name, kwargs, backend):
    """A NaN in one row's input at one step: every gradient NaN where torch.nn's is, and
    equal to torch.nn's elsewhere (relu: torch passes the gradient where h is NaN)."""
    torch.manual_seed(0)
    ours = getattr(tbptt_ext, name)(3, 4, dtype=torch.float64, backend=backend, **kwargs)
    theirs = getattr(torch.nn, name)(3, 4, dtype=torch.float64, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    x[2, 0, 1] = float("nan")
    grads = []
    for module in (ours, theirs):
        xi = x.clone().requires_grad_()
        out, _ = module(xi)
        out.sum().backward()
        grads.append([xi.grad] + [p.grad for p in module.parameters()])
        module.zero_grad()
    for a, b in zip(*grads):
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(a.nan_to_num(), b.nan_to_num(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("name,kwargs", [
    ("RNN", {}), ("LSTM", {"num_layers": 2, "bidirectional": True, "batch_first": True}), ("LSTM", {"proj_size": 3}),
    ("GRU", {"num_layers": 2}),
])
def test_meta_device_like_torch_nn(name, kwargs, backend):
    ours = getattr(tbptt_ext, name)(4, 5, device="meta", backend=backend, **kwargs)
    theirs = getattr(torch.nn, name)(4, 5, device="meta", **kwargs)
    x = torch.randn(6, 3, 4, device="meta")
    (a, a_state), (b, b_state) = ours(x), theirs(x)
    a_state, b_state = (a_state, b_state) if name == "LSTM" else ((a_state,), (b_state,))
    for u, v in zip((a, *a_state), (b, *b_state)):
        assert u.device.type == "meta" and u.shape == v.shape and u.dtype == v.dtype


# Second-order gradients: a gradient penalty (the input gradient taken with
# create_graph=True, then trained on) must give torch.nn's parameter gradients; the
# fused backward alone is not differentiable, so this checks the recomputed path.
SECOND_ORDER = [
    ("RNN", {"nonlinearity": "relu"}), ("RNN", {"bidirectional": True}), ("LSTM", {"num_layers": 2}),
    ("LSTM", {"proj_size": 2, "bidirectional": True}), ("GRU", {}), ("GRU", {"bias": False}),
]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("name,kwargs", SECOND_ORDER)
def test_gradient_penalty_like_torch_nn(name, kwargs, backend):
    torch.manual_seed(0)
    ours = getattr(tbptt_ext, name)(2, 3, dtype=torch.float64, backend=backend, **kwargs)
    theirs = getattr(torch.nn, name)(2, 3, dtype=torch.float64, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 2, dtype=torch.float64, requires_grad=True)
    grads = []
    for module in (ours, theirs):
        out, _ = module(x)
        (grad_x,) = torch.autograd.grad((out * out.detach()).sum(), x, create_graph=True)
        assert grad_x.requires_grad
        penalty = (grad_x.norm() - 1) ** 2
        grads.append(torch.autograd.grad(out.sum() + penalty, [x, *module.parameters()]))
    for i, (a, b) in enumerate(zip(*grads)):
        assert_close(a, b, torch.float64, f"gradient {i}")
        assert a.abs().sum() > 0


@pytest.mark.parametrize("name", MODULES)
def test_gradgradcheck_with_reset(name):
    torch.manual_seed(1)
    module = getattr(tbptt_ext, name)(2, 3, dtype=torch.float64)
    names = [n for n, _ in module.named_parameters()]
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    reset = torch.tensor([[False, False], [True, False], [False, False], [False, True]])

    def run(x, *params):
        out, state = torch.func.functional_call(module, dict(zip(names, params)), (x,), {"reset": reset})
        return out, *(state if name == "LSTM" else (state,))

    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    assert torch.autograd.gradgradcheck(run, (x, *params))


@requires_fused_cpu
@pytest.mark.parametrize("name", ["RNN", "LSTM"])
def test_bias_gradients_are_separate_tensors(name):
    # RNN and LSTM compute one sum for both biases; each must get its own tensor, so
    # that changing one in place leaves the other alone (as with torch.nn)
    module = getattr(tbptt_ext, name)(3, 4)
    out, _ = module(torch.randn(5, 2, 3))
    grad_ih, grad_hh = torch.autograd.grad(out.sum(), [module.bias_ih_l0, module.bias_hh_l0])
    assert torch.equal(grad_ih, grad_hh)
    grad_ih.mul_(2)
    assert torch.equal(grad_ih, 2 * grad_hh)


# torch.autocast: the CPU kernels have float32 and float64 only, so under CPU autocast the
# modules run in float32 (input, state and parameters cast; autocast off inside, also in a
# backward called inside the region). The truth is the same module without autocast on the
# same (float32-cast) input. Before, the ops' internal GEMMs were cast to bfloat16 and the
# kernels read them as float32: wrong values, or a segfault.
AUTOCAST = [("RNN", {}), ("LSTM", {"num_layers": 2, "bidirectional": True}), ("LSTM", {"proj_size": 3}),
            ("GRU", {"batch_first": True})]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,kwargs", AUTOCAST)
def test_cpu_autocast_runs_float32(name, kwargs, input_dtype, backend):
    torch.manual_seed(0)
    module = getattr(tbptt_ext, name)(8, 16, backend=backend, **kwargs)
    x = torch.randn(30, 4, 8).to(input_dtype).requires_grad_()
    results = []
    for autocast in (True, False):
        module.zero_grad()
        xi = x if autocast else x.detach().float().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, state = module(xi)
            h = state[0] if isinstance(state, tuple) else state
            loss = out.square().sum() + h.sum()
            loss.backward()
        assert out.dtype == h.dtype == torch.float32
        results.append([out, h, xi.grad, *(p.grad for p in module.parameters())])
    assert results[0][2].dtype == input_dtype  # the input's gradient in the input's dtype
    for i, (a, b) in enumerate(zip(*results)):
        assert_close(a.float(), b.to(a.dtype).float(), torch.float32, f"result {i}")


@requires_fused_cpu
def test_ops_compute_in_their_inputs_dtype_under_autocast():
    torch.manual_seed(0)
    T, B, I, H = 40, 8, 16, 32
    args = (torch.randn(T, B, I), torch.randn(4 * H, I) / 4, torch.randn(4 * H, H) / 6, torch.randn(4 * H),
            torch.randn(4 * H), torch.randn(B, H), torch.randn(B, H), None, False)
    plain = torch.ops.tbptt_ext.lstm_chunk_forward(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = torch.ops.tbptt_ext.lstm_chunk_forward(*args)
    for a, b in zip(plain, cast):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_gradients_when_only_some_outputs_are_used(name):
    # outputs without a gradient reach the backward as None (the Functions do not
    # materialize a zero [T, B, 5H] for the saved activations): the same grads as torch.nn
    torch.manual_seed(0)
    ours = getattr(tbptt_ext, name)(3, 4, num_layers=2, dtype=torch.float64)
    theirs = getattr(torch.nn, name)(3, 4, num_layers=2, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    pick = [lambda out, state: out.sin().sum(),
            lambda out, state: (state[0] if isinstance(state, tuple) else state).sin().sum()]
    if name == "LSTM":
        pick.append(lambda out, state: state[1].sin().sum())
    for loss in pick:
        grads = [torch.autograd.grad(loss(*m(x)), list(m.parameters()), allow_unused=True) for m in (ours, theirs)]
        for a, b in zip(*grads):
            assert (a is None) == (b is None)
            if a is not None:
                assert_close(a, b, torch.float64, name)
