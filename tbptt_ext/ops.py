"""The tbptt_ext operators: availability, typed wrappers and fake kernels.

The op schemas (and the shape and meaning of every argument) are declared once, in
csrc/register.cpp; the compiled kernels live in the extension ``tbptt_ext._C``. This
module is the one place Python reaches them: ``compiled_backends`` and
``has_fused_kernel`` say what is compiled, one typed wrapper per op calls it, and one
fake (meta) kernel per op lets ``torch.compile`` and ``torch.library.opcheck`` trace
it. :mod:`tbptt_ext.reference` has functions of the same names and signatures in
plain PyTorch. When the compiled extension is missing, ``compiled_backends()`` is
empty and the modules run the reference.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

# A cap on the CPU kernels' instruction set (read once by the extension when it first
# runs); a misspelt value would otherwise silently mean no cap.
_ISA_CAP = os.environ.get("TBPTT_EXT_CPU_ISA", "")
if _ISA_CAP not in ("", "baseline", "avx2", "avx512"):
    raise ValueError(
        f"TBPTT_EXT_CPU_ISA must be one of baseline, avx2 or avx512 (the most capable instruction set the CPU "
        f"kernels may use), got {_ISA_CAP!r}; unset it to use the best the machine has"
    )

try:
    from . import _C  # noqa: F401  (importing the library registers the ops)

    EXTENSION_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - exercised by builds without a compiler
    EXTENSION_ERROR = exc

CELLS = ("rnn", "lstm", "gru")
OP_NAMES = tuple(f"{cell}_chunk_{direction}" for cell in CELLS for direction in ("forward", "backward"))

# dtypes each compiled backend implements; other dtypes run the reference.
FUSED_DTYPES = {
    "cpu": frozenset({torch.float32, torch.float64}),
    "cuda": frozenset({torch.float32, torch.float64, torch.bfloat16, torch.float16}),
}


def _has_kernel(dispatch_key: str) -> bool:
    return EXTENSION_ERROR is None and all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"tbptt_ext::{name}", dispatch_key) for name in OP_NAMES
    )


_COMPILED_BACKENDS = frozenset(device for device, key in (("cpu", "CPU"), ("cuda", "CUDA")) if _has_kernel(key))


def compiled_backends() -> set[str]:
    """Device types that have compiled fused kernels, e.g. ``{"cpu"}`` or ``{"cpu", "cuda"}``."""
    return set(_COMPILED_BACKENDS)


def has_fused_kernel(device_type: str, dtype: torch.dtype) -> bool:
    """Whether a fused kernel is compiled for this device type and dtype."""
    return device_type in _COMPILED_BACKENDS and dtype in FUSED_DTYPES.get(device_type, ())


def cpu_isa() -> str | None:
    """The instruction set the CPU kernels run with here ("avx512", "avx2" or "baseline"), or
    None without the compiled extension. ``TBPTT_EXT_CPU_ISA`` caps it."""
    return torch.ops.tbptt_ext.cpu_isa() if "cpu" in _COMPILED_BACKENDS else None


# ------------------------------------------------------------ typed wrappers
def rnn_chunk_forward(
    input: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, h0: Tensor,
    reset: Tensor | None = None, reverse: bool = False, relu: bool = False,
) -> tuple[Tensor, Tensor]:
    """-> (output [T, B, H], h_n [B, H])"""
    return torch.ops.tbptt_ext.rnn_chunk_forward(input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse, relu)


def rnn_chunk_backward(
    grad_output: Tensor, grad_h_n: Tensor, input: Tensor, output: Tensor, w_ih: Tensor, w_hh: Tensor, h0: Tensor,
    reset: Tensor | None = None, reverse: bool = False, relu: bool = False, input_needs_grad: bool = True,
    record_flow: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_bias, grad_h_norm)"""
    return torch.ops.tbptt_ext.rnn_chunk_backward(
        grad_output, grad_h_n, input, output, w_ih, w_hh, h0, reset, reverse, relu, input_needs_grad, record_flow
    )


