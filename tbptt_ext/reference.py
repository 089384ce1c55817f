"""Plain-PyTorch chunk forward and explicit chunk backward of each cell.

Same signatures and results as the ops in :mod:`tbptt_ext.ops` (shapes and the
meaning of every argument: csrc/register.cpp): the truth the fused kernels are
tested against and the fallback where no kernel is compiled (other devices, half
types on the CPU, a build without a compiler). The backward functions do not use
autograd. Each cell's math is written out once per direction, step by step.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _Chunk:
    """Time order and state restarts of one chunk call (see csrc/chunk_params.h)."""

    def __init__(self, input: Tensor, reset: Tensor | None, reverse: bool):
        self.T, self.B = input.shape[0], input.shape[1]
        self.reset = None if reset is None else reset.bool()
        self.reverse = reverse

    def time_of(self, s: int) -> int:
        return self.T - 1 - s if self.reverse else s

    def restarts(self, s: int) -> Tensor | None:
        """Rows whose state entering processing step s is zero ([B] bool), or None."""
        if self.reset is None:
            return None
        if not self.reverse:
            return self.reset[s]
        return self.reset[self.T - s] if s > 0 else None

    def restart(self, state: Tensor, s: int) -> Tensor:
        mask = self.restarts(s)
        return state if mask is None else torch.where(mask.unsqueeze(1), torch.zeros_like(state), state)

    def entering(self, sequence: Tensor, initial: Tensor) -> Tensor:
        """The state entering every time step ([T, B, W], time order): `initial` where the
        direction starts, the neighbouring step's value elsewhere, zero where a row restarts."""
        steps = [None] * self.T
        for s in range(self.T):
            t = self.time_of(s)
            steps[t] = self.restart(initial if s == 0 else sequence[self.time_of(s - 1)], s)
        return _stack(steps, sequence, initial.shape[-1])


def _stack(steps: list, like: Tensor, width: int) -> Tensor:
    if steps:
        return torch.stack(steps)
    return like.new_empty((0, like.shape[1], width))


def _projection(input: Tensor, w_ih: Tensor, *biases: Tensor | None) -> Tensor:
    xproj = input @ w_ih.t()
    for b in biases:
        if b is not None:
            xproj = xproj + b
    return xproj


def _record(grads_h: list, like: Tensor, record_flow: bool) -> Tensor:
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    if not record_flow:
        return like.new_empty((0,), dtype=dtype)
    if not grads_h:
        return like.new_zeros((0,), dtype=dtype)
    return torch.stack([torch.linalg.vector_norm(g.to(dtype)) for g in grads_h])


def _input_grads(grad_xproj: Tensor, input: Tensor, w_ih: Tensor, input_needs_grad: bool):
    grad_input = grad_xproj @ w_ih if input_needs_grad else input.new_empty((0,))
    grad_w_ih = torch.einsum("tbg,tbi->gi", grad_xproj, input)
    return grad_input, grad_w_ih, grad_xproj.sum((0, 1))


def _weight_grad(grad_hp: Tensor, h_prev: Tensor) -> Tensor:
    return torch.einsum("tbg,tbh->gh", grad_hp, h_prev)


# ----------------------------------------------------------------- Elman RNN
def rnn_chunk_forward(
    input: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, h0: Tensor,
    reset: Tensor | None = None, reverse: bool = False, relu: bool = False,
) -> tuple[Tensor, Tensor]:
    chunk = _Chunk(input, reset, reverse)
    act = torch.relu if relu else torch.tanh
    xproj = _projection(input, w_ih, b_ih, b_hh)
    h, outputs = h0, [None] * chunk.T
    for s in range(chunk.T):
        t = chunk.time_of(s)
        h = act(torch.addmm(xproj[t], chunk.restart(h, s), w_hh.t()))
        outputs[t] = h
    return _stack(outputs, input, h0.shape[1]), h.clone()


