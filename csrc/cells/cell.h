// What a cell is: the traits interface every CPU loop and CUDA kernel is written
// against. Each cell is one header in this folder (rnn.h, lstm.h, gru.h) defining a
// struct that derives from CellShape<...> (the constants below) and has the two static
// functions below; nothing else in csrc/ knows which cell it runs.
//
// Shapes: T steps, B batch, I input features, H hidden units, G = kGates, S = kSaved.
//   W_ih [G*H, I], W_hh [G*H, H], b_ih and b_hh [G*H]: gate block g is rows [g*H, (g+1)*H)
//   (torch.nn's layout and gate order).
//   saved [T, B, S*H]: what the forward keeps for the backward, block s of a row at
//   columns [s*H, (s+1)*H).
//
//   kGates          gate blocks per unit.
//   kSaved          values per unit and step kept for the backward (may be 0).
//   kCellIndex      the saved block holding c_t for cells with a cell state, else -1.
//   kRecurrentBiasInside
//                   b_hh is added to h_{t-1} W_hh^T before the cell combines the two
//                   sides (GRU: r * (W_hn h + b_hn)); otherwise b_ih + b_hh are simply
//                   added to the input side.
//   kDirectHiddenGrad
//                   dL/dh_{t-1} has a term besides grad_hp W_hh (GRU: z * dL/dh_t).
//
//   activation(g)   the activation of gate g applied to its summed pre-activation
//                   x[g] + hp[g] (Activation::kNone: the gate needs more, see combine).
//   combine(a, x, hp, h_prev, c_prev, saved, h)
//       the rest of one unit's step. a[g]: gate g activated (gates with an activation);
//       x[g]: x_t W_ih^T + input-side biases, hp[g]: h_{t-1} W_hh^T (+ b_hh if
//       kRecurrentBiasInside), read for kNone gates. Writes saved[S] (c_t into
//       saved[kCellIndex]) and h_t. forward() below is activation then combine; the CPU
//       runs them as separate passes over a row (one activation per loop keeps the
//       vector registers from spilling), the CUDA kernels per unit.
//   backward(grad_h, grad_c, saved, h, h_prev, c_prev, grad_x, grad_hp, grad_h_prev, grad_c_prev)
//       grad_h = dL/dh_t (output gradient plus the carry from step t+1), grad_c = dL/dc_t
//       carried from t+1. Writes grad_x[G] = dL/dx-side, grad_hp[G] = dL/dhp (equal to
//       grad_x unless kRecurrentBiasInside), the direct part of dL/dh_{t-1} and dL/dc_{t-1}.
//
// The functions are templates over the arithmetic type (float, double) and run on
// the host and the device. A state that restarts (reset mask) enters as h_prev =
// c_prev = 0 and hp = 0 (+ b_hh): the cells need not know about it.
#pragma once

#include <utility>

#include "activations.h"

namespace tbptt {

// Number of elements of a per-unit array of a cell (at least 1: C++ has no empty arrays).
constexpr int array_size(int n) { return n > 0 ? n : 1; }

// The constants above, given by each cell as its base class.
template <int Gates, int Saved, int CellIndex, bool RecurrentBiasInside, bool DirectHiddenGrad>
struct CellShape {
  static constexpr int kGates = Gates;
  static constexpr int kSaved = Saved;
  static constexpr int kCellIndex = CellIndex;
  static constexpr bool kRecurrentBiasInside = RecurrentBiasInside;
  static constexpr bool kDirectHiddenGrad = DirectHiddenGrad;
  // What the loops must load for a unit: h_{t-1} enters the cell itself only for cells
  // with a direct term; cells that save nothing read h_t (the output) in the backward.
  static constexpr bool kUsesHPrev = DirectHiddenGrad;
  static constexpr bool kBackwardUsesOutput = Saved == 0;
};

// a[g] = activation(g)(x[g] + hp[g]) for every gate g (the activation a template argument).
template <class Cell, typename T, int... G>
TBPTT_HD void activate_gates(T (&a)[Cell::kGates], const T (&x)[Cell::kGates], const T (&hp)[Cell::kGates],
                             std::integer_sequence<int, G...>) {
  ((a[G] = activate<Cell::activation(G)>(x[G] + hp[G])), ...);
}

// Gate pack/unpack: element j of each of the N blocks of a row (blocks `stride` apart,
// `row` pointing at block 0's element j), converted on the way (the row layout of
// xproj, W_hh products, saved and gradients).
template <int N, typename T, typename Src, typename Convert>
TBPTT_HD void load_blocks(T (&dst)[array_size(N)], const Src* row, int64_t stride, Convert convert) {
  TBPTT_UNROLL
  for (int g = 0; g < N; ++g) dst[g] = convert(row[g * stride]);
}

template <int N, typename T, typename Dst, typename Convert>
TBPTT_HD void store_blocks(Dst* row, int64_t stride, const T (&src)[array_size(N)], Convert convert) {
  TBPTT_UNROLL
  for (int g = 0; g < N; ++g) row[g * stride] = convert(src[g]);
}

// One unit's forward step: x[G], hp[G] as for combine; writes saved[S] and h.
template <class Cell, typename T>
TBPTT_HD void forward(const T (&x)[Cell::kGates], const T (&hp)[Cell::kGates], T h_prev, T c_prev,
                      T (&saved)[array_size(Cell::kSaved)], T& h) {
  T a[Cell::kGates];
  activate_gates<Cell>(a, x, hp, std::make_integer_sequence<int, Cell::kGates>{});
  Cell::combine(a, x, hp, h_prev, c_prev, saved, h);
}

}  // namespace tbptt
