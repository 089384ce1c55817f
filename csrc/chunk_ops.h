// The chunk ops of every cell, written once for both devices (ATen calls only):
// argument checks, the input-side GEMMs around the recurrence, the weight gradients
// and allocation. The recurrence itself is Backend::forward<Cell> / backward<Cell>
// (csrc/cpu/chunk_cpu.cpp, csrc/cuda/cuda_ops.cpp). Schemas: csrc/register.cpp.
//
// One call covers one layer and direction over a chunk of T steps:
//   forward:  xproj = x W_ih^T (one GEMM over the chunk, or per step inside the
//             backend's loop), then the recurrence (biases added inside it).
//   backward: the recurrence backward gives grad_xproj (and grad_hp for GRU), then
//             dx = grad_xproj W_ih (unless the backend's loop made it),
//             dW_ih = grad_xproj^T x,  dW_hh = grad_hp^T h_prev,  db = sum of grad_xproj
//             (grad_hp), each one GEMM or reduction over the chunk (or, where a backend
//             has its own, e.g. the CPU's one pass over grad_xproj for all three, that).
// With a projection (LSTM proj_size = P > 0, w_hr [P, H]) the cell's output r_t [B, H]
// is kept as one more saved block and the layer's h_t = r_t W_hr^T [B, P] is what
// recurs; dW_hr = sum_t (dL/dh_t)^T r_t, with dL/dh_t [T, B, P] from the backend.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <type_traits>

#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/rnn.h"
#include "chunk_params.h"
#include "static_switch.h"

namespace tbptt {

using OptTensor = std::optional<at::Tensor>;

// Tensors of one call as the backends receive them: contiguous (except the scratch
// grad_xproj / grad_hp, whose rows a backend may space further apart: Backend::scratch),
// checked; undefined where a cell or call has none.
struct ChunkTensors {
  int64_t T = 0, B = 0, I = 0, H = 0;
  int64_t P = 0;  // width of h (the layer's output): H, or proj_size with a projection
  bool reverse = false;
  at::Tensor input, w_ih, w_hh, w_hr, h0, c0, reset;  // w_hr: [P, H] or undefined
};

struct ForwardTensors : ChunkTensors {
  at::Tensor bias_x, bias_h;  // inputs
  at::Tensor xproj;           // x W_ih^T [T, B, G*H], if the backend computes it for the whole chunk
  at::Tensor output, saved;   // outputs
};

struct BackwardTensors : ChunkTensors {
  bool input_needs_grad = false;
  at::Tensor grad_output, grad_h_n, grad_c_n, output, saved;        // inputs
  at::Tensor grad_xproj, grad_hp, grad_h0, grad_c0, grad_h_record;  // outputs
  at::Tensor grad_input;  // [T, B, I] if the backend computes it (else the driver does)
  at::Tensor grad_h;      // [T, B, P] dL/dh_t, with a projection (for dW_hr)
};

// The chunk's products outside the recurrence (input projection, weight and input
// gradients) and the bias gradients' column sums, as ATen computes them. A backend
// derives from this or provides the same three functions (the CUDA backend: cuBLAS
// under the precision policy of torch.nn's cuDNN RNNs).
struct AtenGemms {
  static at::Tensor mm(const at::Tensor& a, const at::Tensor& b) { return at::mm(a, b); }
  static void addmm_(at::Tensor& c, const at::Tensor& a, const at::Tensor& b) { c.addmm_(a, b); }
  // [R, N] -> [N]: the sum of the rows
  static at::Tensor column_sum(const at::Tensor& x) { return x.sum(0); }
};

// x W_ih^T of every step of the chunk, one GEMM: [T, B, G*H].
template <class Gemms = AtenGemms>
at::Tensor input_projection(const ChunkTensors& t) {
  return Gemms::mm(t.input.view({t.T * t.B, t.I}), t.w_ih.t()).view({t.T, t.B, t.w_ih.size(0)});
}

// Sets a parameter-struct pointer to a tensor's data (null for an undefined tensor).
template <typename P>
void set(P*& field, const at::Tensor& t) {
  field = t.defined() ? static_cast<P*>(t.data_ptr()) : nullptr;
}

// Raw-pointer parameters from the tensors; Scalar is the element type as the kernels
// spell it (e.g. __half for at::Half), Acc the arithmetic type.
template <typename Scalar>
void set_base(ChunkParamsBase<Scalar>& p, const ChunkTensors& t) {
  p.T = t.T, p.B = t.B, p.H = t.H, p.P = t.P, p.reverse = t.reverse;
  set(p.reset, t.reset), set(p.h0, t.h0), set(p.c0, t.c0);
}

template <typename Scalar>
ForwardParams<Scalar> forward_params(const ForwardTensors& t) {
  ForwardParams<Scalar> p;
  set_base(p, t);
  set(p.bias_h, t.bias_h), set(p.xproj, t.xproj), set(p.bias_x, t.bias_x);
  set(p.output, t.output), set(p.saved, t.saved);
  return p;
}

template <typename Scalar, typename Acc>
BackwardParams<Scalar, Acc> backward_params(const BackwardTensors& t) {
  BackwardParams<Scalar, Acc> p;
  set_base(p, t);
  set(p.grad_output, t.grad_output), set(p.grad_h_n, t.grad_h_n), set(p.grad_c_n, t.grad_c_n);
  set(p.output, t.output), set(p.saved, t.saved);
  set(p.grad_xproj, t.grad_xproj), set(p.grad_hp, t.grad_hp), set(p.grad_h0, t.grad_h0), set(p.grad_c0, t.grad_c0);
  set(p.grad_h, t.grad_h);
  set(p.grad_h_record, t.grad_h_record);
  return p;
}

// ------------------------------------------------------------------ checks
// The ops compute in the dtype of their inputs. Under torch.autocast the ATen calls
// inside them (the input projection, the weight-gradient GEMMs) would otherwise be cast
// to the autocast dtype, and the kernels would read a bfloat16 buffer as float32.
// (Callers choose the dtype: the modules cast to it before the call.)
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

struct Dims {
  int64_t T, B, I, H, P;  // P: the width of h (H without a projection)
};

// Checks one tensor's shape, dtype and device against the call's.
inline void check_arg(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape,
                      const at::Tensor& like) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have dtype ", like.scalar_type(),
              " (the dtype of input), got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " must be on ", like.device(),
              " (the device of input), got ", t.device());
}

