// CPU recurrence of every cell: the step loops, templates over the cell traits
// (csrc/cells/) and the instruction set (isa.h), and their registration for the CPU
// dispatch key. Checks, allocation and the chunk-wide GEMMs: csrc/chunk_ops.h.
//
// Forward, processing step s = 0..T-1, time t = time_of(s):
//   phase 1 (column panels): hp = h_{t-1} W_hh^T                         [B, G*H]
//                            (and xproj_t = x_t W_ih^T, when in the loop)
//   phase 2 (batch rows):    Cell::forward per unit -> h_t, saved_t
// Backward, s = T-1..0:
//   phase 1 (batch rows):    Cell::backward per unit with dL/dh_t = grad_output_t + carry
//                            -> grad_xproj_t (and grad_hp_t), the direct carry, dL/dc_{t-1}
//   phase 2 (column panels): carry (+)= grad_hp_t W_hh                    [B, H]
//                            (and dL/dx_t = grad_xproj_t W_ih, when in the loop)
// The input side in the loop: for a narrow input (an embedding) and a few rows or more,
// x_t W_ih^T and dL/dx_t are products of the step loop (on the packed-panel kernel,
// beside the W_hh product) instead of chunk-wide GEMMs: no [T, B, G*H] buffer, and no
// narrow GEMM at low efficiency. Otherwise one chunk-wide GEMM each (input_side_in_loop).
// A row whose state restarts at step s reads h_prev = c_prev = 0 and no W_hh product
// in the forward; in the backward no carry crosses into the step before.
#include <torch/library.h>

#include <optional>
#include <utility>
#include <type_traits>

#include "../chunk_ops.h"
#include "isa.h"
#include "recurrent_matmul.h"
#include "thread_team.h"
#include "weight_grad.h"
#include "workspace.h"

