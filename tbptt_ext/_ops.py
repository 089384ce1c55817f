"""Loads the compiled extension, registers fake kernels and exposes the ops.

The op schemas live in csrc/register.cpp; this file adds, once per op, the fake
(meta) kernel that torch.compile and torch.library.opcheck use. When the compiled
extension is missing, ``torch.ops.tbptt_ext`` stays empty and the modules run
:mod:`tbptt_ext.reference` instead.
"""

from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (importing the library registers the ops)

    EXTENSION_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - exercised by builds without a compiler
    EXTENSION_ERROR = exc

OP_NAMES = (
    "rnn_chunk_forward",
    "rnn_chunk_backward",
    "lstm_chunk_forward",
    "lstm_chunk_backward",
    "gru_chunk_forward",
    "gru_chunk_backward",
)

# dtypes each compiled backend implements; other dtypes run the reference.
FUSED_DTYPES = {
    "cpu": frozenset({torch.float32, torch.float64}),
    "cuda": frozenset({torch.float32, torch.float64, torch.bfloat16, torch.float16}),
}


def _has_kernel(dispatch_key: str) -> bool:
    return EXTENSION_ERROR is None and all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"tbptt_ext::{name}", dispatch_key)
        for name in OP_NAMES
    )


_COMPILED_BACKENDS = frozenset(
    device for device, key in (("cpu", "CPU"), ("cuda", "CUDA")) if _has_kernel(key)
)


def compiled_backends() -> set[str]:
    """Device types that have compiled fused kernels, e.g. ``{"cpu"}`` or ``{"cpu", "cuda"}``."""
    return set(_COMPILED_BACKENDS)


def has_fused_kernel(device_type: str, dtype: torch.dtype) -> bool:
    return device_type in _COMPILED_BACKENDS and dtype in FUSED_DTYPES.get(device_type, ())


if EXTENSION_ERROR is None:

    def _seq_like(t: torch.Tensor, steps: int, width: int) -> torch.Tensor:
        return t.new_empty((steps, t.shape[1], width))

    @torch.library.register_fake("tbptt_ext::rnn_chunk_forward")
    def _(xproj, w_hh, h0, relu):
        return xproj.new_empty(xproj.shape), h0.new_empty(h0.shape)

    @torch.library.register_fake("tbptt_ext::rnn_chunk_backward")
    def _(grad_output, grad_h_n, output, w_hh, h0, relu):
        return output.new_empty(output.shape), h0.new_empty(h0.shape), w_hh.new_empty(w_hh.shape)

    @torch.library.register_fake("tbptt_ext::lstm_chunk_forward")
    def _(xproj, w_hh, h0, c0):
        steps, hidden = xproj.shape[0], h0.shape[1]
        return (
            _seq_like(xproj, steps, hidden),
            h0.new_empty(h0.shape),
            c0.new_empty(c0.shape),
            xproj.new_empty(xproj.shape),
            _seq_like(xproj, steps, hidden),
        )

    @torch.library.register_fake("tbptt_ext::lstm_chunk_backward")
    def _(grad_output, grad_h_n, grad_c_n, output, gates, cell, w_hh, h0, c0):
        return (
            gates.new_empty(gates.shape),
            h0.new_empty(h0.shape),
            c0.new_empty(c0.shape),
            w_hh.new_empty(w_hh.shape),
        )

    @torch.library.register_fake("tbptt_ext::gru_chunk_forward")
    def _(xproj, w_hh, b_hh, h0):
        steps, hidden = xproj.shape[0], h0.shape[1]
        return (
            _seq_like(xproj, steps, hidden),
            h0.new_empty(h0.shape),
            _seq_like(xproj, steps, 4 * hidden),
        )

    @torch.library.register_fake("tbptt_ext::gru_chunk_backward")
    def _(grad_output, grad_h_n, output, gates, w_hh, h0):
        steps, hidden = output.shape[0], h0.shape[1]
        return (
            _seq_like(output, steps, 3 * hidden),
            h0.new_empty(h0.shape),
            w_hh.new_empty(w_hh.shape),
            w_hh.new_empty((3 * hidden,)),
        )
