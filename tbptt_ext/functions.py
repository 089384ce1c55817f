"""One autograd.Function per cell over a whole chunk of one layer and direction.

Each calls the chunk forward op once and, in backward, the chunk backward op once:
:mod:`tbptt_ext.ops` when ``fused`` is True, :mod:`tbptt_ext.reference` otherwise
(the same functions). The op does the input projection and the weight gradients
itself, so autograd sees one node per layer and direction.

Arguments: ``input [T, B, I]``, the layer's torch.nn parameters (biases may be None),
the entering state ``h0`` (and ``c0``) ``[B, H]``, then ``reset`` ([T, B] bool or
None), ``reverse``, ``fused`` and ``flow`` (None, or a callable that receives the
per-step gradient norms ``[T]`` of each backward: see tbptt_ext.diagnostics).

Second-order gradients (``create_graph=True``: gradient penalties, Hessian-vector
products) work as with torch.nn on the CPU: the backward then recomputes the chunk with
the plain-PyTorch reference forward under autograd and differentiates that, so the
gradients it returns have a graph of their own. That costs a second forward at the
reference's speed; a first-order backward always runs the one backward op.

The Functions are written in the ``setup_context`` form, so ``torch.func.grad``, ``vjp``,
``jacrev`` and ``functional_call`` work over the modules, as over torch.nn's. Those
transforms always differentiate with a graph (to compose), so under them the backward
takes the recomputing path above. ``vmap`` and forward-mode AD (``jvp``, ``jacfwd``) are
not supported (torch.nn's CPU LSTM supports neither). LSTM and GRU save an activation
buffer that setup_context can only see as an output: ``_LSTMChunk`` and ``_GRUChunk``
return it (not differentiable), and the public ``LSTMChunk``/``GRUChunk`` drop it.
"""

from __future__ import annotations

import contextlib

import torch

from . import ops, reference


def _impl(fused: bool):
    return ops if fused else reference


