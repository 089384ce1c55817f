"""One autograd.Function per cell over a whole chunk.

Each calls the chunk forward op once and, in backward, the chunk backward op
once: ``torch.ops.tbptt_ext.*`` when ``fused`` is True, :mod:`tbptt_ext.reference`
otherwise. The input projection (x W_ih^T + b) is not part of these: the modules
compute it with one GEMM outside the recurrence and autograd turns grad_xproj into
the gradients of x, W_ih and the biases.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import reference


def _impl(fused: bool):
    return torch.ops.tbptt_ext if fused else reference


class RNNChunk(torch.autograd.Function):
    """(xproj [T,B,H], w_hh [H,H], h0 [B,H]) -> (output [T,B,H], h_n [B,H])."""

    @staticmethod
    def forward(ctx, xproj, w_hh, h0, relu: bool, fused: bool):
        output, h_n = _impl(fused).rnn_chunk_forward(xproj, w_hh, h0, relu)
        ctx.save_for_backward(output, w_hh, h0)
        ctx.relu, ctx.fused = relu, fused
        return output, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, grad_h_n):
        output, w_hh, h0 = ctx.saved_tensors
        grad_xproj, grad_h0, grad_w_hh = _impl(ctx.fused).rnn_chunk_backward(
            grad_output, grad_h_n, output, w_hh, h0, ctx.relu
        )
        return grad_xproj, grad_w_hh, grad_h0, None, None


class LSTMChunk(torch.autograd.Function):
    """(xproj [T,B,4H], w_hh [4H,H], h0, c0 [B,H]) -> (output [T,B,H], h_n, c_n [B,H])."""

    @staticmethod
    def forward(ctx, xproj, w_hh, h0, c0, fused: bool):
        output, h_n, c_n, gates, cell = _impl(fused).lstm_chunk_forward(xproj, w_hh, h0, c0)
        ctx.save_for_backward(output, gates, cell, w_hh, h0, c0)
        ctx.fused = fused
        return output, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, grad_h_n, grad_c_n):
        output, gates, cell, w_hh, h0, c0 = ctx.saved_tensors
        grad_xproj, grad_h0, grad_c0, grad_w_hh = _impl(ctx.fused).lstm_chunk_backward(
            grad_output, grad_h_n, grad_c_n, output, gates, cell, w_hh, h0, c0
        )
        return grad_xproj, grad_w_hh, grad_h0, grad_c0, None


class GRUChunk(torch.autograd.Function):
    """(xproj [T,B,3H], w_hh [3H,H], b_hh [3H] or None, h0 [B,H]) -> (output [T,B,H], h_n [B,H])."""

    @staticmethod
    def forward(ctx, xproj, w_hh, b_hh, h0, fused: bool):
        output, h_n, gates = _impl(fused).gru_chunk_forward(xproj, w_hh, b_hh, h0)
        ctx.save_for_backward(output, gates, w_hh, h0)
        ctx.fused, ctx.has_bias = fused, b_hh is not None
        return output, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, grad_h_n):
        output, gates, w_hh, h0 = ctx.saved_tensors
        grad_xproj, grad_h0, grad_w_hh, grad_b_hh = _impl(ctx.fused).gru_chunk_backward(
            grad_output, grad_h_n, output, gates, w_hh, h0
        )
        return grad_xproj, grad_w_hh, grad_b_hh if ctx.has_bias else None, grad_h0, None