// input [T, B, I], w_ih [G*H, I], w_hh [G*H, P], h0 [B, P], w_hr [P, H] or undefined
// (then P = H): the sizes of the call.
template <class Cell>
Dims check_dims(const char* op, const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh,
                const at::Tensor& h0, const at::Tensor& w_hr) {
  constexpr int G = Cell::kGates;
  TORCH_CHECK(input.dim() == 3, op, ": input must be [T, B, I], got a ", input.dim(), "-D tensor of shape ",
              input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op, ": input must be a floating-point tensor, got ",
              input.scalar_type());
  const char* width = w_hr.defined() ? "P" : "H";
  TORCH_CHECK(h0.dim() == 2, op, ": h0 must be [B, ", width, "], got shape ", h0.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % G == 0, op, ": w_hh must be [", G, "H, ", width, "], got shape ",
              w_hh.sizes());
  const int64_t H = w_hh.size(0) / G, P = w_hr.defined() ? h0.size(1) : H;
  const Dims d{input.size(0), input.size(1), input.size(2), H, P};
  check_arg(op, "h0", h0, {d.B, d.P}, input);
  check_arg(op, "w_ih", w_ih, {G * d.H, d.I}, input);
  check_arg(op, "w_hh", w_hh, {G * d.H, d.P}, input);
  if (w_hr.defined()) {
    TORCH_CHECK(w_hr.dim() == 2, op, ": w_hr must be [P, H] (P: the projection size), got shape ", w_hr.sizes());
    TORCH_CHECK(P >= 1 && P < H, op,
                ": the projection size P (the width of h0) must be at least 1 and smaller than the hidden size H "
                "(as in torch.nn; without a projection pass no w_hr), got P = ", P, ", H = ", H);
    check_arg(op, "w_hr", w_hr, {d.P, d.H}, input);
  }
  return d;
}

