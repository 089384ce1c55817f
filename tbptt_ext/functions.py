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
``jacrev`` and ``functional_call`` work over the modules, as over torch.nn's, and on the
public Functions. Those transforms always differentiate with a graph (to compose), so
under them the backward takes the recomputing path above. Forward-mode AD
(``torch.func.jvp``, ``torch.autograd.forward_ad``) runs the reference forward's JVP,
through the modules only (torch.compile cannot trace a Function that has a jvp: see
_variant). Under ``vmap`` (so ``jacfwd``, ``hessian``) the modules run the reference
forward as plain ops instead of a Function (chunk_function); torch.nn's RNNs have no
vmap batching rule. LSTM and GRU save an activation buffer that setup_context can only
see as an output: ``_LSTMChunk`` and ``_GRUChunk`` return it (not differentiable), and
the public ``LSTMChunk``/``GRUChunk`` drop it.
"""

from __future__ import annotations

import inspect

import torch
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
from torch.autograd import forward_ad

from . import ops, reference


def _impl(fused: bool):
    return ops if fused else reference


def _without_autocast(device_type: str, fn, *args):
    """fn(*args) with torch.autocast off for `device_type`: the Functions compute in their
    inputs' dtype, so autocast must not cast the reference's torch ops (the compiled ops
    guard their own ATen calls). Autocast is also on in a backward called inside an
    autocast region. (A context manager on every call cost ~7 us.)"""
    if torch._C._is_any_autocast_enabled():
        with torch.autocast(device_type, enabled=False):
            return fn(*args)
    return fn(*args)


def _parameters(forward) -> tuple[int, tuple]:
    """forward's number of parameters and the defaults of its optional ones (read once per
    Function, at import, for _with_defaults)."""
    parameters = inspect.signature(forward).parameters.values()
    return len(parameters), tuple(p.default for p in parameters if p.default is not inspect.Parameter.empty)


def _with_defaults(inputs: tuple, parameters: tuple[int, tuple]) -> tuple:
    """setup_context's inputs, with forward's defaults (`parameters`: see _parameters) for
    the optional arguments the call left out: Function.apply fills them in eager mode,
    torch.compile does not."""
    count, defaults = parameters
    missing = count - len(inputs)
    return inputs if missing <= 0 else (*inputs, *defaults[len(defaults) - missing:])


def _partial(reference_forward, args: tuple, wanted: list[int], outputs: int):
    """reference_forward as a function of args[i] for i in `wanted` (the others fixed),
    returning its first `outputs` outputs: what the backward's vjp and the jvp differentiate."""

    def forward(*chosen):
        full = list(args)
        for i, t in zip(wanted, chosen):
            full[i] = t
        return tuple(reference_forward(*full)[:outputs])

    return forward


def _zeros_for_none(*pairs):
    """Each (grad, like): grad, or zeros like `like` where the output got no gradient."""
    return tuple(torch.zeros_like(like) if grad is None else grad for grad, like in pairs)


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
    return _without_autocast(ctx.device_type, _backward_in_dtype, ctx, fused_backward, reference_forward, inputs, grads)


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

    forward = _partial(reference_forward, inputs, wanted, len(grads))
    # torch.func.vjp rather than autograd.grad: under torch.func transforms the saved
    # inputs need not require grad at this level, and vjp composes with whatever level
    # (or create_graph) differentiates this backward in turn.
    _, vjp_fn = torch.func.vjp(forward, *(inputs[i] for i in wanted))
    for i, g in zip(wanted, vjp_fn(tuple(grads))):
        result[i] = g
    return tuple(result)


def _jvp(ctx, reference_forward, tangents, outputs: int, differentiable: int):
    """Forward-mode AD (torch.func.jvp, torch.autograd.forward_ad): the reference forward's
    JVP from the saved primal inputs (`jvp_inputs`). `tangents` are theirs (None where there
    is none: reset); the first `differentiable` of the `outputs` get tangents."""
    return _without_autocast(ctx.device_type, _jvp_in_dtype, ctx.saved_tensors, reference_forward, tangents, outputs,
                             differentiable)