namespace tbptt::cpu {
namespace {

// Whether the step loop computes x_t W_ih^T and dL/dx_t itself (see the top of the file).
// Measured on the 2-core EPYC (AVX2): for an input narrower than half the hidden state
// (an embedding: I = 64, H = 256) 2-10% faster from B = 4 up; with I = H the chunk-wide
// GEMM wins (LSTM B = 32: backward 16% slower in the loop); at B = 1 the loop is
// latency-bound and the GEMM wins.
inline bool input_side_in_loop(int64_t B, int64_t I, int64_t H) { return B >= 4 && I > 0 && 2 * I <= H; }

struct Identity {
  template <typename T>
  TBPTT_ALWAYS_INLINE T operator()(T v) const {
    return v;
  }
};

// ----------------------------------------------------------------- forward
// Stage 1 of a row's step for gate block g: hp[g] = activation(g)(x[g] + b + hp[g]), in
// place; one activation per loop, so the vector registers hold its constants and the
// loop does not spill (all of a cell's activations in one loop ran 2x slower).
template <class Cell, typename T, int g>
TBPTT_ALWAYS_INLINE void activate_block(T* __restrict__ hp, const T* __restrict__ x, const T* __restrict__ bias_x,
                                        const T* __restrict__ bias_h, T keep, int64_t H) {
  constexpr Activation A = Cell::activation(g);
  if constexpr (A != Activation::kNone) {
    const int64_t o = g * H;
    TBPTT_IVDEP
    for (int64_t j = 0; j < H; ++j) {
      const T h_part = hp[o + j];
      T v = x[o + j] + bias_x[o + j] + (keep != T(0) ? h_part : T(0));
      if constexpr (Cell::kRecurrentBiasInside) v += bias_h[o + j];
      hp[o + j] = activate<A>(v);
    }
  }
}

template <class Cell, typename T, int... G>
TBPTT_ALWAYS_INLINE void activate_gates_of_row(T* hp, const T* x, const T* bias_x, const T* bias_h, T keep, int64_t H,
                                               std::integer_sequence<int, G...>) {
  (activate_block<Cell, T, G>(hp, x, bias_x, bias_h, keep, H), ...);
}

// The step of rows [b0, b1) at processing step s; xproj = x_t W_ih^T and hp = h_{t-1}
// W_hh^T, both [B, G*H] (hp is overwritten). Stage 1 activates the gates that have an
// activation, stage 2 runs Cell::combine per unit. The cell's h goes to the output, or
// with a projection to the last saved block (the projection phase makes h_t from it).
template <Isa kIsa, class Cell, typename T>
TBPTT_ALWAYS_INLINE void forward_rows(const ForwardParams<T>& p, const T* xproj, T* hp, int64_t s, int64_t b0,
                                      int64_t b1) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  constexpr bool kCell = Cell::kCellIndex >= 0;
  const int64_t B = p.B, H = p.H, GH = G * H, SW = p.saved_width(S), t = p.time_of(s);
  const int64_t t_prev = s > 0 ? p.time_of(s - 1) : 0;
  const T* __restrict__ bias_x = p.bias_x;
  const T* __restrict__ bias_h = p.bias_h;
  for (int64_t b = b0; b < b1; ++b) {
    // keep = 0 where the row restarts. A select on a float comparison vectorises; one on
    // the bool itself does not (GCC 12).
    const T keep = p.restarts(s, b) ? T(0) : T(1);
    const T* __restrict__ x = xproj + b * GH;
    T* __restrict__ hp_row = hp + b * GH;
    const T* __restrict__ h_prev = nullptr;
    if constexpr (Cell::kUsesHPrev) h_prev = s > 0 ? p.output + (t_prev * B + b) * H : p.h0 + b * H;
    const T* __restrict__ c_prev = nullptr;
    if constexpr (kCell) c_prev = s > 0 ? p.saved + (t_prev * B + b) * SW + Cell::kCellIndex * H : p.c0 + b * H;
    T* __restrict__ saved = p.saved + (t * B + b) * SW;
    T* __restrict__ h = p.projected() ? saved + S * H : p.output + (t * B + b) * H;
    activate_gates_of_row<Cell, T>(hp_row, x, bias_x, bias_h, keep, H, std::make_integer_sequence<int, G>{});
    TBPTT_IVDEP
    for (int64_t j = 0; j < H; ++j) {
      T a[G], xs[G], hs[G], sv[array_size(S)], h_new;
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) {
        a[g] = xs[g] = hs[g] = T(0);
        if (Cell::activation(g) != Activation::kNone) {
          a[g] = hp_row[g * H + j];
        } else {  // the cell combines this gate's parts itself
          const T h_part = hp_row[g * H + j];
          xs[g] = x[g * H + j] + bias_x[g * H + j];
          hs[g] = keep != T(0) ? h_part : T(0);
          if constexpr (Cell::kRecurrentBiasInside) hs[g] += bias_h[g * H + j];
        }
      }
      // Loads are unconditional and then selected, so the loop if-converts.
      T hpv = T(0), cp = T(0);
      if constexpr (Cell::kUsesHPrev) {
        const T value = h_prev[j];
        hpv = keep != T(0) ? value : T(0);
      }
      if constexpr (kCell) {
        const T value = c_prev[j];
        cp = keep != T(0) ? value : T(0);
      }
      Cell::combine(a, xs, hs, hpv, cp, sv, h_new);
      h[j] = h_new;
      store_blocks<S>(saved + j, H, sv, Identity{});
    }
  }
}
TBPTT_ISA_DISPATCH(forward_rows)

template <class Cell, typename T>
void forward_chunk(ForwardTensors& t) {
  const int64_t B = t.B, I = t.I, H = t.H, P = t.P, GH = Cell::kGates * H;
  const bool in_loop = input_side_in_loop(B, I, H), project = t.w_hr.defined();
  if (!in_loop) t.xproj = input_projection(t);
  const ForwardParams<T> p = forward_params<T>(t);
  const int64_t SW = p.saved_width(Cell::kSaved);
  const Isa isa = cpu_isa();
  const RecurrentMatrix<T> w_t(t.w_hh.t(), isa, Scratch::kPackedHH);  // h_{t-1} [B, P] times W_hh^T [P, G*H]
  const auto w_ih_t = in_loop ? std::make_optional<RecurrentMatrix<T>>(t.w_ih.t(), isa, Scratch::kPackedIH)
                              : std::nullopt;
  const auto w_hr_t = project ? std::make_optional<RecurrentMatrix<T>>(t.w_hr.t(), isa, Scratch::kPackedHR)
                              : std::nullopt;
  const at::Tensor hp = workspace(Scratch::kStep0, {B, GH}, t.input.options());
  const at::Tensor xproj_step = in_loop ? workspace(Scratch::kStep1, {B, GH}, t.input.options()) : at::Tensor();
  T* const hp_out = hp.data_ptr<T>();
  T* const xproj_out = in_loop ? xproj_step.data_ptr<T>() : nullptr;
  const T* const input = t.input.const_data_ptr<T>();
  run_steps(p.T, w_t.work(B) + (in_loop ? w_ih_t->work(B) : 0) + (project ? w_hr_t->work(B) : 0),
            phase(w_t.panels(),  // W_ih^T and W_hh^T have G*H columns: the same panels
                  [&](int64_t s, int64_t p0, int64_t p1) {
                    if (in_loop) w_ih_t->multiply(input + p.time_of(s) * B * I, B, false, xproj_out, p0, p1);
                    const T* h_prev = s > 0 ? p.output + p.time_of(s - 1) * B * P : p.h0;
                    w_t.multiply(h_prev, B, /*accumulate=*/false, hp_out, p0, p1);
                  }),
            phase(B,
                  [&](int64_t s, int64_t b0, int64_t b1) {
                    const T* xproj = in_loop ? xproj_out : p.xproj + p.time_of(s) * B * GH;
                    forward_rows_dispatch<Cell, T>(isa, p, xproj, hp_out, s, b0, b1);
                  }),
            phase(project ? w_hr_t->panels() : 0, [&](int64_t s, int64_t p0, int64_t p1) {
              // h_t = r_t W_hr^T, r_t the last saved block of each row
              const int64_t time = p.time_of(s);
              w_hr_t->multiply(p.saved + time * B * SW + Cell::kSaved * H, B, false, p.output + time * B * P, p0, p1,
                               /*lda=*/SW);
            }));
}

