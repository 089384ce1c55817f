"""Plain-PyTorch chunk forward and explicit chunk backward of each cell.

Same signatures and results as the ``torch.ops.tbptt_ext.*`` ops (see
csrc/register.cpp for the shapes): the truth the fused kernels are tested against
and the fallback where no kernel is compiled (other devices, half types on the CPU,
a build without a compiler). The backward functions do not use autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _weight_grad(grad_pre: Tensor, h0: Tensor, output: Tensor) -> Tensor:
    """sum_t grad_pre_t^T h_{t-1} over the chunk, with h_{-1} = h0."""
    if grad_pre.shape[0] == 0:
        return grad_pre.new_zeros((grad_pre.shape[2], h0.shape[1]))
    h_prev = torch.cat([h0.unsqueeze(0), output[:-1]], 0)
    return torch.einsum("tbg,tbh->gh", grad_pre, h_prev)


def _stack(steps: list[Tensor], like: Tensor, width: int) -> Tensor:
    if steps:
        return torch.stack(steps)
    return like.new_empty((0, like.shape[1], width))


# ----------------------------------------------------------------- Elman RNN
def rnn_chunk_forward(xproj: Tensor, w_hh: Tensor, h0: Tensor, relu: bool) -> tuple[Tensor, Tensor]:
    act = torch.relu if relu else torch.tanh
    h, outputs = h0, []
    for t in range(xproj.shape[0]):
        h = act(torch.addmm(xproj[t], h, w_hh.t()))
        outputs.append(h)
    return _stack(outputs, xproj, h0.shape[1]), h.clone()


def rnn_chunk_backward(
    grad_output: Tensor, grad_h_n: Tensor, output: Tensor, w_hh: Tensor, h0: Tensor, relu: bool
) -> tuple[Tensor, Tensor, Tensor]:
    carry, deltas = grad_h_n, []
    for t in reversed(range(output.shape[0])):
        grad_h = grad_output[t] + carry
        h = output[t]
        delta = grad_h * (h > 0) if relu else grad_h * (1 - h * h)
        deltas.append(delta)
        carry = delta @ w_hh
    grad_xproj = _stack(deltas[::-1], output, output.shape[2])
    return grad_xproj, carry.clone(), _weight_grad(grad_xproj, h0, output)


# ---------------------------------------------------------------------- LSTM
def lstm_chunk_forward(
    xproj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    h, c = h0, c0
    outputs, cells, gates_seq = [], [], []
    for t in range(xproj.shape[0]):
        pre_i, pre_f, pre_g, pre_o = torch.addmm(xproj[t], h, w_hh.t()).chunk(4, 1)
        i, f, g, o = pre_i.sigmoid(), pre_f.sigmoid(), pre_g.tanh(), pre_o.sigmoid()
        c = f * c + i * g
        h = o * c.tanh()
        outputs.append(h)
        cells.append(c)
        gates_seq.append(torch.cat([i, f, g, o], 1))
    hidden = h0.shape[1]
    return (
        _stack(outputs, xproj, hidden),
        h.clone(),
        c.clone(),
        _stack(gates_seq, xproj, 4 * hidden),
        _stack(cells, xproj, hidden),
    )


def lstm_chunk_backward(
    grad_output: Tensor,
    grad_h_n: Tensor,
    grad_c_n: Tensor,
    output: Tensor,
    gates: Tensor,
    cell: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    c0: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    carry_h, carry_c, grads = grad_h_n, grad_c_n, []
    for t in reversed(range(gates.shape[0])):
        i, f, g, o = gates[t].chunk(4, 1)
        c = cell[t]
        c_prev = cell[t - 1] if t > 0 else c0
        grad_h = grad_output[t] + carry_h
        tanh_c = c.tanh()
        grad_c = carry_c + grad_h * o * (1 - tanh_c * tanh_c)
        grad_pre = torch.cat(
            [
                grad_c * g * i * (1 - i),
                grad_c * c_prev * f * (1 - f),
                grad_c * i * (1 - g * g),
                grad_h * tanh_c * o * (1 - o),
            ],
            1,
        )
        grads.append(grad_pre)
        carry_c = grad_c * f
        carry_h = grad_pre @ w_hh
    grad_xproj = _stack(grads[::-1], gates, gates.shape[2])
    return grad_xproj, carry_h.clone(), carry_c.clone(), _weight_grad(grad_xproj, h0, output)


# ----------------------------------------------------------------------- GRU
def gru_chunk_forward(
    xproj: Tensor, w_hh: Tensor, b_hh: Tensor | None, h0: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    h, outputs, gates_seq = h0, [], []
    for t in range(xproj.shape[0]):
        hp = torch.addmm(b_hh, h, w_hh.t()) if b_hh is not None else h @ w_hh.t()
        x_r, x_z, x_n = xproj[t].chunk(3, 1)
        hp_r, hp_z, hp_n = hp.chunk(3, 1)
        r = torch.sigmoid(x_r + hp_r)
        z = torch.sigmoid(x_z + hp_z)
        n = torch.tanh(x_n + r * hp_n)
        h = (1 - z) * n + z * h
        outputs.append(h)
        gates_seq.append(torch.cat([r, z, n, hp_n], 1))
    hidden = h0.shape[1]
    return _stack(outputs, xproj, hidden), h.clone(), _stack(gates_seq, xproj, 4 * hidden)


def gru_chunk_backward(
    grad_output: Tensor, grad_h_n: Tensor, output: Tensor, gates: Tensor, w_hh: Tensor, h0: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    carry, grads_x, grads_hp = grad_h_n, [], []
    for t in reversed(range(output.shape[0])):
        r, z, n, hp_n = gates[t].chunk(4, 1)
        h_prev = output[t - 1] if t > 0 else h0
        grad_h = grad_output[t] + carry
        grad_an = grad_h * (1 - z) * (1 - n * n)
        grad_az = grad_h * (h_prev - n) * z * (1 - z)
        grad_ar = grad_an * hp_n * r * (1 - r)
        grads_x.append(torch.cat([grad_ar, grad_az, grad_an], 1))
        grad_hp = torch.cat([grad_ar, grad_az, grad_an * r], 1)
        grads_hp.append(grad_hp)
        carry = grad_h * z + grad_hp @ w_hh
    hidden = h0.shape[1]
    grad_xproj = _stack(grads_x[::-1], output, 3 * hidden)
    grad_hp_seq = _stack(grads_hp[::-1], output, 3 * hidden)
    return (
        grad_xproj,
        carry.clone(),
        _weight_grad(grad_hp_seq, h0, output),
        grad_hp_seq.sum((0, 1)),
    )