def _jvp_in_dtype(primals, reference_forward, tangents, outputs: int, differentiable: int):
    wanted = [i for i, (p, t) in enumerate(zip(primals, tangents)) if p is not None and t is not None]
    if not wanted:
        return (None,) * outputs

    forward = _partial(reference_forward, primals, wanted, differentiable)
    inputs, directions = tuple(primals[i] for i in wanted), tuple(tangents[i] for i in wanted)
    if torch._C._are_functorch_transforms_active():  # torch.func.jvp: nests
        _, out = torch.func.jvp(forward, inputs, directions)
    else:  # torch.autograd.forward_ad does not nest: duals at its level (jvp runs with forward grads off)
        with forward_ad._set_fwd_grad_enabled(True):
            primal = [forward_ad.unpack_dual(p).primal for p in inputs]  # (saved with its tangent)
            duals = [forward_ad.make_dual(p, t) for p, t in zip(primal, directions)]
            out = tuple(forward_ad.unpack_dual(o).tangent for o in forward(*duals))
    return (*out, *(None,) * (outputs - differentiable))


class RNNChunk(torch.autograd.Function):
    """(input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse, relu, fused, flow) -> (output [T,B,H], h_n [B,H])."""

    @staticmethod
    def forward(input, w_ih, w_hh, b_ih, b_hh, h0, reset=None, reverse=False, relu=False, fused=True, flow=None):
        return _without_autocast(input.device.type, _impl(fused).rnn_chunk_forward, input, w_ih, w_hh, b_ih, b_hh,
                                 h0, reset, reverse, relu)

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse, relu, fused, flow = _with_defaults(
            inputs, _RNN_PARAMETERS)
        ctx.save_for_backward(input, outputs[0], w_ih, w_hh, b_ih, b_hh, h0, reset)
        ctx.reverse, ctx.relu, ctx.fused, ctx.flow = reverse, relu, fused, flow
        ctx.device_type = input.device.type

    jvp_inputs = (0, 1, 2, 3, 4, 5, 6)  # what forward_jvp needs saved: input .. h0, reset

    @staticmethod
    def forward_jvp(ctx, *tangents):
        return _jvp(ctx, lambda *a: reference.rnn_chunk_forward(*a, ctx.reverse, ctx.relu), (*tangents[:6], None), 2, 2)

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
        return _without_autocast(input.device.type, _impl(fused).lstm_chunk_forward, input, w_ih, w_hh, b_ih, b_hh,
                                 h0, c0, reset, reverse, w_hr)

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, w_ih, w_hh, b_ih, b_hh, h0, c0, reset, reverse, fused, flow, w_hr = _with_defaults(
            inputs, _LSTM_PARAMETERS)
        output, saved = outputs[0], outputs[3]
        ctx.mark_non_differentiable(saved)
        ctx.set_materialize_grads(False)  # (else backward gets a zero-filled [T, B, 5H] for saved)
        ctx.save_for_backward(input, output, saved, w_ih, w_hh, b_ih, b_hh, h0, c0, reset, w_hr)
        ctx.reverse, ctx.fused, ctx.flow = reverse, fused, flow
        ctx.device_type = input.device.type

    jvp_inputs = (0, 1, 2, 3, 4, 5, 6, 11, 7)  # what forward_jvp needs saved: input .. c0, w_hr, reset

    @staticmethod
    def forward_jvp(ctx, *tangents):
        def forward(input, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, reset):
            return reference.lstm_chunk_forward(input, w_ih, w_hh, b_ih, b_hh, h0, c0, reset, ctx.reverse, w_hr)

        return _jvp(ctx, forward, (*tangents[:7], tangents[11], None), 4, 3)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_saved):
        input, output, saved, w_ih, w_hh, b_ih, b_hh, h0, c0, reset, w_hr = ctx.saved_tensors
        grad_output, grad_h_n, grad_c_n = _zeros_for_none((grad_output, output), (grad_h_n, h0), (grad_c_n, c0))

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
        return _without_autocast(input.device.type, _impl(fused).gru_chunk_forward, input, w_ih, w_hh, b_ih, b_hh,
                                 h0, reset, reverse)

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse, fused, flow = _with_defaults(
            inputs, _GRU_PARAMETERS)
        output, saved = outputs[0], outputs[2]
        ctx.mark_non_differentiable(saved)
        ctx.set_materialize_grads(False)  # (else backward gets a zero-filled [T, B, 4H] for saved)
        ctx.save_for_backward(input, output, saved, w_ih, w_hh, b_ih, b_hh, h0, reset)
        ctx.reverse, ctx.fused, ctx.flow = reverse, fused, flow
        ctx.device_type = input.device.type

    jvp_inputs = (0, 1, 2, 3, 4, 5, 6)  # what forward_jvp needs saved: input .. h0, reset

    @staticmethod
    def forward_jvp(ctx, *tangents):
        return _jvp(ctx, lambda *a: reference.gru_chunk_forward(*a, ctx.reverse), (*tangents[:6], None), 3, 2)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, _grad_saved):
        input, output, saved, w_ih, w_hh, b_ih, b_hh, h0, reset = ctx.saved_tensors
        grad_output, grad_h_n = _zeros_for_none((grad_output, output), (grad_h_n, h0))

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


