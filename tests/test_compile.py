"""torch.compile(fullgraph=True) of each module, forward and backward."""

import pytest
import torch

import tbptt_ext
from conftest import requires_fused_cpu


@requires_fused_cpu
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_compile_fullgraph_forward_backward(name):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = getattr(tbptt_ext, name)(4, 6, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4, requires_grad=True)

    def step(inp):
        out, state = model(inp)
        first = state[0] if isinstance(state, tuple) else state
        return out.square().sum() + first.sum()

    eager_loss = step(x)
    eager_grads = torch.autograd.grad(eager_loss, [x, *model.parameters()])
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    grads = torch.autograd.grad(loss, [x, *model.parameters()])
    torch.testing.assert_close(loss, eager_loss)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


@requires_fused_cpu
def test_compile_with_inductor():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = tbptt_ext.LSTM(4, 6)
    x = torch.randn(5, 3, 4)

    def step(inp):
        out, (h, c) = model(inp)
        return out.square().sum() + h.sum() + c.sum()

    loss = torch.compile(step, fullgraph=True)(x)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    eager = step(x)
    eager.backward()
    torch.testing.assert_close(loss, eager)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad)


@requires_fused_cpu
def test_public_functions_with_default_arguments_compile():
    # under torch.compile setup_context sees only the arguments passed, not the defaults
    torch._dynamo.reset()
    torch.manual_seed(0)
    T, B, I, H = 4, 2, 3, 5
    x, h0 = torch.randn(T, B, I, requires_grad=True), torch.randn(B, H)
    calls = {
        "RNN": lambda w: tbptt_ext.RNNChunk.apply(x, *w, h0)[0].sum(),
        "GRU": lambda w: tbptt_ext.GRUChunk.apply(x, *w, h0)[0].sum(),
        "LSTM": lambda w: tbptt_ext.LSTMChunk.apply(x, *w, h0, torch.zeros_like(h0))[0].sum(),
    }
    for gates, (cell, call) in zip((1, 3, 4), calls.items()):
        w = [torch.randn(gates * H, I, requires_grad=True), torch.randn(gates * H, H), torch.randn(gates * H),
             torch.randn(gates * H)]
        eager = call(w)
        compiled = torch.compile(call, fullgraph=True, backend="aot_eager")(w)
        torch.testing.assert_close(compiled, eager, msg=cell)
        grads = torch.autograd.grad(compiled, [x, w[0]])
        for a, b in zip(grads, torch.autograd.grad(eager, [x, w[0]])):
            torch.testing.assert_close(a, b, msg=cell)
