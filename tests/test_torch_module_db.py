"""PyTorch's own module test samples (torch.testing._internal.common_modules.module_db,
the RNN, GRU and LSTM entries, proj_size > 0 included) run through tbptt_ext's module
and torch.nn's with the same weights: outputs, states and every gradient agree."""

import copy

import pytest
import torch

import tbptt_ext
from conftest import assert_close, requires_fused_cpu

pytest.importorskip("expecttest")  # torch's testing internals need it (the test command installs it)
from torch.testing._internal.common_modules import module_db  # noqa: E402

SAMPLES = []
for info in module_db:
    if info.module_cls in (torch.nn.RNN, torch.nn.GRU, torch.nn.LSTM):
        for training in (True, False):
            inputs = info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True,
                                             training=training)
            SAMPLES += [(info.module_cls, training, i, sample) for i, sample in enumerate(inputs)]


def leaves(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in leaves(v)]
    return []


@requires_fused_cpu
@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("cls,training,index,sample", SAMPLES,
                         ids=[f"{c.__name__}-{'train' if t else 'eval'}-{i}" for c, t, i, _ in SAMPLES])
def test_module_db_sample_matches_torch_nn(cls, training, index, sample, backend):
    ctor = sample.constructor_input
    theirs = cls(*ctor.args, **ctor.kwargs).to(torch.float64).train(training)
    ours = getattr(tbptt_ext, cls.__name__)(*ctor.args, **ctor.kwargs, backend=backend).to(torch.float64)
    ours.train(training).load_state_dict(theirs.state_dict())
    args_a = copy.deepcopy(sample.forward_input.args)
    args_b = copy.deepcopy(sample.forward_input.args)
    out_a, out_b = ours(*args_a), theirs(*args_b)
    flat_a, flat_b = leaves(out_a), leaves(out_b)
    assert [t.shape for t in flat_a] == [t.shape for t in flat_b]
    for a, b in zip(flat_a, flat_b):
        assert_close(a, b, torch.float64, "output")
    g = torch.Generator().manual_seed(index)
    weights = [torch.randn(t.shape, dtype=t.dtype, generator=g) for t in flat_b]
    inputs_a = [t for t in leaves(args_a) if t.requires_grad] + list(ours.parameters())
    inputs_b = [t for t in leaves(args_b) if t.requires_grad] + list(theirs.parameters())
    grads_a = torch.autograd.grad(sum((t * w).sum() for t, w in zip(flat_a, weights)), inputs_a)
    grads_b = torch.autograd.grad(sum((t * w).sum() for t, w in zip(flat_b, weights)), inputs_b)
    for a, b in zip(grads_a, grads_b):
        assert_close(a, b, torch.float64, "gradient")
