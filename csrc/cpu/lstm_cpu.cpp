// LSTM chunk forward/backward on the CPU.
//   forward, t = 1..T:  pre_t = xproj_t + h_{t-1} W_hh^T (one matmul per step), then the
//     fused pointwise step (cells.h: lstm_forward_point) writes gates_t, c_t, h_t.
//   backward, t = T..1: the fused pointwise step (lstm_backward_point) turns
//     grad_output_t + carry_h and carry_c into grad_pre_t and the new carry_c;
//     carry_h = grad_pre_t W_hh (one matmul per step). grad_W_hh = sum_t grad_pre_t^T h_{t-1} (one GEMM).
#include <torch/library.h>

#include "../cells.h"
#include "common.h"
#include "recurrent_matmul.h"

namespace tbptt::cpu {
namespace {

template <typename T>
struct LSTMForwardRows {
  const T* xproj;   // [B, 4H] at step t
  T* gates;         // [B, 4H]: h_{t-1} W_hh^T in, activated gates out
  const T* c_prev;  // [B, H]
  T* c;             // [B, H]
  T* h;             // [B, H]
  int64_t H;
};

template <typename T>
inline __attribute__((always_inline)) void lstm_forward_rows(const LSTMForwardRows<T>& p, int64_t b0, int64_t b1) {
  const int64_t H = p.H;
  for (int64_t b = b0; b < b1; ++b) {
    const T* __restrict__ x = p.xproj + b * 4 * H;
    T* __restrict__ g = p.gates + b * 4 * H;
    const T* __restrict__ c_prev = p.c_prev + b * H;
    T* __restrict__ c = p.c + b * H;
    T* __restrict__ h = p.h + b * H;
    TBPTT_IVDEP
    for (int64_t j = 0; j < H; ++j) {
      T i = x[j] + g[j], f = x[H + j] + g[H + j], gc = x[2 * H + j] + g[2 * H + j], o = x[3 * H + j] + g[3 * H + j];
      lstm_forward_point(i, f, gc, o, c_prev[j], c[j], h[j]);
      g[j] = i;
      g[H + j] = f;
      g[2 * H + j] = gc;
      g[3 * H + j] = o;
    }
  }
}
TBPTT_CPU_ROW_LOOP(lstm_forward_rows, LSTMForwardRows)

template <typename T>
struct LSTMBackwardRows {
  const T* grad_output;  // [B, H] at step t
  const T* carry_h;      // [B, H] dL/dh_t through step t+1
  T* carry_c;            // [B, H] dL/dc_t in, dL/dc_{t-1} out
  const T* gates;        // [B, 4H] activated
  const T* c;            // [B, H] c_t
  const T* c_prev;       // [B, H] c_{t-1}
  T* grad_pre;           // [B, 4H] out
  int64_t H;
};

template <typename T>
inline __attribute__((always_inline)) void lstm_backward_rows(const LSTMBackwardRows<T>& p, int64_t b0, int64_t b1) {
  const int64_t H = p.H;
  for (int64_t b = b0; b < b1; ++b) {
    const T* __restrict__ go = p.grad_output + b * H;
    const T* __restrict__ ch = p.carry_h + b * H;
    T* __restrict__ cc = p.carry_c + b * H;
    const T* __restrict__ g = p.gates + b * 4 * H;
    const T* __restrict__ c = p.c + b * H;
    const T* __restrict__ c_prev = p.c_prev + b * H;
    T* __restrict__ d = p.grad_pre + b * 4 * H;
    TBPTT_IVDEP
    for (int64_t j = 0; j < H; ++j) {
      lstm_backward_point(go[j] + ch[j], cc[j], g[j], g[H + j], g[2 * H + j], g[3 * H + j], c[j], c_prev[j],
                          d[j], d[H + j], d[2 * H + j], d[3 * H + j], cc[j]);
    }
  }
}
TBPTT_CPU_ROW_LOOP(lstm_backward_rows, LSTMBackwardRows)

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_chunk_forward_cpu(
    const at::Tensor& xproj_in, const at::Tensor& w_hh, const at::Tensor& h0_in, const at::Tensor& c0_in) {
  constexpr const char* op = "tbptt_ext::lstm_chunk_forward";
  auto [T, B, H] = check_chunk_args(op, "xproj", xproj_in, 4, w_hh, 4, h0_in);
  check_cpu_dtype(op, xproj_in);
  check_same(op, "c0", c0_in, h0_in.sizes(), h0_in);
  const at::Tensor xproj = xproj_in.contiguous(), h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  at::Tensor output = at::empty({T, B, H}, xproj.options());
  at::Tensor cell = at::empty({T, B, H}, xproj.options());
  at::Tensor gates = at::empty({T, B, 4 * H}, xproj.options());
  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "lstm_chunk_forward_cpu", [&] {
    const RecurrentMatrix<scalar_t> w_t(w_hh.t());  // h_{t-1} [B, H] times W_hh^T
    const scalar_t* x = xproj.const_data_ptr<scalar_t>();
    scalar_t* gates_p = gates.data_ptr<scalar_t>();
    scalar_t* cell_p = cell.data_ptr<scalar_t>();
    scalar_t* out_p = output.data_ptr<scalar_t>();
    const scalar_t* h0_p = h0.const_data_ptr<scalar_t>();
    const scalar_t* c0_p = c0.const_data_ptr<scalar_t>();
    const int64_t step = B * H;
    run_steps(
        T, w_t.panels(),
        [&](int64_t t, int64_t p0, int64_t p1) {
          w_t.multiply_panels(t > 0 ? out_p + (t - 1) * step : h0_p, B, /*accumulate=*/false,
                              gates_p + 4 * t * step, p0, p1);
        },
        B,
        [&](int64_t t, int64_t b0, int64_t b1) {
          lstm_forward_rows_run<scalar_t>({x + 4 * t * step, gates_p + 4 * t * step,
                                           t > 0 ? cell_p + (t - 1) * step : c0_p, cell_p + t * step,
                                           out_p + t * step, H},
                                          b0, b1);
        },
        w_t.work(B));
  });
  at::Tensor h_n = T > 0 ? output.select(0, T - 1).clone() : h0.clone();
  at::Tensor c_n = T > 0 ? cell.select(0, T - 1).clone() : c0.clone();
  return {output, h_n, c_n, gates, cell};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_chunk_backward_cpu(
    const at::Tensor& grad_output_in, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& output_in, const at::Tensor& gates_in, const at::Tensor& cell_in, const at::Tensor& w_hh_in,
    const at::Tensor& h0_in, const at::Tensor& c0_in) {
  constexpr const char* op = "tbptt_ext::lstm_chunk_backward";
  auto [T, B, H] = check_chunk_args(op, "gates", gates_in, 4, w_hh_in, 4, h0_in);
  check_cpu_dtype(op, gates_in);
  check_same(op, "output", output_in, {T, B, H}, h0_in);
  check_same(op, "grad_output", grad_output_in, {T, B, H}, h0_in);
  check_same(op, "cell", cell_in, {T, B, H}, h0_in);
  check_same(op, "c0", c0_in, h0_in.sizes(), h0_in);
  check_same(op, "grad_h_n", grad_h_n, h0_in.sizes(), h0_in);
  check_same(op, "grad_c_n", grad_c_n, h0_in.sizes(), h0_in);
  const at::Tensor grad_output = grad_output_in.contiguous(), output = output_in.contiguous(),
                   gates = gates_in.contiguous(), cell = cell_in.contiguous(), h0 = h0_in.contiguous(),
                   c0 = c0_in.contiguous();
  at::Tensor grad_xproj = at::empty({T, B, 4 * H}, gates.options());
  at::Tensor carry_h = grad_h_n.contiguous().clone();
  at::Tensor carry_c = grad_c_n.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_chunk_backward_cpu", [&] {
    const RecurrentMatrix<scalar_t> w_hh(w_hh_in);  // grad_pre [B, 4H] times W_hh
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* gates_p = gates.const_data_ptr<scalar_t>();
    const scalar_t* cell_p = cell.const_data_ptr<scalar_t>();
    const scalar_t* c0_p = c0.const_data_ptr<scalar_t>();
    scalar_t* grad_pre = grad_xproj.data_ptr<scalar_t>();
    scalar_t* carry_h_p = carry_h.data_ptr<scalar_t>();
    scalar_t* carry_c_p = carry_c.data_ptr<scalar_t>();
    const int64_t step = B * H;
    run_steps(
        T, B,
        [&](int64_t s, int64_t b0, int64_t b1) {
          const int64_t t = T - 1 - s;
          lstm_backward_rows_run<scalar_t>({go + t * step, carry_h_p, carry_c_p, gates_p + 4 * t * step,
                                            cell_p + t * step, t > 0 ? cell_p + (t - 1) * step : c0_p,
                                            grad_pre + 4 * t * step, H},
                                           b0, b1);
        },
        w_hh.panels(),
        [&](int64_t s, int64_t p0, int64_t p1) {
          w_hh.multiply_panels(grad_pre + 4 * (T - 1 - s) * step, B, /*accumulate=*/false, carry_h_p, p0, p1);
        },
        w_hh.work(B));
  });
  return {grad_xproj, carry_h, carry_c, recurrent_weight_grad(grad_xproj, h0, output)};
}

}  // namespace

TORCH_LIBRARY_IMPL(tbptt_ext, CPU, m) {
  m.impl("lstm_chunk_forward", &lstm_chunk_forward_cpu);
  m.impl("lstm_chunk_backward", &lstm_chunk_backward_cpu);
}

}  // namespace tbptt::cpu
