// CPU recurrence of every cell: the step loops, templates over the cell traits
// (csrc/cells/) and the instruction set (isa.h), and their registration for the CPU
// dispatch key. Checks, allocation and the chunk-wide GEMMs: csrc/chunk_ops.h.
//
// Forward, processing step s = 0..T-1, time t = time_of(s):
//   phase 1 (column panels): hp = h_{t-1} W_hh^T                         [B, G*H]
//   phase 2 (batch rows):    Cell::forward per unit -> h_t, saved_t
// Backward, s = T-1..0:
//   phase 1 (batch rows):    Cell::backward per unit with dL/dh_t = grad_output_t + carry
//                            -> grad_xproj_t (and grad_hp_t), the direct carry, dL/dc_{t-1}
//   phase 2 (column panels): carry (+)= grad_hp_t W_hh                    [B, H]
// A row whose state restarts at step s reads h_prev = c_prev = 0 and no W_hh product
// in the forward; in the backward no carry crosses into the step before.
#include <torch/library.h>

#include <type_traits>

#include "../chunk_ops.h"
#include "isa.h"
#include "recurrent_matmul.h"
#include "thread_team.h"

namespace tbptt::cpu {
namespace {

struct Identity {
  template <typename T>
  TBPTT_ALWAYS_INLINE T operator()(T v) const {
    return v;
  }
};

// ----------------------------------------------------------------- forward
// Pointwise step of rows [b0, b1) at processing step s, hp = h_{t-1} W_hh^T [B, G*H].
template <Isa kIsa, class Cell, typename T>
TBPTT_ALWAYS_INLINE void forward_rows(const ForwardParams<T>& p, const T* hp, int64_t s, int64_t b0, int64_t b1) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  constexpr bool kCell = Cell::kCellIndex >= 0;
  const int64_t B = p.B, H = p.H, GH = G * H, SH = S * H, t = p.time_of(s);
  const int64_t t_prev = s > 0 ? p.time_of(s - 1) : 0;
  const T* __restrict__ bias_x = p.bias_x;
  const T* __restrict__ bias_h = p.bias_h;
  for (int64_t b = b0; b < b1; ++b) {
    const bool restart = p.restarts(s, b);
    const T* __restrict__ x = p.xproj + (t * B + b) * GH;
    const T* __restrict__ hp_row = hp + b * GH;
    const T* __restrict__ h_prev = s > 0 ? p.output + (t_prev * B + b) * H : p.h0 + b * H;
    const T* __restrict__ c_prev = nullptr;
    if constexpr (kCell) c_prev = s > 0 ? p.saved + (t_prev * B + b) * SH + Cell::kCellIndex * H : p.c0 + b * H;
    T* __restrict__ saved = p.saved + (t * B + b) * SH;
    T* __restrict__ h = p.output + (t * B + b) * H;
    TBPTT_IVDEP
    for (int64_t j = 0; j < H; ++j) {
      T xs[G], hs[G], sv[array_size(S)], h_new;
      load_blocks<G>(xs, x + j, H, Identity{});
      load_blocks<G>(hs, hp_row + j, H, Identity{});
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) {
        xs[g] += bias_x[g * H + j];
        hs[g] = restart ? T(0) : hs[g];
        if constexpr (Cell::kRecurrentBiasInside) hs[g] += bias_h[g * H + j];
      }
      T cp = T(0);
      if constexpr (kCell) cp = restart ? T(0) : c_prev[j];
      Cell::forward(xs, hs, restart ? T(0) : h_prev[j], cp, sv, h_new);
      h[j] = h_new;
      store_blocks<S>(saved + j, H, sv, Identity{});
    }
  }
}
TBPTT_ISA_DISPATCH(forward_rows)

template <class Cell, typename T>
void forward_chunk(const ForwardTensors& t) {
  const ForwardParams<T> p = forward_params<T>(t);
  const Isa isa = cpu_isa();
  const RecurrentMatrix<T> w_t(t.w_hh.t(), isa);  // h_{t-1} [B, H] times W_hh^T [H, G*H]
  const int64_t B = p.B, H = p.H;
  const at::Tensor hp = at::empty({B, Cell::kGates * H}, t.xproj.options());
  T* hp_out = hp.data_ptr<T>();
  const T* hp_in = hp_out;
  run_steps(p.T, w_t.work(B),
            phase(w_t.panels(),
                  [&](int64_t s, int64_t p0, int64_t p1) {
                    const T* h_prev = s > 0 ? p.output + p.time_of(s - 1) * B * H : p.h0;
                    w_t.multiply(h_prev, B, /*accumulate=*/false, hp_out, p0, p1);
                  }),
            phase(B, [&](int64_t s, int64_t b0, int64_t b1) {
              forward_rows_dispatch<Cell, T>(isa, p, hp_in, s, b0, b1);
            }));
}

