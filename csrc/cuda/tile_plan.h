// The throughput path's tiling (tile_kernels.cuh), host and device alike and free of
// CUDA headers, so that tests/test_tile_plan.py checks the planner on the CPU: the
// launch constants, the tile shape of a call, the shared-memory layout of a block, and
// plan_tiles, which picks the tiling.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../cells/activations.h"

namespace tbptt::cuda {

constexpr int kTileThreads = 256;
constexpr int kTileWarps = kTileThreads / 32;
constexpr int kChunk = 64;        // columns of the left operand staged per pass while planning
constexpr int kMaxFragments = 8;  // 16x16 accumulator tiles per warp (tensor cores)
constexpr int kMaxExact = 16;     // outputs per thread (CUDA cores)

// How the recurrent products run.
enum class MatMul { kHalf16, kTf32, kExact };

// Shapes of one launch (forward or backward), chosen on the host (plan_tiles).
struct TileShape {
  int rows = 0;         // R: batch rows per row tile, a multiple of 16
  int units = 0;        // U: hidden units per block
  int row_tiles = 0;    // ceil(B / R): gridDim.y
  int unit_tiles = 0;   // ceil(H / U): gridDim.x, the blocks that meet at each barrier
  int k_pad = 0;        // the product's reduction length (H forward, G*H backward), padded to 16
  int n_pad = 0;        // the product's columns per block (G*U forward, U backward), padded to 16
  int stage = kChunk;   // columns of the left operand staged per pass: k_pad where it fits (one
                        // pass, every load in flight at once), else fewer, a multiple of 16
  bool cluster = false; // the row tile is one cluster (cluster.sync) rather than counter-synchronised
};

// Shared-memory layout, identical on the host (sizing) and the device (carving):
// the resident W_hh slice [k_pad, ldw] (Scalar), the staged left operand [R, lda]
// (Scalar), the product [R, ldo] (Acc), two own-unit vectors [R, U] (Acc).
template <typename Scalar, typename Acc>
struct TileSmem {
  static constexpr int kSkew = 16 / static_cast<int>(sizeof(Scalar));  // one 16-byte pad per row (banks)
  int ldw, lda, ldo;
  size_t w_off, a_off, out_off, first_off, second_off, bytes;
  TBPTT_HD static size_t align(size_t x) { return (x + 127) / 128 * 128; }
  TBPTT_HD explicit TileSmem(const TileShape& s)
      : ldw(s.n_pad + kSkew), lda(s.stage + kSkew), ldo(s.n_pad + 4) {
    w_off = 0;
    a_off = align(w_off + static_cast<size_t>(s.k_pad) * ldw * sizeof(Scalar));
    out_off = align(a_off + static_cast<size_t>(s.rows) * lda * sizeof(Scalar));
    first_off = align(out_off + static_cast<size_t>(s.rows) * ldo * sizeof(Acc));
    second_off = align(first_off + static_cast<size_t>(s.rows) * s.units * sizeof(Acc));
    bytes = align(second_off + static_cast<size_t>(s.rows) * s.units * sizeof(Acc));
  }
};

// The tiling of a call: the (R, U) whose two launches fit shared memory and the
// accumulator limits with at most one block per multiprocessor, at the lowest estimated
// time per step (tensor-core or CUDA-core MACs plus the staged bytes, per block), each
// launch staging kChunk columns per pass; then each launch stages as many columns per
// pass as its shared memory allows (widest_stage). Every pass waits for its loads from
// L2 and crosses two block barriers: with 64 columns per pass the LSTM backward at
// H = 256 (K = 1024) made 16 of them per step, one after the other.
// The rate constants are estimates, not fitted: the plans ran correctly on an H200, and
// the measured speed of each path is in benchmarks/RESULTS.md. rows = 0: nothing fits.
struct TilePlan {
  TileShape forward, backward;
  size_t forward_smem = 0, backward_smem = 0;
};

inline int round_up(int64_t x, int m) { return static_cast<int>((x + m - 1) / m * m); }

// s with the fewest passes whose stage keeps its shared memory within the limit: all of
// k_pad in one, else k_pad split evenly into 2, 3, ... passes of a multiple of 16 columns,
// down to kChunk columns (or k_pad where that is less), which the planner already fitted.
template <typename Scalar, typename Acc>
TileShape widest_stage(TileShape s, size_t smem_limit) {
  for (int passes = 1;; ++passes) {
    s.stage = round_up((s.k_pad + passes - 1) / passes, 16);
    if (s.stage <= kChunk || TileSmem<Scalar, Acc>(s).bytes <= smem_limit) return s;
  }
}

template <typename Scalar, typename Acc, MatMul kMath>
TilePlan plan_tiles(int64_t B, int64_t H, int G, int sms, size_t smem_limit, bool clusters) {
  TilePlan best;
  double best_cost = 0;
  const int max_outputs = kMath == MatMul::kExact ? kTileThreads * kMaxExact : kTileWarps * kMaxFragments * 16 * 16;
  // MACs per ns per SM and staged bytes per ns per SM (estimates, not measured here).
  const double mac_rate = kMath == MatMul::kHalf16 ? 1000.0 : kMath == MatMul::kTf32 ? 500.0
                                                                : sizeof(Acc) == 8 ? 60.0 : 120.0;
  const double byte_rate = 100.0;
  for (int R = 16; R <= 128 && R <= round_up(B, 16); R *= 2) {
    const int64_t row_tiles = (B + R - 1) / R;
    if (row_tiles > sms) continue;
    const int64_t max_unit_tiles = sms / row_tiles;
    for (int64_t unit_tiles = 1; unit_tiles <= max_unit_tiles && unit_tiles <= H; ++unit_tiles) {
      const int U = static_cast<int>((H + unit_tiles - 1) / unit_tiles);
      if ((H + U - 1) / U != unit_tiles) continue;  // the same U with fewer blocks was tried
      TileShape f{R, U, static_cast<int>(row_tiles), static_cast<int>(unit_tiles), round_up(H, 16), round_up(G * U, 16)};
      TileShape b{R, U, static_cast<int>(row_tiles), static_cast<int>(unit_tiles), round_up(G * H, 16), round_up(U, 16)};
      f.cluster = b.cluster = clusters && unit_tiles <= 8;
      if (R * f.n_pad > max_outputs || R * b.n_pad > max_outputs) continue;
      const size_t fs = TileSmem<Scalar, Acc>(f).bytes, bs = TileSmem<Scalar, Acc>(b).bytes;
      if (fs > smem_limit || bs > smem_limit) continue;
      const double macs = static_cast<double>(R) * (static_cast<double>(f.k_pad) * f.n_pad + static_cast<double>(b.k_pad) * b.n_pad);
      const double bytes = static_cast<double>(R) * (f.k_pad + b.k_pad) * sizeof(Scalar);
      const double barrier_ns = unit_tiles == 1 ? 0.0 : f.cluster ? 600.0 : 1100.0;
      const double cost = macs / mac_rate + bytes / byte_rate + 2 * barrier_ns;
      if (best.forward.rows == 0 || cost < best_cost) {
        best = TilePlan{f, b, fs, bs};
        best_cost = cost;
      }
    }
  }
  if (best.forward.rows != 0) {
    best.forward = widest_stage<Scalar, Acc>(best.forward, smem_limit);
    best.backward = widest_stage<Scalar, Acc>(best.backward, smem_limit);
    best.forward_smem = TileSmem<Scalar, Acc>(best.forward).bytes;
    best.backward_smem = TileSmem<Scalar, Acc>(best.backward).bytes;
  }
  return best;
}

}  // namespace tbptt::cuda