// ---------------------------------------------------------------- backward
// With a projection, first dL/dh_t = grad_output_t + carry [B, P] (kept for dW_hr).
template <Isa kIsa, typename T, class Record>
TBPTT_ALWAYS_INLINE void projected_grad_rows(const BackwardParams<T>& p, const T* carry_h, int64_t s, int64_t b0,
                                             int64_t b1) {
  const int64_t P = p.P, t = p.time_of(s);
  for (int64_t b = b0; b < b1; ++b) {
    const T take_carry = s + 1 < p.T && p.restarts(s + 1, b) ? T(0) : T(1);
    const int64_t row = t * p.B + b;
    const T* __restrict__ grad_out = p.grad_output + row * P;
    const T* __restrict__ ch = carry_h + b * P;
    T* __restrict__ grad_h = p.grad_h + row * P;
    T* __restrict__ record = Record::value ? p.grad_h_record + row * P : nullptr;
    TBPTT_IVDEP
    for (int64_t j = 0; j < P; ++j) {
      const T carry = ch[j];
      grad_h[j] = grad_out[j] + (take_carry != T(0) ? carry : T(0));
      if constexpr (Record::value) record[j] = grad_h[j];
    }
  }
}
TBPTT_ISA_DISPATCH(projected_grad_rows)

