// Per-element math of each cell, forward and backward, written once and used by
// the CPU loops (csrc/cpu) and the CUDA kernels. Gate order and bias placement
// follow torch.nn:
//   RNN:  h = phi(a),  a = x W_ih^T + b_ih + h_prev W_hh^T + b_hh,  phi = tanh | relu
//   LSTM: (i, f, g, o) = (sigma, sigma, tanh, sigma)(x W_ih^T + b_ih + h_prev W_hh^T + b_hh)
//         c = f c_prev + i g,  h = o tanh(c)
//   GRU:  r = sigma(x_r + hp_r),  z = sigma(x_z + hp_z),  n = tanh(x_n + r hp_n),
//         h = (1 - z) n + z h_prev,  with x = x W_ih^T + b_ih and hp = h_prev W_hh^T + b_hh
//         (so b_hn sits inside r * (W_hn h + b_hn)).
// "Pre-activation" below means the summed GEMM results; the recurrence GEMMs are
// done by the caller, these functions are the pointwise part of one step.
#pragma once

#include "activations.h"

namespace tbptt {

// ---------------------------------------------------------------- Elman RNN
template <typename T>
TBPTT_HD T rnn_activation(T a, bool relu) {
  return relu ? (a < T(0) ? T(0) : a) : tanh_(a);  // NaN stays NaN, as torch.relu
}

// delta = dL/da given dL/dh (total) and the output h = phi(a).
template <typename T>
TBPTT_HD T rnn_activation_backward(T grad_h, T h, bool relu) {
  return relu ? (h > T(0) ? grad_h : T(0)) : grad_h * (T(1) - h * h);
}

// -------------------------------------------------------------------- LSTM
// In: pre-activations a_i, a_f, a_g, a_o and c_prev.
// Out: activated gates written back in place, new c and h.
template <typename T>
TBPTT_HD void lstm_forward_point(T& i, T& f, T& g, T& o, T c_prev, T& c, T& h) {
  i = sigmoid(i);
  f = sigmoid(f);
  g = tanh_(g);
  o = sigmoid(o);
  c = f * c_prev + i * g;
  h = o * tanh_(c);
}

// In: dL/dh_t (output gradient plus carry), dL/dc_t carried from step t+1,
// the activated gates, c_t and c_{t-1}.
// Out: dL/d(pre-activation) of each gate and dL/dc_{t-1} (carry, without the
// h-path which goes through W_hh).
template <typename T>
TBPTT_HD void lstm_backward_point(T grad_h, T grad_c_next, T i, T f, T g, T o, T c,
                                  T c_prev, T& grad_ai, T& grad_af, T& grad_ag,
                                  T& grad_ao, T& grad_c_prev) {
  const T tanh_c = tanh_(c);
  const T grad_c = grad_c_next + grad_h * o * (T(1) - tanh_c * tanh_c);
  grad_ao = grad_h * tanh_c * o * (T(1) - o);
  grad_ai = grad_c * g * i * (T(1) - i);
  grad_af = grad_c * c_prev * f * (T(1) - f);
  grad_ag = grad_c * i * (T(1) - g * g);
  grad_c_prev = grad_c * f;
}

// --------------------------------------------------------------------- GRU
// In: input projections x_r, x_z, x_n (with b_ih), hidden projections
// hp_r, hp_z, hp_n (with b_hh) and h_prev. Out: gates r, z, n and the new h.
template <typename T>
TBPTT_HD void gru_forward_point(T x_r, T x_z, T x_n, T hp_r, T hp_z, T hp_n,
                                T h_prev, T& r, T& z, T& n, T& h) {
  r = sigmoid(x_r + hp_r);
  z = sigmoid(x_z + hp_z);
  n = tanh_(x_n + r * hp_n);
  h = (T(1) - z) * n + z * h_prev;
}

// In: dL/dh_t (total), gates r, z, n, hp_n = (W_hn h_prev + b_hn), h_prev.
// Out: gradients of the input projection (x_r, x_z, x_n), of the hidden
// projection (hp_r, hp_z, hp_n) and the direct part of dL/dh_prev (z * grad_h);
// the rest of dL/dh_prev is grad_hp W_hh, done by the caller's GEMM.
template <typename T>
TBPTT_HD void gru_backward_point(T grad_h, T r, T z, T n, T hp_n, T h_prev,
                                 T& grad_xr, T& grad_xz, T& grad_xn, T& grad_hpr,
                                 T& grad_hpz, T& grad_hpn, T& grad_h_prev_direct) {
  const T grad_an = grad_h * (T(1) - z) * (T(1) - n * n);
  const T grad_r = grad_an * hp_n;
  const T grad_az = grad_h * (h_prev - n) * z * (T(1) - z);
  const T grad_ar = grad_r * r * (T(1) - r);
  grad_xr = grad_ar;
  grad_xz = grad_az;
  grad_xn = grad_an;
  grad_hpr = grad_ar;
  grad_hpz = grad_az;
  grad_hpn = grad_an * r;
  grad_h_prev_direct = grad_h * z;
}

}  // namespace tbptt
