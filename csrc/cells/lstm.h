// LSTM cell (torch.nn.LSTM; gate order i, f, g, o; b_ih + b_hh added to the input side).
//   (i, f, g, o) = (sigma, sigma, tanh, sigma)(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
//   c_t = f c_{t-1} + i g,   h_t = o tanh(c_t)
// Saved per step: [B, 5H] = (i, f, g, o, c_t), the activated gates and the cell.
// Backward, with dL/dh_t and the carried dL/dc_t:
//   dc = dL/dc_t + dL/dh_t o (1 - tanh^2 c_t)
//   d_o = dL/dh_t tanh(c_t) o (1 - o),  d_i = dc g i (1 - i),
//   d_f = dc c_{t-1} f (1 - f),         d_g = dc i (1 - g^2),   dL/dc_{t-1} = dc f
#pragma once

#include "cell.h"

namespace tbptt {

struct LSTMCell : CellShape</*gates*/ 4, /*saved*/ 5, /*cell index*/ 4, /*b_hh inside*/ false, /*direct dh*/ false> {

  static constexpr Activation activation(int g) { return g == 2 ? Activation::kTanh : Activation::kSigmoid; }

  // a = (i, f, g, o) activated.
  template <typename T>
  TBPTT_HD static void combine(const T (&a)[4], const T (&)[4], const T (&)[4], T /*h_prev*/, T c_prev,
                               T (&saved)[5], T& h) {
    const T c = a[1] * c_prev + a[0] * a[2];
    h = a[3] * tanh_(c);
    TBPTT_UNROLL
    for (int k = 0; k < 4; ++k) saved[k] = a[k];
    saved[4] = c;
  }

  template <typename T>
  TBPTT_HD static void backward(T grad_h, T grad_c, const T (&saved)[5], T /*h*/, T /*h_prev*/, T c_prev,
                                T (&grad_x)[4], T (&grad_hp)[4], T& grad_h_prev, T& grad_c_prev) {
    const T i = saved[0], f = saved[1], g = saved[2], o = saved[3];
    const T tanh_c = tanh_(saved[4]);
    const T dc = grad_c + grad_h * o * (T(1) - tanh_c * tanh_c);
    grad_x[0] = dc * g * i * (T(1) - i);
    grad_x[1] = dc * c_prev * f * (T(1) - f);
    grad_x[2] = dc * i * (T(1) - g * g);
    grad_x[3] = grad_h * tanh_c * o * (T(1) - o);
    TBPTT_UNROLL
    for (int k = 0; k < 4; ++k) grad_hp[k] = grad_x[k];
    grad_h_prev = T(0);
    grad_c_prev = dc * f;
  }
};

}  // namespace tbptt