// Pointwise backward of rows [b0, b1) at processing step s. grad_out [B, H]: the
// gradient of the cell's h at this step from outside the recurrence. With with_carry,
// carry_h [B, H] adds dL/dh_t through step s + 1 (for cells with a direct term it is
// overwritten with that term, to which the W_hh product is added); without (a
// projection: phase 1 added it) carry_h is not read. carry_c [B, H]: dL/dc_t in,
// dL/dc_{t-1} out. ld: the row stride of grad_xproj and grad_hp (padded_row_length).
template <Isa kIsa, class Cell, typename T, class Record>
TBPTT_ALWAYS_INLINE void backward_rows(const BackwardParams<T>& p, int64_t ld, const T* grad_out_step, bool with_carry,
                                       T* carry_h, T* carry_c, int64_t s, int64_t b0, int64_t b1) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  constexpr bool kCell = Cell::kCellIndex >= 0;
  const int64_t B = p.B, H = p.H, SW = p.saved_width(S), t = p.time_of(s);
  const int64_t t_prev = s > 0 ? p.time_of(s - 1) : 0;
  for (int64_t b = b0; b < b1; ++b) {
    // take_carry = 0 where the next step restarted (no carry from it), keep = 0 where this
    // one restarts (as a float: a select on a float comparison vectorises, on a bool not).
    const bool cut = s + 1 < p.T && p.restarts(s + 1, b);
    const T take_carry = with_carry && !cut ? T(1) : T(0);
    const T take_carry_c = !cut ? T(1) : T(0);
    const T keep = p.restarts(s, b) ? T(0) : T(1);
    const int64_t row = t * B + b;
    const T* __restrict__ grad_out = grad_out_step + b * H;
    const T* __restrict__ saved = p.saved + row * SW;
    const T* __restrict__ h = Cell::kBackwardUsesOutput ? p.output + row * H : nullptr;
    const T* __restrict__ h_prev = nullptr;
    if constexpr (Cell::kUsesHPrev) h_prev = s > 0 ? p.output + (t_prev * B + b) * H : p.h0 + b * H;
    const T* __restrict__ c_prev = nullptr;
    if constexpr (kCell) c_prev = s > 0 ? p.saved + (t_prev * B + b) * SW + Cell::kCellIndex * H : p.c0 + b * H;
    T* __restrict__ ch = with_carry ? carry_h + b * H : nullptr;
    T* __restrict__ cc = kCell ? carry_c + b * H : nullptr;
    T* __restrict__ grad_x = p.grad_xproj + row * ld;
    T* __restrict__ grad_hp = Cell::kRecurrentBiasInside ? p.grad_hp + row * ld : nullptr;
    T* __restrict__ record = Record::value ? p.grad_h_record + row * H : nullptr;
    // (carry read below only with_carry; otherwise a valid row stands in and is not used;
    // not __restrict__: it may be ch, read before the same element is written)
    const T* carry_in = with_carry ? ch : grad_out;
    TBPTT_IVDEP
    for (int64_t j = 0; j < H; ++j) {
      // Loads are unconditional and then selected, so the loop if-converts.
      const T carry = carry_in[j];
      const T grad_h = grad_out[j] + (take_carry != T(0) ? carry : T(0));
      T grad_c = T(0), cp = T(0), hv = T(0), hpv = T(0);
      if constexpr (kCell) {
        const T carry_c = cc[j], cp_value = c_prev[j];
        grad_c = take_carry_c != T(0) ? carry_c : T(0);
        cp = keep != T(0) ? cp_value : T(0);
      }
      if constexpr (Cell::kBackwardUsesOutput) hv = h[j];
      if constexpr (Cell::kUsesHPrev) {
        const T value = h_prev[j];
        hpv = keep != T(0) ? value : T(0);
      }
      T sv[array_size(S)], gx[G], ghp[G], grad_h_prev, grad_c_prev;
      load_blocks<S>(sv, saved + j, H, Identity{});
      Cell::backward(grad_h, grad_c, sv, hv, hpv, cp, gx, ghp, grad_h_prev, grad_c_prev);
      store_blocks<G>(grad_x + j, H, gx, Identity{});
      if constexpr (Cell::kRecurrentBiasInside) store_blocks<G>(grad_hp + j, H, ghp, Identity{});
      if constexpr (Cell::kDirectHiddenGrad) ch[j] = grad_h_prev;
      if constexpr (kCell) cc[j] = grad_c_prev;
      if constexpr (Record::value) record[j] = grad_h;
    }
  }
}
TBPTT_ISA_DISPATCH(backward_rows)