_RNN_PARAMETERS, _LSTM_PARAMETERS, _GRU_PARAMETERS = (_parameters(f.forward) for f in (RNNChunk, _LSTMChunk, _GRUChunk))


def _variant(function: type[torch.autograd.Function], combined: bool, jvp: bool) -> type[torch.autograd.Function]:
    """`function` as the modules apply it, named as the public Function (the profiler and
    grad_fn show LSTMChunk, LSTMChunkBackward).

    combined: forward takes ctx (and runs setup_context itself). Function.apply binds a
    setup_context Function's arguments to forward's signature with inspect on every call,
    ~16 us, a tenth of a small chunk's forward op; torch.func transforms need the
    setup_context form. All arguments must be passed, by position.
    jvp: with forward-mode AD (`forward_jvp` as `jvp`). torch.compile does not trace a
    Function that has a jvp, so only forward-mode AD gets it."""
    def setup_context(ctx, inputs, outputs):
        function.setup_context(ctx, inputs, outputs)
        if jvp:  # (only where a jvp may run: each step of setup costs a call a microsecond)
            ctx.save_for_forward(*(inputs[i] for i in function.jvp_inputs))

    attrs = {"backward": function.backward, "__doc__": function.__doc__, "__module__": __name__}
    if combined:
        def forward(ctx, *args):
            outputs = function.forward(*args)
            setup_context(ctx, args, outputs)
            return outputs

        attrs["forward"] = staticmethod(forward)
    else:
        attrs["forward"], attrs["setup_context"] = staticmethod(function.forward), staticmethod(setup_context)
    if jvp:
        attrs["jvp"] = staticmethod(function.forward_jvp)
    return type(function.__name__.lstrip("_"), (torch.autograd.Function,), attrs)


_CELLS = (("RNN", RNNChunk), ("LSTM", _LSTMChunk), ("GRU", _GRUChunk))

# per cell: (under torch.func transforms, under torch.autograd.forward_ad, otherwise)
_FORMS = {cell: (_variant(function, False, True), _variant(function, True, True), _variant(function, True, False))
          for cell, function in _CELLS}


class _Traced:
    """Under vmap (and so jacfwd, hessian): `function`'s forward with fused=False called
    directly, the reference forward's plain PyTorch ops, which vmap and every other
    transform see through, in place of the Function (a Function would need a batching
    rule for the compiled ops). Same arguments and outputs as the Function's apply; no
    gradient-flow record (`flow` is not called)."""

    def __init__(self, function: type[torch.autograd.Function]):
        self.forward = function.forward
        self.fused = list(inspect.signature(function.forward).parameters).index("fused")

    def apply(self, *args):
        args = list(args)
        args[self.fused] = False
        return self.forward(*args)


_TRACED = {cell: _Traced(function) for cell, function in _CELLS}


def _under_vmap() -> bool:
    return any(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())


def chunk_function(cell: str) -> type[torch.autograd.Function]:
    """The Function the modules apply for `cell` ("RNN", "LSTM", "GRU"): the same forward,
    setup and backward as RNNChunk, _LSTMChunk or _GRUChunk, in the setup_context form with
    a jvp under a torch.func transform, in the combined form with a jvp inside a
    torch.autograd.forward_ad dual level, else in the combined form without (the fastest
    to apply, and traceable by torch.compile). Under vmap: the reference forward as plain
    ops (_Traced), not a Function."""
    if torch._C._are_functorch_transforms_active():
        return _TRACED[cell] if _under_vmap() else _FORMS[cell][0]
    return _FORMS[cell][1 if forward_ad._current_level >= 0 else 2]
