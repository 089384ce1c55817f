// GRU cell (torch.nn.GRU; gate order r, z, n; b_hn inside r * (W_hn h + b_hn)).
//   x = x_t W_ih^T + b_ih,  hp = h_{t-1} W_hh^T + b_hh
//   r = sigma(x_r + hp_r),  z = sigma(x_z + hp_z),  n = tanh(x_n + r hp_n)
//   h_t = (1 - z) n + z h_{t-1}
// Saved per step: [B, 4H] = (r, z, n, hp_n).
// Backward, with dL/dh_t:
//   d_n = dL/dh_t (1 - z)(1 - n^2),  d_z = dL/dh_t (h_{t-1} - n) z (1 - z),
//   d_r = d_n hp_n r (1 - r);  grad_x = (d_r, d_z, d_n),  grad_hp = (d_r, d_z, d_n r),
//   dL/dh_{t-1} = z dL/dh_t + grad_hp W_hh
#pragma once

#include "cell.h"

namespace tbptt {

struct GRUCell : CellShape</*gates*/ 3, /*saved*/ 4, /*cell index*/ -1, /*b_hh inside*/ true, /*direct dh*/ true> {

  // r and z are plain sigmoids; n needs r, so combine() computes it.
  static constexpr Activation activation(int g) { return g < 2 ? Activation::kSigmoid : Activation::kNone; }

  template <typename T>
  TBPTT_HD static void combine(const T (&a)[3], const T (&x)[3], const T (&hp)[3], T h_prev, T /*c_prev*/,
                               T (&saved)[4], T& h) {
    const T r = a[0], z = a[1];
    const T n = tanh_(x[2] + r * hp[2]);
    h = (T(1) - z) * n + z * h_prev;
    saved[0] = r;
    saved[1] = z;
    saved[2] = n;
    saved[3] = hp[2];
  }

  template <typename T>
  TBPTT_HD static void backward(T grad_h, T /*grad_c*/, const T (&saved)[4], T /*h*/, T h_prev, T /*c_prev*/,
                                T (&grad_x)[3], T (&grad_hp)[3], T& grad_h_prev, T& grad_c_prev) {
    const T r = saved[0], z = saved[1], n = saved[2], hp_n = saved[3];
    const T d_n = grad_h * (T(1) - z) * (T(1) - n * n);
    const T d_z = grad_h * (h_prev - n) * z * (T(1) - z);
    const T d_r = d_n * hp_n * r * (T(1) - r);
    grad_x[0] = d_r;
    grad_x[1] = d_z;
    grad_x[2] = d_n;
    grad_hp[0] = d_r;
    grad_hp[1] = d_z;
    grad_hp[2] = d_n * r;
    grad_h_prev = z * grad_h;
    grad_c_prev = T(0);
  }
};

}  // namespace tbptt