// Phases per step: (with a projection) dL/dh_t, then dL/dr_t = dL/dh_t W_hr; the cell's
// pointwise backward; the carry grad_hp_t W_hh (and dL/dx_t).
template <class Cell, typename T>
void backward_chunk(BackwardTensors& t) {
  const int64_t B = t.B, I = t.I, H = t.H;
  const bool in_loop = t.input_needs_grad && input_side_in_loop(B, I, H), project = t.w_hr.defined();
  if (in_loop) t.grad_input = at::empty({t.T, B, I}, t.input.options());
  const BackwardParams<T> p = backward_params<T, T>(t);
  // grad_xproj and grad_hp rows are ld apart (CpuBackend::scratch pads them)
  const int64_t ld = t.grad_xproj.stride(1);
  TORCH_INTERNAL_ASSERT(t.grad_xproj.stride(2) == 1 && t.grad_xproj.stride(0) == B * ld &&
                        (!t.grad_hp.defined() || t.grad_hp.strides() == t.grad_xproj.strides()));
  const Isa isa = cpu_isa();
  const RecurrentMatrix<T> w(t.w_hh, isa, Scratch::kPackedHH);  // grad_hp [B, G*H] times W_hh [G*H, P]
  const auto w_ih = in_loop ? std::make_optional<RecurrentMatrix<T>>(t.w_ih, isa, Scratch::kPackedIH) : std::nullopt;
  const auto w_hr = project ? std::make_optional<RecurrentMatrix<T>>(t.w_hr, isa, Scratch::kPackedHR) : std::nullopt;
  const int64_t hh_panels = w.panels(), ih_panels = in_loop ? w_ih->panels() : 0;
  T* const grad_input = in_loop ? t.grad_input.data_ptr<T>() : nullptr;
  const at::Tensor grad_r = project ? workspace(Scratch::kStep0, {B, H}, t.input.options()) : at::Tensor();
  T* const grad_r_p = project ? grad_r.data_ptr<T>() : nullptr;
  // The carries live in grad_h0 / grad_c0: dL/dh_n (dL/dc_n) in, dL/dh0 (dL/dc0) out.
  t.grad_h0.copy_(t.grad_h_n);
  if (t.grad_c0.defined()) t.grad_c0.copy_(t.grad_c_n);
  T* carry_h = p.grad_h0;
  T* carry_c = p.grad_c0;
  const T* grad_hp = Cell::kRecurrentBiasInside ? p.grad_hp : p.grad_xproj;
  const bool record = p.grad_h_record != nullptr;
  run_steps(p.T, w.work(B) + (in_loop ? w_ih->work(B) : 0) + (project ? w_hr->work(B) : 0),
            phase(project ? B : 0,
                  [&](int64_t i, int64_t b0, int64_t b1) {
                    if (record) return projected_grad_rows_dispatch<T, std::true_type>(isa, p, carry_h, p.T - 1 - i, b0, b1);
                    projected_grad_rows_dispatch<T, std::false_type>(isa, p, carry_h, p.T - 1 - i, b0, b1);
                  }),
            phase(project ? w_hr->panels() : 0,
                  [&](int64_t i, int64_t p0, int64_t p1) {
                    const T* grad_h_t = p.grad_h + p.time_of(p.T - 1 - i) * B * p.P;
                    w_hr->multiply(grad_h_t, B, false, grad_r_p, p0, p1);
                  }),
            phase(B,
                  [&](int64_t i, int64_t b0, int64_t b1) {
                    const int64_t s = p.T - 1 - i;
                    const T* grad_out = project ? grad_r_p : p.grad_output + p.time_of(s) * B * H;
                    if (record && !project) {
                      backward_rows_dispatch<Cell, T, std::true_type>(isa, p, ld, grad_out, true, carry_h, carry_c, s,
                                                                      b0, b1);
                    } else {
                      backward_rows_dispatch<Cell, T, std::false_type>(isa, p, ld, grad_out, !project, carry_h, carry_c,
                                                                       s, b0, b1);
                    }
                  }),
            phase(hh_panels + ih_panels, [&](int64_t i, int64_t p0, int64_t p1) {
              // panels [0, hh_panels): the carry; the rest: dL/dx_t
              const int64_t t_i = p.time_of(p.T - 1 - i);
              const T* grad_hp_t = grad_hp + t_i * B * ld;
              if (p0 < hh_panels) {
                w.multiply(grad_hp_t, B, /*accumulate=*/Cell::kDirectHiddenGrad, carry_h, p0, std::min(p1, hh_panels),
                           ld);
              }
              if (p1 > hh_panels) {
                w_ih->multiply(p.grad_xproj + t_i * B * ld, B, /*accumulate=*/false, grad_input + t_i * B * I,
                               std::max<int64_t>(p0 - hh_panels, 0), p1 - hh_panels, ld);
              }
            }));
}

// ------------------------------------------------------- weight gradients
// dW_hh = sum_t grad_hp_t^T h_{t-1}, dW_ih = sum_t grad_xproj_t^T x_t and the bias
// gradients (column sums), by weight_grad.h: one pass over grad_xproj for all of them
// (grad_hp is a second for GRU), the entering states read in place: h0 where the
// direction starts, the neighbouring step's output elsewhere, a zero row where the row
// restarts (chunk_params.h), with no [T, B, P] copy.
//
// Used where grad_xproj is at least as wide as the rows it is multiplied with (G*H >=
// P + I: LSTM, and GRU with inputs up to 3H); the kernel splits grad_xproj's columns
// among the threads, which leaves too little of it per thread when it is the narrower
// operand. Backward op against MKL's GEMMs on the 2-core EPYC (interleaved pairs, median
// of three runs of 30): LSTM I=64 H=256 B=32 1-5 % faster, LSTM I=H=256 B=32 1.5-3 %,
// GRU B=32 and B=64 0-2 %; RNN (G*H = H < H + I) 8 % slower, so RNN stays on the GEMMs.
template <class Cell>
bool one_pass_weight_grads(const BackwardTensors& t) {
  const int64_t GH = Cell::kGates * t.H;
  return Cell::kRecurrentBiasInside ? GH >= t.P && GH >= t.I : GH >= t.P + t.I;
}

