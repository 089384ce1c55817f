// Elman RNN chunk forward/backward on the CPU.
//   forward, t = 1..T:  a_t = xproj_t + h_{t-1} W_hh^T (one matmul per step), h_t = phi(a_t)
//   backward, t = T..1: delta_t = (grad_output_t + carry) * phi'(a_t),  carry = delta_t W_hh;
//   grad_xproj = delta, grad_h0 = final carry, grad_W_hh = sum_t delta_t^T h_{t-1} (one GEMM).
#include <torch/library.h>

#include "../cells.h"
#include "common.h"
#include "recurrent_matmul.h"

namespace tbptt::cpu {
namespace {

template <typename T>
struct RNNForwardRows {
  const T* xproj;  // [B, H] at step t
  T* h;            // [B, H]: h_{t-1} W_hh^T in, h_t out
  int64_t H;
  bool relu;
};

template <typename T>
inline __attribute__((always_inline)) void rnn_forward_rows(const RNNForwardRows<T>& p, int64_t b0, int64_t b1) {
  const T* __restrict__ x = p.xproj + b0 * p.H;
  T* __restrict__ h = p.h + b0 * p.H;
  const int64_t n = (b1 - b0) * p.H;
  if (p.relu) {
    TBPTT_IVDEP
    for (int64_t j = 0; j < n; ++j) h[j] = rnn_activation(x[j] + h[j], true);
  } else {
    TBPTT_IVDEP
    for (int64_t j = 0; j < n; ++j) h[j] = rnn_activation(x[j] + h[j], false);
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
    TBPTT_IVDEP
    for (int64_t j = 0; j < n; ++j) delta[j] = rnn_activation_backward(go[j] + carry[j], h[j], true);
  } else {
    TBPTT_IVDEP
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
  at::Tensor output = at::empty({T, B, H}, xproj.options());
  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "rnn_chunk_forward_cpu", [&] {
    const RecurrentMatrix<scalar_t> w_t(w_hh.t());  // h_{t-1} [B, H] times W_hh^T
    const scalar_t* x = xproj.const_data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    const scalar_t* h0_p = h0.const_data_ptr<scalar_t>();
    const int64_t step = B * H;
    run_steps(
        T, w_t.panels(),
        [&](int64_t t, int64_t p0, int64_t p1) {
          w_t.multiply_panels(t > 0 ? out + (t - 1) * step : h0_p, B, /*accumulate=*/false, out + t * step, p0, p1);
        },
        B, [&](int64_t t, int64_t b0, int64_t b1) { rnn_forward_rows_run<scalar_t>({x + t * step, out + t * step, H, relu}, b0, b1); },
        w_t.work(B));
  });
  at::Tensor h_n = T > 0 ? output.select(0, T - 1).clone() : h0.clone();
  return {output, h_n};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_chunk_backward_cpu(const at::Tensor& grad_output_in,
                                                                      const at::Tensor& grad_h_n,
                                                                      const at::Tensor& output_in,
                                                                      const at::Tensor& w_hh_in,
                                                                      const at::Tensor& h0_in, bool relu) {
  constexpr const char* op = "tbptt_ext::rnn_chunk_backward";
  auto [T, B, H] = check_chunk_args(op, "output", output_in, 1, w_hh_in, 1, h0_in);
  check_cpu_dtype(op, output_in);
  check_same(op, "grad_output", grad_output_in, output_in.sizes(), output_in);
  check_same(op, "grad_h_n", grad_h_n, h0_in.sizes(), h0_in);
  const at::Tensor grad_output = grad_output_in.contiguous(), output = output_in.contiguous(),
                   h0 = h0_in.contiguous();
  at::Tensor grad_xproj = at::empty({T, B, H}, output.options());
  at::Tensor carry = grad_h_n.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(output.scalar_type(), "rnn_chunk_backward_cpu", [&] {
    const RecurrentMatrix<scalar_t> w_hh(w_hh_in);  // delta [B, H] times W_hh
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* out = output.const_data_ptr<scalar_t>();
    scalar_t* delta = grad_xproj.data_ptr<scalar_t>();
    scalar_t* carry_p = carry.data_ptr<scalar_t>();
    const int64_t step = B * H;
    run_steps(
        T, B,
        [&](int64_t s, int64_t b0, int64_t b1) {
          const int64_t t = T - 1 - s;
          rnn_backward_rows_run<scalar_t>({go + t * step, carry_p, out + t * step, delta + t * step, H, relu}, b0, b1);
        },
        w_hh.panels(),
        [&](int64_t s, int64_t p0, int64_t p1) {
          w_hh.multiply_panels(delta + (T - 1 - s) * step, B, /*accumulate=*/false, carry_p, p0, p1);
        },
        w_hh.work(B));
  });
  return {grad_xproj, carry, recurrent_weight_grad(grad_xproj, h0, output)};
}

}  // namespace

TORCH_LIBRARY_IMPL(tbptt_ext, CPU, m) {
  m.impl("rnn_chunk_forward", &rnn_chunk_forward_cpu);
  m.impl("rnn_chunk_backward", &rnn_chunk_backward_cpu);
}

}  // namespace tbptt::cpu