def rnn_chunk_backward(
    grad_output: Tensor, grad_h_n: Tensor, input: Tensor, output: Tensor, w_ih: Tensor, w_hh: Tensor, h0: Tensor,
    reset: Tensor | None = None, reverse: bool = False, relu: bool = False, input_needs_grad: bool = True,
    record_flow: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    chunk = _Chunk(input, reset, reverse)
    carry, deltas, grads_h = grad_h_n, [None] * chunk.T, [None] * chunk.T
    for s in reversed(range(chunk.T)):
        t = chunk.time_of(s)
        grad_h = grad_output[t] + (chunk.restart(carry, s + 1) if s + 1 < chunk.T else carry)
        h = output[t]
        # relu: zero where h <= 0, else grad_h (NaN h included), as torch's threshold_backward
        delta = torch.where(h <= 0, 0.0, grad_h) if relu else grad_h * (1 - h * h)
        deltas[t], grads_h[t] = delta, grad_h
        carry = delta @ w_hh
    grad_h0 = chunk.restart(carry, 0) if chunk.T else carry.clone()
    grad_xproj = _stack(deltas, output, output.shape[2])
    grad_input, grad_w_ih, grad_bias = _input_grads(grad_xproj, input, w_ih, input_needs_grad)
    grad_w_hh = _weight_grad(grad_xproj, chunk.entering(output, h0))
    return grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_bias, _record(grads_h, output, record_flow)


# ---------------------------------------------------------------------- LSTM
# With a projection w_hr [P, H] (torch.nn's proj_size), h_t = (o tanh c_t) W_hr^T is P wide
# and saved gets o tanh c_t as a sixth block.
def lstm_chunk_forward(
    input: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, h0: Tensor, c0: Tensor,
    reset: Tensor | None = None, reverse: bool = False, w_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    chunk = _Chunk(input, reset, reverse)
    xproj = _projection(input, w_ih, b_ih, b_hh)
    h, c = h0, c0
    outputs, saved = [None] * chunk.T, [None] * chunk.T
    for s in range(chunk.T):
        t = chunk.time_of(s)
        h, c = chunk.restart(h, s), chunk.restart(c, s)
        pre_i, pre_f, pre_g, pre_o = torch.addmm(xproj[t], h, w_hh.t()).chunk(4, 1)
        i, f, g, o = pre_i.sigmoid(), pre_f.sigmoid(), pre_g.tanh(), pre_o.sigmoid()
        c = f * c + i * g
        r = o * c.tanh()
        h = r if w_hr is None else r @ w_hr.t()
        outputs[t] = h
        saved[t] = torch.cat([i, f, g, o, c] + ([] if w_hr is None else [r]), 1)
    hidden = c0.shape[1]
    blocks = 5 if w_hr is None else 6
    return _stack(outputs, input, h0.shape[1]), h.clone(), c.clone(), _stack(saved, input, blocks * hidden)


def lstm_chunk_backward(
    grad_output: Tensor, grad_h_n: Tensor, grad_c_n: Tensor, input: Tensor, output: Tensor, saved: Tensor,
    w_ih: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, reset: Tensor | None = None, reverse: bool = False,
    input_needs_grad: bool = True, record_flow: bool = False, w_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    chunk = _Chunk(input, reset, reverse)
    hidden = c0.shape[1]
    cells = saved[:, :, 4 * hidden : 5 * hidden]
    c_prev_seq = chunk.entering(cells, c0)
    carry_h, carry_c = grad_h_n, grad_c_n
    grads, grads_h = [None] * chunk.T, [None] * chunk.T
    for s in reversed(range(chunk.T)):
        t = chunk.time_of(s)
        if s + 1 < chunk.T:
            carry_h, carry_c = chunk.restart(carry_h, s + 1), chunk.restart(carry_c, s + 1)
        i, f, g, o, c = saved[t, :, : 5 * hidden].chunk(5, 1)
        grad_h = grad_output[t] + carry_h
        grads_h[t] = grad_h
        grad_r = grad_h if w_hr is None else grad_h @ w_hr  # dL/d(o tanh c)
        tanh_c = c.tanh()
        grad_c = carry_c + grad_r * o * (1 - tanh_c * tanh_c)
        grad_pre = torch.cat(
            [
                grad_c * g * i * (1 - i),
                grad_c * c_prev_seq[t] * f * (1 - f),
                grad_c * i * (1 - g * g),
                grad_r * tanh_c * o * (1 - o),
            ],
            1,
        )
        grads[t] = grad_pre
        carry_c = grad_c * f
        carry_h = grad_pre @ w_hh
    if chunk.T:
        carry_h, carry_c = chunk.restart(carry_h, 0), chunk.restart(carry_c, 0)
    grad_xproj = _stack(grads, output, 4 * hidden)
    grad_input, grad_w_ih, grad_bias = _input_grads(grad_xproj, input, w_ih, input_needs_grad)
    grad_w_hh = _weight_grad(grad_xproj, chunk.entering(output, h0))
    if w_hr is None:
        grad_w_hr = output.new_empty((0,))
    else:
        grad_w_hr = torch.einsum("tbp,tbh->ph", _stack(grads_h, output, h0.shape[1]), saved[:, :, 5 * hidden :])
    return (grad_input, carry_h.clone(), carry_c.clone(), grad_w_ih, grad_w_hh, grad_bias,
            _record(grads_h, output, record_flow), grad_w_hr)


# ----------------------------------------------------------------------- GRU
def gru_chunk_forward(
    input: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, h0: Tensor,
    reset: Tensor | None = None, reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    chunk = _Chunk(input, reset, reverse)
    xproj = _projection(input, w_ih, b_ih)
    h, outputs, saved = h0, [None] * chunk.T, [None] * chunk.T
    for s in range(chunk.T):
        t = chunk.time_of(s)
        h = chunk.restart(h, s)
        hp = torch.addmm(b_hh, h, w_hh.t()) if b_hh is not None else h @ w_hh.t()
        x_r, x_z, x_n = xproj[t].chunk(3, 1)
        hp_r, hp_z, hp_n = hp.chunk(3, 1)
        r = torch.sigmoid(x_r + hp_r)
        z = torch.sigmoid(x_z + hp_z)
        n = torch.tanh(x_n + r * hp_n)
        h = (1 - z) * n + z * h
        outputs[t] = h
        saved[t] = torch.cat([r, z, n, hp_n], 1)
    hidden = h0.shape[1]
    return _stack(outputs, input, hidden), h.clone(), _stack(saved, input, 4 * hidden)


def gru_chunk_backward(
    grad_output: Tensor, grad_h_n: Tensor, input: Tensor, output: Tensor, saved: Tensor, w_ih: Tensor,
    w_hh: Tensor, h0: Tensor, reset: Tensor | None = None, reverse: bool = False, input_needs_grad: bool = True,
    record_flow: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    chunk = _Chunk(input, reset, reverse)
    h_prev_seq = chunk.entering(output, h0)
    carry = grad_h_n
    grads_x, grads_hp, grads_h = [None] * chunk.T, [None] * chunk.T, [None] * chunk.T
    for s in reversed(range(chunk.T)):
        t = chunk.time_of(s)
        if s + 1 < chunk.T:
            carry = chunk.restart(carry, s + 1)
        r, z, n, hp_n = saved[t].chunk(4, 1)
        grad_h = grad_output[t] + carry
        grad_an = grad_h * (1 - z) * (1 - n * n)
        grad_az = grad_h * (h_prev_seq[t] - n) * z * (1 - z)
        grad_ar = grad_an * hp_n * r * (1 - r)
        grads_x[t] = torch.cat([grad_ar, grad_az, grad_an], 1)
        grads_hp[t] = torch.cat([grad_ar, grad_az, grad_an * r], 1)
        grads_h[t] = grad_h
        carry = grad_h * z + grads_hp[t] @ w_hh
    grad_h0 = chunk.restart(carry, 0) if chunk.T else carry.clone()
    hidden = h0.shape[1]
    grad_xproj = _stack(grads_x, output, 3 * hidden)
    grad_hp = _stack(grads_hp, output, 3 * hidden)
    grad_input, grad_w_ih, grad_b_ih = _input_grads(grad_xproj, input, w_ih, input_needs_grad)
    return (grad_input, grad_h0, grad_w_ih, _weight_grad(grad_hp, h_prev_seq), grad_b_ih, grad_hp.sum((0, 1)),
            _record(grads_h, output, record_flow))