template <class Cell, typename T>
void weight_grads_chunk(const BackwardTensors& t, BackwardResult& r) {
  const int64_t T_ = t.T, B = t.B, K = T_ * B, GH = Cell::kGates * t.H, P = t.P, I = t.I;
  const auto opts = t.input.options();
  r.grad_w_hh = at::empty({GH, P}, opts);
  r.grad_w_ih = at::empty({GH, I}, opts);
  ChunkParamsBase<T> p;  // time_of and restarts: the step order and reset mask of the step loops
  set_base(p, t);
  const T* output = t.output.const_data_ptr<T>();
  const T* input = t.input.const_data_ptr<T>();
  GradGroup<T> hh{std::vector<const T*>(K), P, r.grad_w_hh.data_ptr<T>(), P};
  GradGroup<T> ih{std::vector<const T*>(K), I, r.grad_w_ih.data_ptr<T>(), I};
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t time = p.time_of(s);
    const T* entering = s > 0 ? output + p.time_of(s - 1) * B * P : p.h0;  // the state entering step s
    for (int64_t b = 0; b < B; ++b) {
      const int64_t k = time * B + b;
      hh.rows[k] = p.restarts(s, b) ? nullptr : entering + b * P;
      ih.rows[k] = input + k * I;
    }
  }
  const int64_t ld = t.grad_xproj.stride(1);
  const auto sum_opts = opts.dtype(at::kDouble);
  if constexpr (Cell::kRecurrentBiasInside) {
    at::Tensor sum_hp = at::empty({GH}, sum_opts), sum_x = at::empty({GH}, sum_opts);
    weight_grads<T>(t.grad_hp.const_data_ptr<T>(), ld, K, GH, {hh}, sum_hp.data_ptr<double>());
    weight_grads<T>(t.grad_xproj.const_data_ptr<T>(), ld, K, GH, {ih}, sum_x.data_ptr<double>());
    r.grad_b_hh = sum_hp.to(opts.dtype());
    r.grad_b_ih = sum_x.to(opts.dtype());
  } else {
    at::Tensor sum = at::empty({GH}, sum_opts);
    weight_grads<T>(t.grad_xproj.const_data_ptr<T>(), ld, K, GH, {hh, ih}, sum.data_ptr<double>());
    r.grad_b_ih = r.grad_b_hh = sum.to(opts.dtype());
  }
}

struct CpuBackend : AtenGemms {
  static void check_supported(const char* op, const at::Tensor& input) {
    TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
                ": the CPU kernels support float32 and float64, got ", input.scalar_type(),
                " (backend='reference' runs other dtypes)");
  }
  static int device_guard(const at::Tensor&) { return 0; }
  // [T, B, G*H] with rows padded_row_length apart: a view into this thread's buffer.
  static at::Tensor scratch(int index, at::IntArrayRef sizes, const at::TensorOptions& options) {
    const int64_t width = sizes[2], ld = padded_row_length(width, options.dtype().itemsize());
    return workspace(index == 0 ? Scratch::kGradXproj : Scratch::kGradHp, {sizes[0], sizes[1], ld}, options)
        .narrow(2, 0, width);
  }

  template <class Cell>
  static void forward(ForwardTensors& t) {
    AT_DISPATCH_FLOATING_TYPES(t.input.scalar_type(), "tbptt_chunk_forward_cpu",
                               [&] { forward_chunk<Cell, scalar_t>(t); });
  }

  template <class Cell>
  static void backward(BackwardTensors& t) {
    AT_DISPATCH_FLOATING_TYPES(t.grad_xproj.scalar_type(), "tbptt_chunk_backward_cpu",
                               [&] { backward_chunk<Cell, scalar_t>(t); });
  }

  static constexpr bool kOwnWeightGrads = true;
  template <class Cell>
  static void weight_grads(const BackwardTensors& t, BackwardResult& r) {
    if (!one_pass_weight_grads<Cell>(t)) return gemm_weight_grads<Cell, AtenGemms>(t, r);
    AT_DISPATCH_FLOATING_TYPES(t.grad_xproj.scalar_type(), "tbptt_chunk_weight_grads_cpu",
                               [&] { weight_grads_chunk<Cell, scalar_t>(t, r); });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(tbptt_ext, CPU, m) { ChunkOps<CpuBackend>::register_all(m); }

// Which instruction set the CPU kernels run with in this process.
TORCH_LIBRARY_FRAGMENT(tbptt_ext, m) {
  m.def("cpu_isa() -> str", [] { return std::string(isa_name(cpu_isa())); });
}

}  // namespace tbptt::cpu
