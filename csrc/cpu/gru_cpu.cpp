// GRU chunk forward/backward on the CPU.
//   forward, t = 1..T:  hp_t = h_{t-1} W_hh^T (one matmul per step), then the fused pointwise
//     step (cells.h: gru_forward_point) adds b_hh and xproj_t and writes r, z, n, hp_n and h_t.
//   backward, t = T..1: the fused pointwise step (gru_backward_point) gives grad_xproj_t,
//     grad_hp_t and z * dh; carry = z * dh + grad_hp_t W_hh.
//   grad_W_hh = sum_t grad_hp_t^T h_{t-1} (one GEMM), grad_b_hh = sum_t grad_hp_t.
#include <torch/library.h>

#include "../cells.h"
#include "common.h"
#include "recurrent_matmul.h"

namespace tbptt::cpu {
namespace {

template <typename T>
struct GRUForwardRows {
  const T* xproj;   // [B, 3H]
  const T* hp;      // [B, 3H] h_prev W_hh^T
  const T* b_hh;    // [3H]
  const T* h_prev;  // [B, H]
  T* gates;         // [B, 4H] out: r, z, n, hp_n
  T* h;             // [B, H] out
  int64_t H;
};

template <typename T>
inline __attribute__((always_inline)) void gru_forward_rows(const GRUForwardRows<T>& p, int64_t b0, int64_t b1) {
  const int64_t H = p.H;
  for (int64_t b = b0; b < b1; ++b) {
    const T* __restrict__ x = p.xproj + b * 3 * H;
    const T* __restrict__ hp = p.hp + b * 3 * H;
    const T* __restrict__ bias = p.b_hh;
    const T* __restrict__ h_prev = p.h_prev + b * H;
    T* __restrict__ g = p.gates + b * 4 * H;
    T* __restrict__ h = p.h + b * H;
    TBPTT_IVDEP
    for (int64_t j = 0; j < H; ++j) {
      const T hp_n = hp[2 * H + j] + bias[2 * H + j];
      gru_forward_point(x[j], x[H + j], x[2 * H + j], hp[j] + bias[j], hp[H + j] + bias[H + j], hp_n, h_prev[j],
                        g[j], g[H + j], g[2 * H + j], h[j]);
      g[3 * H + j] = hp_n;
    }
  }
}
TBPTT_CPU_ROW_LOOP(gru_forward_rows, GRUForwardRows)

template <typename T>
struct GRUBackwardRows {
  const T* grad_output;  // [B, H] at step t
  T* carry;              // [B, H] dL/dh_t through step t+1 in, z * dh out
  const T* gates;        // [B, 4H] r, z, n, hp_n
  const T* h_prev;       // [B, H]
  T* grad_xproj;         // [B, 3H] out
  T* grad_hp;            // [B, 3H] out
  int64_t H;
};

template <typename T>
inline __attribute__((always_inline)) void gru_backward_rows(const GRUBackwardRows<T>& p, int64_t b0, int64_t b1) {
  const int64_t H = p.H;
  for (int64_t b = b0; b < b1; ++b) {
    const T* __restrict__ go = p.grad_output + b * H;
    T* __restrict__ carry = p.carry + b * H;
    const T* __restrict__ g = p.gates + b * 4 * H;
    const T* __restrict__ h_prev = p.h_prev + b * H;
    T* __restrict__ dx = p.grad_xproj + b * 3 * H;
    T* __restrict__ dhp = p.grad_hp + b * 3 * H;
    TBPTT_IVDEP
    for (int64_t j = 0; j < H; ++j) {
      gru_backward_point(go[j] + carry[j], g[j], g[H + j], g[2 * H + j], g[3 * H + j], h_prev[j], dx[j],
                         dx[H + j], dx[2 * H + j], dhp[j], dhp[H + j], dhp[2 * H + j], carry[j]);
    }
  }
}
TBPTT_CPU_ROW_LOOP(gru_backward_rows, GRUBackwardRows)

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_chunk_forward_cpu(const at::Tensor& xproj_in,
                                                                     const at::Tensor& w_hh,
                                                                     const std::optional<at::Tensor>& b_hh,
                                                                     const at::Tensor& h0_in) {
  constexpr const char* op = "tbptt_ext::gru_chunk_forward";
  auto [T, B, H] = check_chunk_args(op, "xproj", xproj_in, 3, w_hh, 3, h0_in);
  check_cpu_dtype(op, xproj_in);
  if (b_hh.has_value()) check_same(op, "b_hh", *b_hh, {3 * H}, xproj_in);
  const at::Tensor xproj = xproj_in.contiguous(), h0 = h0_in.contiguous();
  const at::Tensor bias = b_hh.has_value() ? b_hh->contiguous() : at::zeros({3 * H}, xproj.options());
  at::Tensor output = at::empty({T, B, H}, xproj.options());
  at::Tensor gates = at::empty({T, B, 4 * H}, xproj.options());
  at::Tensor hp = at::empty({B, 3 * H}, xproj.options());
  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "gru_chunk_forward_cpu", [&] {
    const RecurrentMatrix<scalar_t> w_t(w_hh.t());  // h_{t-1} [B, H] times W_hh^T
    const scalar_t* x = xproj.const_data_ptr<scalar_t>();
    const scalar_t* bias_p = bias.const_data_ptr<scalar_t>();
    scalar_t* hp_p = hp.data_ptr<scalar_t>();
    scalar_t* gates_p = gates.data_ptr<scalar_t>();
    scalar_t* out_p = output.data_ptr<scalar_t>();
    const scalar_t* h0_p = h0.const_data_ptr<scalar_t>();
    const int64_t step = B * H;
    run_steps(
        T, w_t.panels(),
        [&](int64_t t, int64_t p0, int64_t p1) {
          w_t.multiply_panels(t > 0 ? out_p + (t - 1) * step : h0_p, B, /*accumulate=*/false, hp_p, p0, p1);
        },
        B,
        [&](int64_t t, int64_t b0, int64_t b1) {
          gru_forward_rows_run<scalar_t>({x + 3 * t * step, hp_p, bias_p, t > 0 ? out_p + (t - 1) * step : h0_p,
                                          gates_p + 4 * t * step, out_p + t * step, H},
                                         b0, b1);
        },
        w_t.work(B));
  });
  at::Tensor h_n = T > 0 ? output.select(0, T - 1).clone() : h0.clone();
  return {output, h_n, gates};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_chunk_backward_cpu(
    const at::Tensor& grad_output_in, const at::Tensor& grad_h_n, const at::Tensor& output_in,
    const at::Tensor& gates_in, const at::Tensor& w_hh_in, const at::Tensor& h0_in) {
  constexpr const char* op = "tbptt_ext::gru_chunk_backward";
  auto [T, B, H] = check_chunk_args(op, "output", output_in, 1, w_hh_in, 3, h0_in);
  check_cpu_dtype(op, output_in);
  check_same(op, "gates", gates_in, {T, B, 4 * H}, h0_in);
  check_same(op, "grad_output", grad_output_in, {T, B, H}, h0_in);
  check_same(op, "grad_h_n", grad_h_n, h0_in.sizes(), h0_in);
  const at::Tensor grad_output = grad_output_in.contiguous(), output = output_in.contiguous(),
                   gates = gates_in.contiguous(), h0 = h0_in.contiguous();
  at::Tensor grad_xproj = at::empty({T, B, 3 * H}, gates.options());
  at::Tensor grad_hp = at::empty({T, B, 3 * H}, gates.options());
  at::Tensor carry = grad_h_n.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_chunk_backward_cpu", [&] {
    const RecurrentMatrix<scalar_t> w_hh(w_hh_in);  // grad_hp [B, 3H] times W_hh
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* out_p = output.const_data_ptr<scalar_t>();
    const scalar_t* gates_p = gates.const_data_ptr<scalar_t>();
    const scalar_t* h0_p = h0.const_data_ptr<scalar_t>();
    scalar_t* grad_x_p = grad_xproj.data_ptr<scalar_t>();
    scalar_t* grad_hp_p = grad_hp.data_ptr<scalar_t>();
    scalar_t* carry_p = carry.data_ptr<scalar_t>();
    const int64_t step = B * H;
    run_steps(
        T, B,
        [&](int64_t s, int64_t b0, int64_t b1) {
          const int64_t t = T - 1 - s;
          gru_backward_rows_run<scalar_t>({go + t * step, carry_p, gates_p + 4 * t * step,
                                           t > 0 ? out_p + (t - 1) * step : h0_p, grad_x_p + 3 * t * step,
                                           grad_hp_p + 3 * t * step, H},
                                          b0, b1);
        },
        w_hh.panels(),
        [&](int64_t s, int64_t p0, int64_t p1) {
          w_hh.multiply_panels(grad_hp_p + 3 * (T - 1 - s) * step, B, /*accumulate=*/true, carry_p, p0, p1);
        },
        w_hh.work(B));
  });
  return {grad_xproj, carry, recurrent_weight_grad(grad_hp, h0, output), grad_hp.sum(at::IntArrayRef{0, 1})};
}

}  // namespace

TORCH_LIBRARY_IMPL(tbptt_ext, CPU, m) {
  m.impl("gru_chunk_forward", &gru_chunk_forward_cpu);
  m.impl("gru_chunk_backward", &gru_chunk_backward_cpu);
}

}  // namespace tbptt::cpu