// The reset mask as the kernels read it: [T, B] bytes, or undefined.
inline at::Tensor reset_bytes(const char* op, const OptTensor& reset, const Dims& d, const at::Tensor& like) {
  if (!reset.has_value()) return {};
  const at::Tensor& r = *reset;
  TORCH_CHECK(r.scalar_type() == at::kBool || r.scalar_type() == at::kByte, op,
              ": reset must be a bool (or uint8 0/1) tensor, got ", r.scalar_type());
  TORCH_CHECK(r.sizes() == at::IntArrayRef({d.T, d.B}), op, ": reset must have shape [T, B] = [", d.T, ", ", d.B,
              "], got ", r.sizes());
  TORCH_CHECK(r.device() == like.device(), op, ": reset must be on ", like.device(), ", got ", r.device());
  return r.contiguous().view(at::kByte);
}

// What forward and backward share: the sizes, the reset mask, input, weights and the entering state.
template <class Cell>
void prepare_common(const char* op, ChunkTensors& t, const Dims& d, bool reverse, const OptTensor& reset,
                    const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& w_hr,
                    const at::Tensor& h0, const at::Tensor& c0) {
  t.T = d.T, t.B = d.B, t.I = d.I, t.H = d.H, t.P = d.P, t.reverse = reverse;
  t.reset = reset_bytes(op, reset, d, input);
  t.input = input.contiguous();
  t.w_ih = w_ih.contiguous();
  t.w_hh = w_hh.contiguous();
  if (w_hr.defined()) t.w_hr = w_hr.contiguous();
  t.h0 = h0.contiguous();
  if constexpr (Cell::kCellIndex >= 0) {
    check_arg(op, "c0", c0, {d.B, d.H}, input);
    t.c0 = c0.contiguous();
  }
}

// --------------------------------------------------------------- forward
struct ForwardResult {
  at::Tensor output, h_n, c_n, saved;
};

// The saved blocks of a call: the cell's, and its output r_t with a projection.
inline int64_t saved_blocks(int S, const at::Tensor& w_hr) { return S + (w_hr.defined() ? 1 : 0); }

template <class Cell, class Backend>
ForwardResult chunk_forward(const char* op, const at::Tensor& input, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                            const at::Tensor& h0, const at::Tensor& c0, const OptTensor& reset, bool reverse,
                            const at::Tensor& w_hr = {}) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  constexpr bool kCell = Cell::kCellIndex >= 0;
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const Dims d = check_dims<Cell>(op, input, w_ih, w_hh, h0, w_hr);
  for (const auto& [name, b] : {std::pair{"b_ih", &b_ih}, std::pair{"b_hh", &b_hh}}) {
    if (b->has_value()) check_arg(op, name, **b, {G * d.H}, input);
  }
  Backend::check_supported(op, input);
  [[maybe_unused]] const auto guard = Backend::device_guard(input);
  ForwardTensors t;
  prepare_common<Cell>(op, t, d, reverse, reset, input, w_ih, w_hh, w_hr, h0, c0);
  // Biases are added inside the recurrence (no [T, B, G*H] broadcast): b_ih (+ b_hh) on
  // the input side, b_hh on the recurrent side for kRecurrentBiasInside cells. Absent
  // biases are zeros, so the kernels always have both vectors.
  // (allocated only where a bias is absent: on a GPU each is an allocation and a fill)
  const at::Tensor zeros = b_ih.has_value() && b_hh.has_value() ? at::Tensor() : at::zeros({G * d.H}, input.options());
  const at::Tensor bi = b_ih.has_value() ? b_ih->contiguous() : zeros;
  const at::Tensor bh = b_hh.has_value() ? b_hh->contiguous() : zeros;
  if constexpr (Cell::kRecurrentBiasInside) {
    t.bias_x = bi;
    t.bias_h = bh;
  } else {
    t.bias_x = b_hh.has_value() ? bi + bh : bi;
  }
  const auto opts = input.options();
  t.output = at::empty({d.T, d.B, d.P}, opts);
  t.saved = at::empty({d.T, d.B, saved_blocks(S, w_hr) * d.H}, opts);
  if (d.T > 0 && d.B > 0) Backend::template forward<Cell>(t);
  // The final state: where the direction ends (time T - 1, or 0 in reverse).
  ForwardResult r{t.output, {}, {}, t.saved};
  const int64_t last = reverse ? 0 : d.T - 1;
  r.h_n = d.T > 0 ? t.output.select(0, last).clone() : t.h0.clone();
  if constexpr (kCell) {
    r.c_n = d.T > 0 ? t.saved.select(0, last).narrow(1, Cell::kCellIndex * d.H, d.H).clone() : t.c0.clone();
  }
  return r;
}