def lstm_chunk_forward(
    input: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, h0: Tensor, c0: Tensor,
    reset: Tensor | None = None, reverse: bool = False, w_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (output [T, B, P], h_n [B, P], c_n [B, H], saved [T, B, 5H] (6H with w_hr)); P = H without w_hr"""
    return torch.ops.tbptt_ext.lstm_chunk_forward(input, w_ih, w_hh, b_ih, b_hh, h0, c0, reset, reverse, w_hr)


def lstm_chunk_backward(
    grad_output: Tensor, grad_h_n: Tensor, grad_c_n: Tensor, input: Tensor, output: Tensor, saved: Tensor,
    w_ih: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, reset: Tensor | None = None, reverse: bool = False,
    input_needs_grad: bool = True, record_flow: bool = False, w_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, grad_h_norm, grad_w_hr)"""
    return torch.ops.tbptt_ext.lstm_chunk_backward(
        grad_output, grad_h_n, grad_c_n, input, output, saved, w_ih, w_hh, h0, c0, reset, reverse,
        input_needs_grad, record_flow, w_hr,
    )


def gru_chunk_forward(
    input: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, h0: Tensor,
    reset: Tensor | None = None, reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> (output [T, B, H], h_n [B, H], saved [T, B, 4H])"""
    return torch.ops.tbptt_ext.gru_chunk_forward(input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse)


def gru_chunk_backward(
    grad_output: Tensor, grad_h_n: Tensor, input: Tensor, output: Tensor, saved: Tensor, w_ih: Tensor,
    w_hh: Tensor, h0: Tensor, reset: Tensor | None = None, reverse: bool = False, input_needs_grad: bool = True,
    record_flow: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_h_norm)"""
    return torch.ops.tbptt_ext.gru_chunk_backward(
        grad_output, grad_h_n, input, output, saved, w_ih, w_hh, h0, reset, reverse, input_needs_grad, record_flow
    )


# -------------------------------------------------------------- fake kernels
# The fake kernels check their arguments as the compiled ops do (csrc/chunk_ops.h,
# check_dims and check_arg): they also run for real tensors whenever one argument is on
# the meta device, and would otherwise return outputs of a wrong shape or on mixed
# devices instead of the error the kernels give.
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
_SAVED_BLOCKS = {"rnn": 0, "lstm": 5, "gru": 4}


def _check_shape(op: str, name: str, t: Tensor, shape, like: Tensor) -> None:
    shape = tuple(shape)
    torch._check(t.dim() == len(shape) and all(a == b for a, b in zip(t.shape, shape)),
                 lambda: f"{op}: {name} must have shape {list(shape)}, got {list(t.shape)}")
    torch._check(t.dtype == like.dtype,
                 lambda: f"{op}: {name} must have dtype {like.dtype} (the dtype of input), got {t.dtype}")
    torch._check(t.device == like.device,
                 lambda: f"{op}: {name} must be on {like.device} (the device of input), got {t.device}")


def _check_args(cell: str, direction: str, input: Tensor, w_ih: Tensor, w_hh: Tensor, h0: Tensor, reset,
                w_hr=None, c0=None, biases=(), backward=()) -> None:
    """backward: (grad_output, output, saved, grad_h_n, grad_c_n or None)."""
    op = f"tbptt_ext::{cell}_chunk_{direction}"
    gates = _GATES[cell]
    torch._check(input.dim() == 3, lambda: f"{op}: input must be [T, B, I], got shape {list(input.shape)}")
    torch._check(input.dtype.is_floating_point, lambda: f"{op}: input must be a floating-point tensor, got {input.dtype}")
    torch._check(h0.dim() == 2, lambda: f"{op}: h0 must be [B, {'P' if w_hr is not None else 'H'}], got shape "
                                        f"{list(h0.shape)}")
    torch._check(w_hh.dim() == 2 and w_hh.shape[0] % gates == 0,
                 lambda: f"{op}: w_hh must be [{gates}H, {'P' if w_hr is not None else 'H'}], got shape "
                         f"{list(w_hh.shape)}")
    T, B, I = input.shape
    H = w_hh.shape[0] // gates
    P = h0.shape[1] if w_hr is not None else H
    _check_shape(op, "h0", h0, (B, P), input)
    _check_shape(op, "w_ih", w_ih, (gates * H, I), input)
    _check_shape(op, "w_hh", w_hh, (gates * H, P), input)
    if w_hr is not None:
        torch._check(w_hr.dim() == 2, lambda: f"{op}: w_hr must be [P, H] (P: the projection size), got shape "
                                              f"{list(w_hr.shape)}")
        torch._check(1 <= P and P < H, lambda: f"{op}: the projection size P (the width of h0) must be at least 1 and "
                                              f"smaller than the hidden size H, got P = {P}, H = {H}")
        _check_shape(op, "w_hr", w_hr, (P, H), input)
    if c0 is not None:
        _check_shape(op, "c0", c0, (B, H), input)
    for name, b in biases:
        if b is not None:
            _check_shape(op, name, b, (gates * H,), input)
    if reset is not None:
        torch._check(reset.dtype in (torch.bool, torch.uint8),
                     lambda: f"{op}: reset must be a bool (or uint8 0/1) tensor, got {reset.dtype}")
        torch._check(reset.dim() == 2 and reset.shape[0] == T and reset.shape[1] == B,
                     lambda: f"{op}: reset must have shape [T, B] = [{T}, {B}], got {list(reset.shape)}")
        torch._check(reset.device == input.device, lambda: f"{op}: reset must be on {input.device}, got {reset.device}")
    if backward:
        grad_output, output, saved, grad_h_n, grad_c_n = backward
        blocks = _SAVED_BLOCKS[cell] + (1 if w_hr is not None else 0)
        _check_shape(op, "grad_output", grad_output, (T, B, P), input)
        _check_shape(op, "output", output, (T, B, P), input)
        if saved is not None:
            _check_shape(op, "saved", saved, (T, B, blocks * H), input)
        _check_shape(op, "grad_h_n", grad_h_n, (B, P), input)
        if grad_c_n is not None:
            _check_shape(op, "grad_c_n", grad_c_n, (B, H), input)


def _sequence(like: Tensor, width: int) -> Tensor:
    return like.new_empty((like.shape[0], like.shape[1], width))


def _input_grad(input: Tensor, input_needs_grad: bool) -> Tensor:
    return input.new_empty(input.shape if input_needs_grad else (0,))


def _norms(input: Tensor, record_flow: bool) -> Tensor:
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    return input.new_empty((input.shape[0] if record_flow else 0,), dtype=dtype)


def _weight_grads(w_ih: Tensor, w_hh: Tensor, h0: Tensor) -> tuple[Tensor, ...]:
    return w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), h0.new_empty((w_hh.shape[0],))


if EXTENSION_ERROR is None:

    @torch.library.register_fake("tbptt_ext::rnn_chunk_forward")
    def _(input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse, relu):
        _check_args("rnn", "forward", input, w_ih, w_hh, h0, reset, biases=(("b_ih", b_ih), ("b_hh", b_hh)))
        return _sequence(input, h0.shape[1]), h0.new_empty(h0.shape)

    @torch.library.register_fake("tbptt_ext::rnn_chunk_backward")
    def _(grad_output, grad_h_n, input, output, w_ih, w_hh, h0, reset, reverse, relu, input_needs_grad,
          record_flow):
        _check_args("rnn", "backward", input, w_ih, w_hh, h0, reset,
                    backward=(grad_output, output, None, grad_h_n, None))
        grad_w_ih, grad_w_hh, grad_bias = _weight_grads(w_ih, w_hh, h0)
        return (_input_grad(input, input_needs_grad), h0.new_empty(h0.shape), grad_w_ih, grad_w_hh, grad_bias,
                _norms(input, record_flow))

    @torch.library.register_fake("tbptt_ext::lstm_chunk_forward")
    def _(input, w_ih, w_hh, b_ih, b_hh, h0, c0, reset, reverse, w_hr=None):
        _check_args("lstm", "forward", input, w_ih, w_hh, h0, reset, w_hr, c0, (("b_ih", b_ih), ("b_hh", b_hh)))
        hidden = c0.shape[1]
        blocks = 5 if w_hr is None else 6
        return (_sequence(input, h0.shape[1]), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
                _sequence(input, blocks * hidden))

    @torch.library.register_fake("tbptt_ext::lstm_chunk_backward")
    def _(grad_output, grad_h_n, grad_c_n, input, output, saved, w_ih, w_hh, h0, c0, reset, reverse,
          input_needs_grad, record_flow, w_hr=None):
        _check_args("lstm", "backward", input, w_ih, w_hh, h0, reset, w_hr, c0,
                    backward=(grad_output, output, saved, grad_h_n, grad_c_n))
        grad_w_ih, grad_w_hh, grad_bias = _weight_grads(w_ih, w_hh, h0)
        grad_w_hr = w_hh.new_empty((0,) if w_hr is None else w_hr.shape)
        return (_input_grad(input, input_needs_grad), h0.new_empty(h0.shape), c0.new_empty(c0.shape), grad_w_ih,
                grad_w_hh, grad_bias, _norms(input, record_flow), grad_w_hr)

    @torch.library.register_fake("tbptt_ext::gru_chunk_forward")
    def _(input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse):
        _check_args("gru", "forward", input, w_ih, w_hh, h0, reset, biases=(("b_ih", b_ih), ("b_hh", b_hh)))
        hidden = h0.shape[1]
        return _sequence(input, hidden), h0.new_empty(h0.shape), _sequence(input, 4 * hidden)

    @torch.library.register_fake("tbptt_ext::gru_chunk_backward")
    def _(grad_output, grad_h_n, input, output, saved, w_ih, w_hh, h0, reset, reverse, input_needs_grad,
          record_flow):
        _check_args("gru", "backward", input, w_ih, w_hh, h0, reset,
                    backward=(grad_output, output, saved, grad_h_n, None))
        grad_w_ih, grad_w_hh, grad_b_ih = _weight_grads(w_ih, w_hh, h0)
        return (_input_grad(input, input_needs_grad), h0.new_empty(h0.shape), grad_w_ih, grad_w_hh, grad_b_ih,
                grad_b_ih.new_empty(grad_b_ih.shape), _norms(input, record_flow))


# ------------------------------------------------------------ autograd formulas
# The modules differentiate through their own autograd.Functions (tbptt_ext.functions),
# which call these ops with autograd off. The formulas below are for the ops called
# directly, and for graphs that call them directly (torch.export of a module): the
# forward op's gradient is its backward op. The backward ops have no derivative of
# their own: differentiating them raises (the modules' Functions give second-order
# gradients).
def _zeros_if_none(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _bias_grads(grad_bias: Tensor, has_bias: tuple[bool, bool]) -> tuple[Tensor | None, Tensor | None]:
    # one sum serves both biases; two tensors, so that the two .grad never share storage
    has_ih, has_hh = has_bias
    return (grad_bias if has_ih else None,
            (grad_bias.clone() if has_ih else grad_bias) if has_hh else None)


def _input_grad_or_none(grad_input: Tensor, ctx) -> Tensor | None:
    return grad_input if ctx.needs_input_grad[0] else None


def _rnn_setup(ctx, inputs, output):
    input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse, relu = inputs
    ctx.save_for_backward(input, output[0], w_ih, w_hh, h0, reset)
    ctx.flags, ctx.has_bias = (reverse, relu), (b_ih is not None, b_hh is not None)


def _rnn_backward(ctx, grad_output, grad_h_n):
    input, output, w_ih, w_hh, h0, reset = ctx.saved_tensors
    grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_bias, _ = torch.ops.tbptt_ext.rnn_chunk_backward(
        _zeros_if_none(grad_output, output), _zeros_if_none(grad_h_n, h0), input, output, w_ih, w_hh, h0, reset,
        *ctx.flags, ctx.needs_input_grad[0], False)
    return (_input_grad_or_none(grad_input, ctx), grad_w_ih, grad_w_hh,
            *_bias_grads(grad_bias, ctx.has_bias), grad_h0, None, None, None)


def _lstm_setup(ctx, inputs, output):
    input, w_ih, w_hh, b_ih, b_hh, h0, c0, reset, reverse, w_hr = inputs
    ctx.mark_non_differentiable(output[3])  # saved: the activations the backward reads
    ctx.save_for_backward(input, output[0], output[3], w_ih, w_hh, h0, c0, reset, w_hr)
    ctx.reverse, ctx.has_bias = reverse, (b_ih is not None, b_hh is not None)


def _lstm_backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_saved):
    input, output, saved, w_ih, w_hh, h0, c0, reset, w_hr = ctx.saved_tensors
    grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, _, grad_w_hr = (
        torch.ops.tbptt_ext.lstm_chunk_backward(
            _zeros_if_none(grad_output, output), _zeros_if_none(grad_h_n, h0), _zeros_if_none(grad_c_n, c0), input,
            output, saved, w_ih, w_hh, h0, c0, reset, ctx.reverse, ctx.needs_input_grad[0], False, w_hr))
    return (_input_grad_or_none(grad_input, ctx), grad_w_ih, grad_w_hh,
            *_bias_grads(grad_bias, ctx.has_bias), grad_h0, grad_c0, None, None,
            grad_w_hr if w_hr is not None else None)


def _gru_setup(ctx, inputs, output):
    input, w_ih, w_hh, b_ih, b_hh, h0, reset, reverse = inputs
    ctx.mark_non_differentiable(output[2])
    ctx.save_for_backward(input, output[0], output[2], w_ih, w_hh, h0, reset)
    ctx.reverse, ctx.has_bias = reverse, (b_ih is not None, b_hh is not None)


def _gru_backward(ctx, grad_output, grad_h_n, _grad_saved):
    input, output, saved, w_ih, w_hh, h0, reset = ctx.saved_tensors
    grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, _ = torch.ops.tbptt_ext.gru_chunk_backward(
        _zeros_if_none(grad_output, output), _zeros_if_none(grad_h_n, h0), input, output, saved, w_ih, w_hh, h0,
        reset, ctx.reverse, ctx.needs_input_grad[0], False)
    has_ih, has_hh = ctx.has_bias
    return (_input_grad_or_none(grad_input, ctx), grad_w_ih, grad_w_hh, grad_b_ih if has_ih else None,
            grad_b_hh if has_hh else None, grad_h0, None, None)


def _no_second_derivative(name: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"tbptt_ext::{name} has no derivative of its own: differentiate through tbptt_ext's modules or chunk "
            "Functions for second-order gradients (they recompute through the reference under create_graph=True)"
        )

    return backward


if EXTENSION_ERROR is None:
    for _cell, _setup, _backward in (("rnn", _rnn_setup, _rnn_backward), ("lstm", _lstm_setup, _lstm_backward),
                                     ("gru", _gru_setup, _gru_backward)):
        torch.library.register_autograd(f"tbptt_ext::{_cell}_chunk_forward", _backward, setup_context=_setup)
        torch.library.register_autograd(f"tbptt_ext::{_cell}_chunk_backward",
                                        _no_second_derivative(f"{_cell}_chunk_backward"),
                                        setup_context=lambda ctx, inputs, output: None)