// ---------------------------------------------------------------- backward
// Pointwise backward of rows [b0, b1) at processing step s. carry_h [B, H] holds
// dL/dh_t through step s + 1 (for cells with a direct term it is overwritten with that
// term, to which the W_hh product is added); carry_c [B, H] dL/dc_t in, dL/dc_{t-1} out.
template <Isa kIsa, class Cell, typename T, class Record>
TBPTT_ALWAYS_INLINE void backward_rows(const BackwardParams<T>& p, T* carry_h, T* carry_c, int64_t s, int64_t b0,
                                       int64_t b1) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  constexpr bool kCell = Cell::kCellIndex >= 0;
  const int64_t B = p.B, H = p.H, GH = G * H, SH = S * H, t = p.time_of(s);
  const int64_t t_prev = s > 0 ? p.time_of(s - 1) : 0;
  for (int64_t b = b0; b < b1; ++b) {
    const bool cut = s + 1 < p.T && p.restarts(s + 1, b);  // the next step restarted: no carry from it
    const bool restart = p.restarts(s, b);
    const int64_t row = t * B + b;
    const T* __restrict__ grad_out = p.grad_output + row * H;
    const T* __restrict__ saved = p.saved + row * SH;
    const T* __restrict__ h = p.output + row * H;
    const T* __restrict__ h_prev = s > 0 ? p.output + (t_prev * B + b) * H : p.h0 + b * H;
    const T* __restrict__ c_prev = nullptr;
    if constexpr (kCell) c_prev = s > 0 ? p.saved + (t_prev * B + b) * SH + Cell::kCellIndex * H : p.c0 + b * H;
    T* __restrict__ ch = carry_h + b * H;
    T* __restrict__ cc = kCell ? carry_c + b * H : nullptr;
    T* __restrict__ grad_x = p.grad_xproj + row * GH;
    T* __restrict__ grad_hp = Cell::kRecurrentBiasInside ? p.grad_hp + row * GH : nullptr;
    T* __restrict__ record = Record::value ? p.grad_h_record + row * H : nullptr;
    TBPTT_IVDEP
    for (int64_t j = 0; j < H; ++j) {
      const T grad_h = grad_out[j] + (cut ? T(0) : ch[j]);
      T grad_c = T(0), cp = T(0);
      if constexpr (kCell) {
        grad_c = cut ? T(0) : cc[j];
        cp = restart ? T(0) : c_prev[j];
      }
      T sv[array_size(S)], gx[G], ghp[G], grad_h_prev, grad_c_prev;
      load_blocks<S>(sv, saved + j, H, Identity{});
      Cell::backward(grad_h, grad_c, sv, h[j], restart ? T(0) : h_prev[j], cp, gx, ghp, grad_h_prev, grad_c_prev);
      store_blocks<G>(grad_x + j, H, gx, Identity{});
      if constexpr (Cell::kRecurrentBiasInside) store_blocks<G>(grad_hp + j, H, ghp, Identity{});
      if constexpr (Cell::kDirectHiddenGrad) ch[j] = grad_h_prev;
      if constexpr (kCell) cc[j] = grad_c_prev;
      if constexpr (Record::value) record[j] = grad_h;
    }
  }
}
TBPTT_ISA_DISPATCH(backward_rows)

template <class Cell, typename T>
void backward_chunk(const BackwardTensors& t) {
  const BackwardParams<T> p = backward_params<T, T>(t);
  const Isa isa = cpu_isa();
  const RecurrentMatrix<T> w(t.w_hh, isa);  // grad_hp [B, G*H] times W_hh [G*H, H]
  const int64_t B = p.B, GH = Cell::kGates * p.H;
  // The carries live in grad_h0 / grad_c0: dL/dh_n (dL/dc_n) in, dL/dh0 (dL/dc0) out.
  t.grad_h0.copy_(t.grad_h_n);
  if (t.grad_c0.defined()) t.grad_c0.copy_(t.grad_c_n);
  T* carry_h = p.grad_h0;
  T* carry_c = p.grad_c0;
  const T* grad_hp = Cell::kRecurrentBiasInside ? p.grad_hp : p.grad_xproj;
  run_steps(p.T, w.work(B),
            phase(B,
                  [&](int64_t i, int64_t b0, int64_t b1) {
                    if (p.grad_h_record != nullptr) {
                      backward_rows_dispatch<Cell, T, std::true_type>(isa, p, carry_h, carry_c, p.T - 1 - i, b0, b1);
                    } else {
                      backward_rows_dispatch<Cell, T, std::false_type>(isa, p, carry_h, carry_c, p.T - 1 - i, b0, b1);
                    }
                  }),
            phase(w.panels(), [&](int64_t i, int64_t p0, int64_t p1) {
              const T* grad_hp_t = grad_hp + p.time_of(p.T - 1 - i) * B * GH;
              w.multiply(grad_hp_t, B, /*accumulate=*/Cell::kDirectHiddenGrad, carry_h, p0, p1);
            }));
}

struct CpuBackend {
  static void check_supported(const char* op, const at::Tensor& input) {
    TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
                ": the CPU kernels support float32 and float64, got ", input.scalar_type(),
                " (backend='reference' runs other dtypes)");
  }
  static int device_guard(const at::Tensor&) { return 0; }

  template <class Cell>
  static void forward(const ForwardTensors& t) {
    AT_DISPATCH_FLOATING_TYPES(t.xproj.scalar_type(), "tbptt_chunk_forward_cpu",
                               [&] { forward_chunk<Cell, scalar_t>(t); });
  }

  template <class Cell>
  static void backward(const BackwardTensors& t) {
    AT_DISPATCH_FLOATING_TYPES(t.grad_xproj.scalar_type(), "tbptt_chunk_backward_cpu",
                               [&] { backward_chunk<Cell, scalar_t>(t); });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(tbptt_ext, CPU, m) { ChunkOps<CpuBackend>::register_all(m); }

// Which instruction set the CPU kernels run with in this process.
TORCH_LIBRARY_FRAGMENT(tbptt_ext, m) {
  m.def("cpu_isa() -> str", [] { return std::string(isa_name(cpu_isa())); });
}

}  // namespace tbptt::cpu