// -------------------------------------------------------------- backward
struct BackwardResult {
  at::Tensor grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_h_norm, grad_w_hr;
};

// sum over t of grad_hp_t^T h_{t-1} ([G*H, H]), h_{t-1} being the state that entered
// time t: h0 where the direction starts, the output of the neighbouring step
// elsewhere, zero where the row restarts.
template <class Gemms>
at::Tensor recurrent_weight_grad(const at::Tensor& grad_hp, const at::Tensor& output, const at::Tensor& h0,
                                        const at::Tensor& reset, bool reverse) {
  const int64_t T = output.size(0), B = output.size(1), H = output.size(2), GH = grad_hp.size(2);
  const at::Tensor first = reverse ? grad_hp.select(0, T - 1) : grad_hp.select(0, 0);
  if (!reset.defined()) {  // two GEMMs on views, no copy
    at::Tensor grad_w = Gemms::mm(first.t(), h0);
    if (T > 1) {
      const at::Tensor g = reverse ? grad_hp.slice(0, 0, T - 1) : grad_hp.slice(0, 1);
      const at::Tensor h = reverse ? output.slice(0, 1) : output.slice(0, 0, T - 1);
      Gemms::addmm_(grad_w, g.reshape({-1, GH}).t(), h.reshape({-1, H}));
    }
    return grad_w;
  }
  // With resets: the entering states, zeroed where the row restarts, then one GEMM.
  const at::Tensor h0_seq = h0.unsqueeze(0);
  at::Tensor h_prev = reverse ? at::cat({output.slice(0, 1), h0_seq}) : at::cat({h0_seq, output.slice(0, 0, T - 1)});
  at::Tensor restarts = reset.to(at::kBool);
  if (reverse) restarts = at::cat({restarts.slice(0, 1), at::zeros({1, B}, restarts.options())});
  h_prev.masked_fill_(restarts.unsqueeze(2), 0);
  return Gemms::mm(grad_hp.reshape({-1, GH}).t(), h_prev.reshape({-1, H}));
}

// Whether a backend computes the weight and bias gradients itself: it declares
// kOwnWeightGrads and has weight_grads<Cell>(const BackwardTensors&, BackwardResult&).
template <class Backend, class = void>
struct OwnWeightGrads : std::false_type {};
template <class Backend>
struct OwnWeightGrads<Backend, std::void_t<decltype(Backend::kOwnWeightGrads)>> : std::true_type {};

// dW_ih, dW_hh and the bias gradients as GEMMs and column sums of the backend's Gemms.
template <class Cell, class Gemms>
void gemm_weight_grads(const BackwardTensors& t, BackwardResult& r) {
  const int64_t TB = t.T * t.B, GH = Cell::kGates * t.H;
  const at::Tensor grad_x2 = t.grad_xproj.view({TB, GH});
  const at::Tensor& grad_hp = Cell::kRecurrentBiasInside ? t.grad_hp : t.grad_xproj;
  r.grad_w_ih = Gemms::mm(grad_x2.t(), t.input.view({TB, t.I}));
  r.grad_b_ih = Gemms::column_sum(grad_x2);
  r.grad_w_hh = t.T > 0 ? recurrent_weight_grad<Gemms>(grad_hp, t.output, t.h0, t.reset, t.reverse)
                        : at::zeros({GH, t.P}, t.input.options());
  r.grad_b_hh = Cell::kRecurrentBiasInside ? Gemms::column_sum(grad_hp.view({TB, GH})) : r.grad_b_ih;
}

