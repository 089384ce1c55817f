// Elman RNN chunk forward/backward on the CPU.
//   forward, t = 1..T:  a_t = xproj_t + h_{t-1} W_hh^T (one GEMM per step), h_t = phi(a_t)
//   backward, t = T..1: delta_t = (grad_output_t + carry) * phi'(a_t),  carry = delta_t W_hh;
//   grad_xproj = delta, grad_h0 = final carry, grad_W_hh = sum_t delta_t^T h_{t-1} (one GEMM).
#include <torch/library.h>

#include "../cells.h"
#include "common.h"

namespace tbptt::cpu {
namespace {

template <typename T>
struct RNNForwardRows {
  T* h;  // [B, H]: pre-activation in, h_t out
  int64_t H;
  bool relu;
};

template <typename T>
inline __attribute__((always_inline)) void rnn_forward_rows(const RNNForwardRows<T>& p, int64_t b0, int64_t b1) {
  T* __restrict__ h = p.h + b0 * p.H;
  const int64_t n = (b1 - b0) * p.H;
  if (p.relu) {
    for (int64_t j = 0; j < n; ++j) h[j] = rnn_activation(h[j], true);
  } else {
    for (int64_t j = 0; j < n; ++j) h[j] = rnn_activation(h[j], false);
  }
}
TBPTT_CPU_ROW_LOOP(rnn_forward_rows, RNNForwardRows)

template <typename T>
struct RNNBackwardRows {
  const T* grad_output;  // [B, H] at step t
  const T* carry;        // [B, H] dL/dh_t through h_{t+1}
  const T* h;            // [B, H] h_t
  T* delta;              // [B, H] out
  int64_t H;
  bool relu;
};

template <typename T>
inline __attribute__((always_inline)) void rnn_backward_rows(const RNNBackwardRows<T>& p, int64_t b0, int64_t b1) {
  const int64_t off = b0 * p.H, n = (b1 - b0) * p.H;
  const T* __restrict__ go = p.grad_output + off;
  const T* __restrict__ carry = p.carry + off;
  const T* __restrict__ h = p.h + off;
  T* __restrict__ delta = p.delta + off;
  if (p.relu) {
    for (int64_t j = 0; j < n; ++j) delta[j] = rnn_activation_backward(go[j] + carry[j], h[j], true);
  } else {
    for (int64_t j = 0; j < n; ++j) delta[j] = rnn_activation_backward(go[j] + carry[j], h[j], false);
  }
}
TBPTT_CPU_ROW_LOOP(rnn_backward_rows, RNNBackwardRows)

std::tuple<at::Tensor, at::Tensor> rnn_chunk_forward_cpu(const at::Tensor& xproj_in, const at::Tensor& w_hh,
                                                         const at::Tensor& h0_in, bool relu) {
  constexpr const char* op = "tbptt_ext::rnn_chunk_forward";
  auto [T, B, H] = check_chunk_args(op, "xproj", xproj_in, 1, w_hh, 1, h0_in);
  check_cpu_dtype(op, xproj_in);
  const at::Tensor xproj = xproj_in.contiguous(), h0 = h0_in.contiguous();
  const at::Tensor w_t = w_hh.t();
  at::Tensor output = at::empty({T, B, H}, xproj.options());
  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "rnn_chunk_forward_cpu", [&] {
    at::Tensor h_prev = h0;
    for (int64_t t = 0; t < T; ++t) {
      at::Tensor h_t = output.select(0, t);
      at::addmm_out(h_t, xproj.select(0, t), h_prev, w_t);
      rnn_forward_rows_parallel<scalar_t>({h_t.data_ptr<scalar_t>(), H, relu}, B, H);
      h_prev = h_t;
    }
  });
  at::Tensor h_n = T > 0 ? output.select(0, T - 1).clone() : h0.clone();
  return {output, h_n};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_chunk_backward_cpu(const at::Tensor& grad_output_in,
                                                                      const at::Tensor& grad_h_n,
                                                                      const at::Tensor& output_in,
                                                                      const at::Tensor& w_hh,
                                                                      const at::Tensor& h0_in, bool relu) {
  constexpr const char* op = "tbptt_ext::rnn_chunk_backward";
  auto [T, B, H] = check_chunk_args(op, "output", output_in, 1, w_hh, 1, h0_in);
  check_cpu_dtype(op, output_in);
  check_same(op, "grad_output", grad_output_in, output_in.sizes(), output_in);
  check_same(op, "grad_h_n", grad_h_n, h0_in.sizes(), h0_in);
  const at::Tensor grad_output = grad_output_in.contiguous(), output = output_in.contiguous(),
                   h0 = h0_in.contiguous();
  at::Tensor grad_xproj = at::empty({T, B, H}, output.options());
  at::Tensor carry = grad_h_n.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(output.scalar_type(), "rnn_chunk_backward_cpu", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      at::Tensor delta = grad_xproj.select(0, t);
      rnn_backward_rows_parallel<scalar_t>({grad_output.select(0, t).const_data_ptr<scalar_t>(),
                                            carry.const_data_ptr<scalar_t>(),
                                            output.select(0, t).const_data_ptr<scalar_t>(),
                                            delta.data_ptr<scalar_t>(), H, relu},
                                           B, H);
      at::mm_out(carry, delta, w_hh);
    }
  });
  return {grad_xproj, carry, recurrent_weight_grad(grad_xproj, h0, output)};
}

}  // namespace

TORCH_LIBRARY_IMPL(tbptt_ext, CPU, m) {
  m.impl("rnn_chunk_forward", &rnn_chunk_forward_cpu);
  m.impl("rnn_chunk_backward", &rnn_chunk_backward_cpu);
}

}  // namespace tbptt::cpu
