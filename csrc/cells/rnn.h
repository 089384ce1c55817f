// Elman RNN cell (torch.nn.RNN), tanh or relu as a compile-time flag.
//   h_t = phi(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh),  phi = tanh | relu
// Backward: delta = dL/dh_t * phi'(a_t), read from h_t (1 - h^2; for relu 0 where h <= 0,
// else dL/dh_t, NaN h included, as torch.nn).
// Saves nothing: the output h_t is all the backward needs.
#pragma once

#include "cell.h"

namespace tbptt {

template <bool kRelu>
struct RNNCell : CellShape</*gates*/ 1, /*saved*/ 0, /*cell index*/ -1, /*b_hh inside*/ false, /*direct dh*/ false> {
  static constexpr Activation activation(int) { return kRelu ? Activation::kRelu : Activation::kTanh; }

  template <typename T>
  TBPTT_HD static void combine(const T (&a)[1], const T (&)[1], const T (&)[1], T /*h_prev*/, T /*c_prev*/,
                               T (&/*saved*/)[1], T& h) {
    h = a[0];
  }

  template <typename T>
  TBPTT_HD static void backward(T grad_h, T /*grad_c*/, const T (&/*saved*/)[1], T h, T /*h_prev*/, T /*c_prev*/,
                                T (&grad_x)[1], T (&grad_hp)[1], T& grad_h_prev, T& grad_c_prev) {
    if constexpr (kRelu) {
      grad_x[0] = h <= T(0) ? T(0) : grad_h;  // as torch's threshold_backward: a NaN h passes grad_h
    } else {
      grad_x[0] = grad_h * (T(1) - h * h);
    }
    grad_hp[0] = grad_x[0];
    grad_h_prev = T(0);
    grad_c_prev = T(0);
  }
};

}  // namespace tbptt