template <class Cell, class Backend>
BackwardResult chunk_backward(const char* op, const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                              const at::Tensor& grad_c_n, const at::Tensor& input, const at::Tensor& output,
                              const at::Tensor& saved, const at::Tensor& w_ih, const at::Tensor& w_hh,
                              const at::Tensor& h0, const at::Tensor& c0, const OptTensor& reset, bool reverse,
                              bool input_needs_grad, bool record_flow, const at::Tensor& w_hr = {}) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  constexpr bool kCell = Cell::kCellIndex >= 0;
  const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const Dims d = check_dims<Cell>(op, input, w_ih, w_hh, h0, w_hr);
  check_arg(op, "grad_output", grad_output, {d.T, d.B, d.P}, input);
  check_arg(op, "output", output, {d.T, d.B, d.P}, input);
  check_arg(op, "saved", saved, {d.T, d.B, saved_blocks(S, w_hr) * d.H}, input);
  check_arg(op, "grad_h_n", grad_h_n, {d.B, d.P}, input);
  if constexpr (kCell) check_arg(op, "grad_c_n", grad_c_n, {d.B, d.H}, input);
  Backend::check_supported(op, input);
  [[maybe_unused]] const auto guard = Backend::device_guard(input);
  BackwardTensors t;
  prepare_common<Cell>(op, t, d, reverse, reset, input, w_ih, w_hh, w_hr, h0, c0);
  t.input_needs_grad = input_needs_grad;
  t.grad_output = grad_output.contiguous();
  t.grad_h_n = grad_h_n.contiguous();
  t.output = output.contiguous();
  t.saved = saved.contiguous();
  if constexpr (kCell) t.grad_c_n = grad_c_n.contiguous();
  const auto opts = input.options();
  const auto acc_opts = opts.dtype(input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  // Used only inside this call: backends may hand out a buffer reused across calls.
  t.grad_xproj = Backend::scratch(0, {d.T, d.B, G * d.H}, opts);
  if constexpr (Cell::kRecurrentBiasInside) t.grad_hp = Backend::scratch(1, {d.T, d.B, G * d.H}, opts);
  t.grad_h0 = at::empty({d.B, d.P}, opts);
  if constexpr (kCell) t.grad_c0 = at::empty({d.B, d.H}, opts);
  if (record_flow) t.grad_h_record = at::empty({d.T, d.B, d.P}, acc_opts);
  if (w_hr.defined()) t.grad_h = at::zeros({d.T, d.B, d.P}, opts);
  if (d.T == 0 || d.B == 0) {
    t.grad_xproj.zero_();
    if (t.grad_hp.defined()) t.grad_hp.zero_();
    if (t.grad_h_record.defined()) t.grad_h_record.zero_();
    t.grad_h0.copy_(t.grad_h_n);
    if constexpr (kCell) t.grad_c0.copy_(t.grad_c_n);
  } else {
    Backend::template backward<Cell>(t);
  }
  if (t.reset.defined() && !reverse && d.T > 0) {  // rows that restart at t = 0 take nothing from h0 (c0)
    const at::Tensor first = t.reset.select(0, 0).to(at::kBool).unsqueeze(1);
    t.grad_h0.masked_fill_(first, 0);
    if constexpr (kCell) t.grad_c0.masked_fill_(first, 0);
  }

  BackwardResult r;
  r.grad_h0 = t.grad_h0;
  r.grad_c0 = t.grad_c0;
  const int64_t TB = d.T * d.B, GH = G * d.H;
  const at::Tensor grad_x2 = t.grad_xproj.view({TB, GH});
  r.grad_input = !input_needs_grad       ? at::empty({0}, opts)
                 : t.grad_input.defined() ? t.grad_input
                                          : Backend::mm(grad_x2, t.w_ih).view({d.T, d.B, d.I});
  if constexpr (OwnWeightGrads<Backend>::value) {
    Backend::template weight_grads<Cell>(t, r);  // the CPU (chunk_cpu.cpp)
  } else {
    gemm_weight_grads<Cell, Backend>(t, r);
  }
  if (w_hr.defined()) {  // dW_hr = sum_t (dL/dh_t)^T r_t, r_t the last saved block (a strided view)
    const int64_t width = t.saved.size(2);
    r.grad_w_hr = Backend::mm(t.grad_h.view({TB, d.P}).t(), t.saved.view({TB, width}).narrow(1, width - d.H, d.H));
  }
  r.grad_h_norm = record_flow ? at::linalg_vector_norm(t.grad_h_record, 2, at::IntArrayRef{1, 2})
                              : at::empty({0}, acc_opts);
  return r;
}

