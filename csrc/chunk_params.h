// Raw-pointer parameters of one chunk's recurrence, shared by the CPU step loops and
// the CUDA kernels (no torch headers). The host driver (chunk_ops.h) fills them.
//
// Shapes: T steps, B batch, H hidden, G = Cell::kGates, S = Cell::kSaved. Sequence
// tensors are time-major and contiguous: element (t, b, k) of a [T, B, W] tensor is
// at (t * B + b) * W + k (the CPU's grad_xproj / grad_hp: rows further apart, below).
// Processing step s runs time t = time_of(s): s in the forward direction, T - 1 - s in
// the reverse direction of a bidirectional layer.
//
// Reset mask: reset[t * B + b] != 0 says row b starts a new sequence at time t. The
// state entering the step is then zero (h_prev = c_prev = 0, no W_hh product) and no
// gradient flows back across it. Forward direction: the state entering time t restarts
// if reset[t] (t = 0 included: the initial state is dropped). Reverse direction: the
// state carried from time t + 1 into t restarts if reset[t + 1]; the initial state
// always enters at t = T - 1.
#pragma once

#include <cstdint>

#include "cells/activations.h"

namespace tbptt {

template <typename Scalar>
struct ChunkParamsBase {
  int64_t T = 0, B = 0, H = 0;
  int64_t P = 0;  // width of h: H, or the projection size (LSTM proj_size; CPU only)
  bool reverse = false;
  const uint8_t* reset = nullptr;  // [T, B] or null
  const Scalar* h0 = nullptr;      // [B, H]
  const Scalar* c0 = nullptr;      // [B, H], cells with a cell state
  const Scalar* bias_h = nullptr;  // [G*H] b_hh of kRecurrentBiasInside cells (zeros without bias), else null

  TBPTT_HD int64_t time_of(int64_t s) const { return reverse ? T - 1 - s : s; }
  // With a projection (P < H) the cell's output r_t is one more saved block.
  TBPTT_HD bool projected() const { return P != H; }
  TBPTT_HD int64_t saved_width(int cell_saved_blocks) const { return (cell_saved_blocks + (projected() ? 1 : 0)) * H; }

  // Whether the state entering processing step s is zero for row b.
  TBPTT_HD bool restarts(int64_t s, int64_t b) const {
    if (reset == nullptr) return false;
    if (!reverse) return reset[s * B + b] != 0;
    return s > 0 && reset[(T - s) * B + b] != 0;
  }
};

template <typename Scalar>
struct ForwardParams : ChunkParamsBase<Scalar> {
  const Scalar* xproj = nullptr;   // [T, B, G*H]  x_t W_ih^T, no bias
  const Scalar* bias_x = nullptr;  // [G*H] input-side bias: b_ih (+ b_hh unless inside), zeros without bias
  Scalar* output = nullptr;        // [T, B, H]  h_t
  Scalar* saved = nullptr;         // [T, B, S*H]
};

// Acc: the arithmetic type (float for half types on CUDA; the scalar type otherwise).
template <typename Scalar, typename Acc = Scalar>
struct BackwardParams : ChunkParamsBase<Scalar> {
  const Scalar* grad_output = nullptr;  // [T, B, H]
  const Scalar* grad_h_n = nullptr;     // [B, H]
  const Scalar* grad_c_n = nullptr;     // [B, H], cells with a cell state
  const Scalar* output = nullptr;       // [T, B, H] as written by the forward
  const Scalar* saved = nullptr;        // [T, B, S*H] as written by the forward
  // (grad_xproj, grad_hp: on the CPU, rows (t, b) are padded_row_length(G*H) apart, not G*H)
  Scalar* grad_xproj = nullptr;         // [T, B, G*H]  dL/d(input-side pre-activation)
  Scalar* grad_hp = nullptr;            // [T, B, G*H]  dL/d(h_{t-1} W_hh^T + b_hh), kRecurrentBiasInside only
  Scalar* grad_h = nullptr;             // [T, B, P]  dL/dh_t, with a projection (CPU)
  Scalar* grad_h0 = nullptr;            // [B, H]  (zero where the first step restarts: the driver)
  Scalar* grad_c0 = nullptr;            // [B, H], cells with a cell state
  Acc* grad_h_record = nullptr;         // [T, B, H] or null: dL/dh_t (output gradient + carry) per step
};

}  // namespace tbptt