def _no_autocast(device_type: str):
    """The Functions compute in their inputs' dtype: torch.autocast must not cast the
    reference's torch ops (the compiled ops guard their own ATen calls). Autocast is also
    on in a backward called inside an autocast region."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _bias_grads(ctx, first: int, grad_b_ih, grad_b_hh):
    """The two biases' gradients. Where a cell has one sum for both (RNN, LSTM) the second
    is a copy, so that changing one in place (a hook, autograd.grad's result) leaves the
    other alone, as with torch.nn."""
    wanted = ctx.needs_input_grad[first], ctx.needs_input_grad[first + 1]
    if grad_b_hh is grad_b_ih and all(wanted):
        grad_b_hh = grad_b_ih.clone()
    return (grad_b_ih if wanted[0] else None, grad_b_hh if wanted[1] else None)


def _report(flow, norms):
    if flow is not None:
        flow(norms)


def _backward(ctx, fused_backward, reference_forward, inputs, grads):
    """The Function's gradients. Usually one call of the chunk backward op. Under
    create_graph=True (grad mode on inside backward) the gradients must have a graph of
    their own: they come from the reference forward, recomputed under autograd from the
    saved inputs and differentiated (the flow record still comes from the backward op).
    `inputs` are the differentiable inputs in apply's order, `grads` the outputs' grads."""
    with _no_autocast(ctx.device_type):
        return _backward_in_dtype(ctx, fused_backward, reference_forward, inputs, grads)


def _backward_in_dtype(ctx, fused_backward, reference_forward, inputs, grads):
    if not torch.is_grad_enabled():
        return fused_backward(*grads)
    if ctx.flow is not None:
        with torch.no_grad():
            fused_backward(*(g.detach() for g in grads))
    wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
    result = [None] * len(ctx.needs_input_grad)
    if not wanted:
        return tuple(result)

    def forward(*differentiable):
        args = list(inputs)
        for i, t in zip(wanted, differentiable):
            args[i] = t
        return tuple(reference_forward(*args)[: len(grads)])

    # torch.func.vjp rather than autograd.grad: under torch.func transforms the saved
    # inputs need not require grad at this level, and vjp composes with whatever level
    # (or create_graph) differentiates this backward in turn.
    _, vjp_fn = torch.func.vjp(forward, *(inputs[i] for i in wanted))
    for i, g in zip(wanted, vjp_fn(tuple(grads))):
        result[i] = g
    return tuple(result)


class RNNChunk(torch.autograd.Function):
    """(input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse, relu, fused, flow) -> (output [T,B,H], h_n [B,H])."""

    @staticmethod
    def forward(input, w_ih, w_hh, b_ih, b_hh, h0, reset=None, reverse=False, relu=False, fused=True, flow=None):
        with _no_autocast(input.device.type):
            return _impl(fused).rnn_chunk_forward(input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse, relu)

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse, relu, fused, flow = inputs
        ctx.save_for_backward(input, outputs[0], w_ih, w_hh, b_ih, b_hh, h0, reset)
        ctx.reverse, ctx.relu, ctx.fused, ctx.flow = reverse, relu, fused, flow
        ctx.device_type = input.device.type

    @staticmethod
    def backward(ctx, grad_output, grad_h_n):
        input, output, w_ih, w_hh, b_ih, b_hh, h0, reset = ctx.saved_tensors

        def fused_backward(grad_output, grad_h_n):
            grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_bias, norms = _impl(ctx.fused).rnn_chunk_backward(
                grad_output, grad_h_n, input, output, w_ih, w_hh, h0, reset, ctx.reverse, ctx.relu,
                ctx.needs_input_grad[0], ctx.flow is not None,
            )
            _report(ctx.flow, norms)
            return (grad_input if ctx.needs_input_grad[0] else None, grad_w_ih, grad_w_hh,
                    *_bias_grads(ctx, 3, grad_bias, grad_bias), grad_h0, None, None, None, None, None)

        return _backward(ctx, fused_backward,
                         lambda *a: reference.rnn_chunk_forward(*a, reset, ctx.reverse, ctx.relu),
                         (input, w_ih, w_hh, b_ih, b_hh, h0), (grad_output, grad_h_n))


class _LSTMChunk(torch.autograd.Function):
    """LSTMChunk with the saved activations [T, B, 5H] (6H with w_hr) as a fourth output."""

    @staticmethod
    def forward(input, w_ih, w_hh, b_ih, b_hh, h0, c0, reset=None, reverse=False, fused=True, flow=None, w_hr=None):
        with _no_autocast(input.device.type):
            return _impl(fused).lstm_chunk_forward(input, w_ih, w_hh, b_ih, b_hh, h0, c0, reset, reverse, w_hr)

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, w_ih, w_hh, b_ih, b_hh, h0, c0, reset, reverse, fused, flow, w_hr = inputs
        output, saved = outputs[0], outputs[3]
        ctx.mark_non_differentiable(saved)
        ctx.save_for_backward(input, output, saved, w_ih, w_hh, b_ih, b_hh, h0, c0, reset, w_hr)
        ctx.reverse, ctx.fused, ctx.flow = reverse, fused, flow
        ctx.device_type = input.device.type

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_saved):
        input, output, saved, w_ih, w_hh, b_ih, b_hh, h0, c0, reset, w_hr = ctx.saved_tensors

        def fused_backward(grad_output, grad_h_n, grad_c_n):
            (grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, norms,
             grad_w_hr) = _impl(ctx.fused).lstm_chunk_backward(
                grad_output, grad_h_n, grad_c_n, input, output, saved, w_ih, w_hh, h0, c0, reset, ctx.reverse,
                ctx.needs_input_grad[0], ctx.flow is not None, w_hr,
            )
            _report(ctx.flow, norms)
            return (grad_input if ctx.needs_input_grad[0] else None, grad_w_ih, grad_w_hh,
                    *_bias_grads(ctx, 3, grad_bias, grad_bias), grad_h0, grad_c0, None, None, None, None,
                    grad_w_hr if w_hr is not None else None)

        def reference_forward(input, w_ih, w_hh, b_ih, b_hh, h0, c0, _reset, _reverse, _fused, _flow, w_hr):
            return reference.lstm_chunk_forward(input, w_ih, w_hh, b_ih, b_hh, h0, c0, reset, ctx.reverse, w_hr)

        # in apply's order: w_hr is its last argument, after reset, reverse, fused and flow
        inputs = (input, w_ih, w_hh, b_ih, b_hh, h0, c0, None, None, None, None, w_hr)
        return _backward(ctx, fused_backward, reference_forward, inputs, (grad_output, grad_h_n, grad_c_n))


class LSTMChunk(_LSTMChunk):
    """(input, w_ih, w_hh, b_ih, b_hh, h0, c0, reset, reverse, fused, flow, w_hr) -> (output [T,B,P], h_n [B,P],
    c_n [B,H]); w_hr [P, H] or None (P = H) is torch.nn's projection (proj_size)."""

    @classmethod
    def apply(cls, *args, **kwargs):
        return _LSTMChunk.apply(*args, **kwargs)[:3]


class _GRUChunk(torch.autograd.Function):
    """GRUChunk with the saved activations [T, B, 4H] as a third output."""

    @staticmethod
    def forward(input, w_ih, w_hh, b_ih, b_hh, h0, reset=None, reverse=False, fused=True, flow=None):
        with _no_autocast(input.device.type):
            return _impl(fused).gru_chunk_forward(input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse)

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse, fused, flow = inputs
        output, saved = outputs[0], outputs[2]
        ctx.mark_non_differentiable(saved)
        ctx.save_for_backward(input, output, saved, w_ih, w_hh, b_ih, b_hh, h0, reset)
        ctx.reverse, ctx.fused, ctx.flow = reverse, fused, flow
        ctx.device_type = input.device.type

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, _grad_saved):
        input, output, saved, w_ih, w_hh, b_ih, b_hh, h0, reset = ctx.saved_tensors

        def fused_backward(grad_output, grad_h_n):
            (grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh,
             norms) = _impl(ctx.fused).gru_chunk_backward(
                grad_output, grad_h_n, input, output, saved, w_ih, w_hh, h0, reset, ctx.reverse,
                ctx.needs_input_grad[0], ctx.flow is not None,
            )
            _report(ctx.flow, norms)
            return (grad_input if ctx.needs_input_grad[0] else None, grad_w_ih, grad_w_hh,
                    *_bias_grads(ctx, 3, grad_b_ih, grad_b_hh), grad_h0, None, None, None, None)

        return _backward(ctx, fused_backward,
                         lambda *a: reference.gru_chunk_forward(*a, reset, ctx.reverse),
                         (input, w_ih, w_hh, b_ih, b_hh, h0), (grad_output, grad_h_n))