// ------------------------------------------------------ the ops, per cell
// Typed signatures of csrc/register.cpp, each forwarding to the drivers above.
template <class Backend>
struct ChunkOps {
  static std::tuple<at::Tensor, at::Tensor> rnn_forward(const at::Tensor& input, const at::Tensor& w_ih,
                                                        const at::Tensor& w_hh, const OptTensor& b_ih,
                                                        const OptTensor& b_hh, const at::Tensor& h0,
                                                        const OptTensor& reset, bool reverse, bool relu) {
    return BOOL_SWITCH(relu, kRelu, [&] {
      auto r = chunk_forward<RNNCell<kRelu>, Backend>("tbptt_ext::rnn_chunk_forward", input, w_ih, w_hh, b_ih, b_hh,
                                                      h0, at::Tensor(), reset, reverse);
      return std::make_tuple(r.output, r.h_n);
    });
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_backward(
      const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input, const at::Tensor& output,
      const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h0, const OptTensor& reset, bool reverse,
      bool relu, bool input_needs_grad, bool record_flow) {
    TORCH_CHECK(output.dim() == 3, "tbptt_ext::rnn_chunk_backward: output must be [T, B, H], got shape ",
                output.sizes());
    return BOOL_SWITCH(relu, kRelu, [&] {
      const at::Tensor none_saved = at::empty({output.size(0), output.size(1), 0}, output.options());
      auto r = chunk_backward<RNNCell<kRelu>, Backend>("tbptt_ext::rnn_chunk_backward", grad_output, grad_h_n,
                                                       at::Tensor(), input, output, none_saved, w_ih, w_hh, h0,
                                                       at::Tensor(), reset, reverse, input_needs_grad, record_flow);
      return std::make_tuple(r.grad_input, r.grad_h0, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_h_norm);
    });
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward(
      const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
      const OptTensor& b_hh, const at::Tensor& h0, const at::Tensor& c0, const OptTensor& reset, bool reverse,
      const OptTensor& w_hr) {
    auto r = chunk_forward<LSTMCell, Backend>("tbptt_ext::lstm_chunk_forward", input, w_ih, w_hh, b_ih, b_hh, h0, c0,
                                              reset, reverse, w_hr.value_or(at::Tensor()));
    return {r.output, r.h_n, r.c_n, r.saved};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
  lstm_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                const at::Tensor& input, const at::Tensor& output, const at::Tensor& saved, const at::Tensor& w_ih,
                const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0, const OptTensor& reset,
                bool reverse, bool input_needs_grad, bool record_flow, const OptTensor& w_hr) {
    auto r = chunk_backward<LSTMCell, Backend>("tbptt_ext::lstm_chunk_backward", grad_output, grad_h_n, grad_c_n,
                                               input, output, saved, w_ih, w_hh, h0, c0, reset, reverse,
                                               input_needs_grad, record_flow, w_hr.value_or(at::Tensor()));
    const at::Tensor grad_w_hr = r.grad_w_hr.defined() ? r.grad_w_hr : at::empty({0}, input.options());
    return {r.grad_input, r.grad_h0, r.grad_c0, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_h_norm, grad_w_hr};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward(const at::Tensor& input, const at::Tensor& w_ih,
                                                                    const at::Tensor& w_hh, const OptTensor& b_ih,
                                                                    const OptTensor& b_hh, const at::Tensor& h0,
                                                                    const OptTensor& reset, bool reverse) {
    auto r = chunk_forward<GRUCell, Backend>("tbptt_ext::gru_chunk_forward", input, w_ih, w_hh, b_ih, b_hh, h0,
                                             at::Tensor(), reset, reverse);
    return {r.output, r.h_n, r.saved};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
  gru_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
               const at::Tensor& output, const at::Tensor& saved, const at::Tensor& w_ih, const at::Tensor& w_hh,
               const at::Tensor& h0, const OptTensor& reset, bool reverse, bool input_needs_grad, bool record_flow) {
    auto r = chunk_backward<GRUCell, Backend>("tbptt_ext::gru_chunk_backward", grad_output, grad_h_n, at::Tensor(),
                                              input, output, saved, w_ih, w_hh, h0, at::Tensor(), reset, reverse,
                                              input_needs_grad, record_flow);
    return {r.grad_input, r.grad_h0, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_b_hh, r.grad_h_norm};
  }

  static void register_all(torch::Library& m) {
    m.impl("rnn_chunk_forward", &rnn_forward);
    m.impl("rnn_chunk_backward", &rnn_backward);
    m.impl("lstm_chunk_forward", &lstm_forward);
    m.impl("lstm_chunk_backward", &lstm_backward);
    m.impl("gru_chunk_forward", &gru_forward);
    m.impl("gru_chunk_backward", &gru_backward);
  }
};

}  // namespace tbptt