class GRUChunk(_GRUChunk):
    """(input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse, fused, flow) -> (output [T,B,H], h_n [B,H])."""

    @classmethod
    def apply(cls, *args, **kwargs):
        return _GRUChunk.apply(*args, **kwargs)[:2]



def _combined_form(function: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """`function` in the combined form (forward takes ctx), for the modules outside torch.func
    transforms: Function.apply binds a setup_context Function's arguments to forward's
    signature with inspect on every call, ~16 us, a tenth of a small chunk's forward op.
    All arguments must be passed, by position. Named as the public Function (the profiler
    and grad_fn show LSTMChunk, LSTMChunkBackward)."""

    def forward(ctx, *args):
        outputs = function.forward(*args)
        function.setup_context(ctx, args, outputs)
        return outputs

    name = function.__name__.lstrip("_")
    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward), "backward": function.backward,
                                                   "__doc__": function.__doc__, "__module__": __name__})


_FORMS = {cell: (function, _combined_form(function))
          for cell, function in (("RNN", RNNChunk), ("LSTM", _LSTMChunk), ("GRU", _GRUChunk))}


def chunk_function(cell: str) -> type[torch.autograd.Function]:
    """The Function the modules apply for `cell` ("RNN", "LSTM", "GRU"): RNNChunk, _LSTMChunk
    or _GRUChunk under a torch.func transform, else its combined form (the same forward,
    setup and backward, without the binding)."""
    return _FORMS[cell][1 - torch._C._are_functorch_transforms_active()]
