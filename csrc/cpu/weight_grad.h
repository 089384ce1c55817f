// The chunk's weight gradients on the CPU: C_g = A^T B_g for one or more column groups
// g, and the column sums of A, in one pass over A.
//
//   A   [K, M]    grad_xproj (or grad_hp): one row per (t, b), K = T * B, M = G * H
//   B_g [K, N_g]  a row per (t, b) from anywhere (the entering state h_{t-1}, x_t; a
//                 null row is zeros, e.g. where the state restarts)
//   C_g [M, N_g]  dW_hh, dW_ih;  colsum [M]: the bias gradient
//
// With MKL these are three passes over A (dW_hh, dW_ih, the bias sum; A is 8 MB for the
// main job) and, with resets, a masked [T, B, H] copy of the entering states. Here A is
// read once and B where it lies. The arithmetic runs about as fast as MKL's sgemm on the
// AVX2 EPYC this was written on (2-4 % faster for the main job's shapes, 1 and 2 threads).
//
// The usual blocked GEMM (Goto / BLIS) with the recurrence's micro-kernel (an MR x NR
// tile of C in registers; recurrent_matmul.h): K in blocks of kKc rows, B packed into
// panels of NR columns ([kc][NR], zero-padded, one group after the other), A's columns
// in tiles of MR, packed per K block ([kc][MR]) and added to the column sums as they are
// read. The team (thread_team.h) packs B's panels, then takes rounds of A's tiles; each
// round runs over all the K blocks with each B panel passing over its tiles from L1.
// Each element of C is one fixed-order sum: results do not depend on the thread count.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "isa.h"
#include "recurrent_matmul.h"
#include "thread_team.h"
#include "workspace.h"

namespace tbptt::cpu {

namespace wgrad {

// The tile and panel shapes of the recurrence's kernel (recurrent_matmul.h).
using matmul::kTileRows;
using matmul::kVectorsPerPanel;
using matmul::panel_width;
using matmul::tile_rows;
constexpr int64_t kKc = 256;  // rows of K per block: a B panel (kc x NR) stays in L1

// c[rows, cols] (+)= sum over k < kc of a[k][0:MR]^T b[k][0:NR]; a, b packed.
template <Isa kIsa, typename T>
TBPTT_ALWAYS_INLINE void micro_kernel(int64_t kc, const T* __restrict__ a, const T* __restrict__ b, bool accumulate,
                                      T* __restrict__ c, int64_t ldc, int64_t rows, int64_t cols) {
  using V = typename VecType<T, kVectorBytes<kIsa>>::type;
  constexpr int W = kVectorBytes<kIsa> / sizeof(T), NV = kVectorsPerPanel, NR = NV * W, MR = kTileRows<kIsa>;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NV; ++q) acc[r][q] = V{};
  // (the tile of c is read after the loop: fetched now, its latency hides behind the loop)
  if (accumulate)
    for (int64_t r = 0; r < rows; ++r) __builtin_prefetch(c + r * ldc);
  matmul::accumulate_panel<kIsa, T, MR>(acc, a, 1, MR, b, 0, kc);
  if (rows == MR && cols == NR) {
    for (int r = 0; r < MR; ++r)
      for (int q = 0; q < NV; ++q) {
        V* out = reinterpret_cast<V*>(c + r * ldc + q * W);
        *out = accumulate ? *out + acc[r][q] : acc[r][q];
      }
    return;
  }
  T buf[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NV; ++q) *reinterpret_cast<V*>(&buf[r][q * W]) = acc[r][q];
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t v = 0; v < cols; ++v) c[r * ldc + v] = accumulate ? c[r * ldc + v] + buf[r][v] : buf[r][v];
}

// Packs rows [k0, k0 + kc) of columns [n0, n0 + cols) of a group into one panel [kc][NR].
template <Isa kIsa, typename T>
TBPTT_ALWAYS_INLINE void pack_b_panel(const T* const* rows, int64_t k0, int64_t kc, int64_t n0, int64_t cols,
                                      T* __restrict__ panel) {
  constexpr int64_t NR = panel_width<kIsa, T>();
  for (int64_t k = 0; k < kc; ++k) {
    const T* __restrict__ row = rows[k0 + k];
    T* __restrict__ dst = panel + k * NR;
    if (row == nullptr) {
      for (int64_t v = 0; v < NR; ++v) dst[v] = T(0);
    } else if (cols == NR) {
      for (int64_t v = 0; v < NR; ++v) dst[v] = row[n0 + v];
    } else {
      for (int64_t v = 0; v < NR; ++v) dst[v] = v < cols ? row[n0 + v] : T(0);
    }
  }
}

// Packs tiles [i0, i1) of MR columns of A, rows [k0, k0 + kc), into [tile][kc][MR]
// (zero-padded past M), and adds each column's kc elements to colsum (if not null).
template <Isa kIsa, typename T>
TBPTT_ALWAYS_INLINE void pack_a_tiles(const T* a, int64_t lda, int64_t M, int64_t k0, int64_t kc, int64_t i0,
                                      int64_t i1, T* __restrict__ packed, double* colsum) {
  constexpr int MR = kTileRows<kIsa>;
  const int64_t m0 = i0 * MR, m1 = std::min(M, i1 * MR), width = m1 - m0;
  T partial[MR * 32];  // column sums of this block in T, then added once to colsum
  const bool sums = colsum != nullptr;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t mi = i * MR, cols = std::min<int64_t>(MR, M - mi);
    T* __restrict__ dst = packed + (i - i0) * kc * MR;
    if (cols == MR) {
      for (int64_t k = 0; k < kc; ++k) std::memcpy(dst + k * MR, a + (k0 + k) * lda + mi, MR * sizeof(T));
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const T* __restrict__ row = a + (k0 + k) * lda + mi;
        for (int r = 0; r < MR; ++r) dst[k * MR + r] = r < cols ? row[r] : T(0);
      }
    }
  }
  if (!sums) return;
  // The sums read A again (the block was just read: it is in L1/L2), 32 tiles' columns
  // at a time, each one fixed-order sum over the block's rows.
  for (int64_t c0 = 0; c0 < width; c0 += MR * 32) {
    const int64_t n = std::min<int64_t>(MR * 32, width - c0);
    for (int64_t v = 0; v < n; ++v) partial[v] = T(0);
    for (int64_t k = 0; k < kc; ++k) {
      const T* __restrict__ row = a + (k0 + k) * lda + m0 + c0;
      TBPTT_IVDEP
      for (int64_t v = 0; v < n; ++v) partial[v] += row[v];
    }
    for (int64_t v = 0; v < n; ++v) colsum[m0 + c0 + v] += static_cast<double>(partial[v]);
  }
}

// Tiles [i0, i1) against every panel of the block: C rows of those tiles (+)= ...
template <Isa kIsa, typename T>
TBPTT_ALWAYS_INLINE void multiply_tiles(const T* packed_a, int64_t kc, int64_t M, int64_t i0, int64_t i1,
                                        const T* packed_b, const int64_t* panel_group, const int64_t* panel_n0,
                                        int64_t panels, T* const* c, const int64_t* ldc, const int64_t* n,
                                        bool accumulate) {
  constexpr int MR = kTileRows<kIsa>;
  constexpr int64_t NR = panel_width<kIsa, T>();
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t g = panel_group[p], n0 = panel_n0[p], cols = std::min<int64_t>(NR, n[g] - n0);
    const T* b = packed_b + p * kc * NR;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t m = i * MR, rows = std::min<int64_t>(MR, M - m);
      micro_kernel<kIsa, T>(kc, packed_a + (i - i0) * kc * MR, b, accumulate, c[g] + m * ldc[g] + n0, ldc[g], rows,
                            cols);
    }
  }
}

template <Isa kIsa, typename T>
TBPTT_ALWAYS_INLINE void pack_b_panels(const T* const* const* rows, const int64_t* panel_group,
                                       const int64_t* panel_n0, const int64_t* n, int64_t k0, int64_t kc, int64_t p0,
                                       int64_t p1, T* packed_b) {
  constexpr int64_t NR = panel_width<kIsa, T>();
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t g = panel_group[p];
    pack_b_panel<kIsa, T>(rows[g], k0, kc, panel_n0[p], std::min<int64_t>(NR, n[g] - panel_n0[p]),
                          packed_b + p * kc * NR);
  }
}
TBPTT_ISA_DISPATCH(pack_b_panels)

template <Isa kIsa, typename T>
TBPTT_ALWAYS_INLINE void pack_and_multiply(const T* a, int64_t lda, int64_t M, int64_t k0, int64_t kc, int64_t i0,
                                           int64_t i1, T* packed_a, double* colsum, const T* packed_b,
                                           const int64_t* panel_group, const int64_t* panel_n0, int64_t panels,
                                           T* const* c, const int64_t* ldc, const int64_t* n, bool accumulate) {
  pack_a_tiles<kIsa, T>(a, lda, M, k0, kc, i0, i1, packed_a, colsum);
  multiply_tiles<kIsa, T>(packed_a, kc, M, i0, i1, packed_b, panel_group, panel_n0, panels, c, ldc, n, accumulate);
}
TBPTT_ISA_DISPATCH(pack_and_multiply)

}  // namespace wgrad

// One column group of B and its result: rows[k] points at row k's n elements (nullptr:
// a row of zeros); c [M, n] with rows ldc apart is overwritten.
template <typename T>
struct GradGroup {
  std::vector<const T*> rows;
  int64_t n = 0;
  T* c = nullptr;
  int64_t ldc = 0;
};

// c_g = a^T B_g for every group, and colsum[m] = sum over k of a[k, m] (if colsum is
// not null; double, overwritten). a: [K, M], rows lda apart.
template <typename T>
void weight_grads(const T* a, int64_t lda, int64_t K, int64_t M, const std::vector<GradGroup<T>>& groups,
                  double* colsum) {
  const Isa isa = cpu_isa();
  const int64_t MR = wgrad::tile_rows(isa), NR = wgrad::panel_width(isa, sizeof(T));
  const int64_t G = static_cast<int64_t>(groups.size());
  std::vector<int64_t> panel_group, panel_n0, n(G), ldc(G);
  std::vector<T*> c(G);
  std::vector<const T* const*> rows(G);
  int64_t N = 0;
  for (int64_t g = 0; g < G; ++g) {
    n[g] = groups[g].n, ldc[g] = groups[g].ldc, c[g] = groups[g].c, rows[g] = groups[g].rows.data();
    N += n[g];
    TORCH_INTERNAL_ASSERT(static_cast<int64_t>(groups[g].rows.size()) == K);
    for (int64_t n0 = 0; n0 < n[g]; n0 += NR) panel_group.push_back(g), panel_n0.push_back(n0);
  }
  if (colsum != nullptr) std::fill(colsum, colsum + M, 0.0);
  if (K == 0) {  // a sum over nothing
    for (int64_t g = 0; g < G; ++g)
      for (int64_t m = 0; m < M; ++m) std::fill(c[g] + m * ldc[g], c[g] + m * ldc[g] + n[g], T(0));
    return;
  }
  const int64_t panels = static_cast<int64_t>(panel_group.size()), tiles = (M + MR - 1) / MR;
  const int64_t blocks = (K + wgrad::kKc - 1) / wgrad::kKc, kc_max = std::min(K, wgrad::kKc);
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  // K in spans of up to 4 MB of packed B. Per span the team packs its B ([block][panel]
  // [kc][NR]), then takes rounds of A's tiles, each over the span's K blocks: the round's
  // rows of C (at most 128 KB) stay in L2 from the span's first K block to its last, and
  // the team synchronises twice per span (once per call at the main job's size), not
  // twice per K block.
  const int64_t elem = static_cast<int64_t>(sizeof(T)), panel_size = kc_max * NR;
  const int64_t span_blocks = std::clamp<int64_t>((int64_t{4} << 20) / std::max<int64_t>(1, panels * panel_size * elem),
                                                  1, blocks);
  const int64_t spans = (blocks + span_blocks - 1) / span_blocks;
  // A round: at most 128 KB of C rows and 128 KB of packed A (both stay in L2), and at
  // most an eighth of the tiles (the team balances the rounds among the threads).
  constexpr int64_t kL2Share = int64_t{128} << 10;
  const int64_t round_tiles =
      std::clamp<int64_t>(std::min(kL2Share / std::max<int64_t>(1, MR * N * elem), kL2Share / (kc_max * MR * elem)), 1,
                          std::max<int64_t>(1, (tiles + 7) / 8));
  const int64_t rounds = (tiles + round_tiles - 1) / round_tiles;
  T* const packed_b =
      workspace(Scratch::kPackedB, {span_blocks * panels * panel_size}, options).template data_ptr<T>();
  const auto span_of = [&](int64_t span) {  // its K blocks [first, last)
    return std::pair{span * span_blocks, std::min(blocks, (span + 1) * span_blocks)};
  };
  run_steps(spans, std::max<int64_t>(1, M * N * std::min(K, span_blocks * wgrad::kKc)),
            phase(span_blocks * panels,
                  [&](int64_t span, int64_t q0, int64_t q1) {
                    const auto [first, last] = span_of(span);
                    for (int64_t q = q0; q < q1; ++q) {  // item q: K block first + q / panels, panel q % panels
                      const int64_t s = first + q / panels, p = q % panels, k0 = s * wgrad::kKc;
                      if (s >= last) break;
                      wgrad::pack_b_panels_dispatch<T>(isa, rows.data(), panel_group.data(), panel_n0.data(), n.data(),
                                                       k0, std::min(wgrad::kKc, K - k0), p, p + 1,
                                                       packed_b + (s - first) * panels * panel_size);
                    }
                  }),
            phase(rounds, [&](int64_t span, int64_t r0, int64_t r1) {
              const auto [first, last] = span_of(span);
              T* const packed_a =
                  workspace(Scratch::kPackedA, {round_tiles * kc_max * MR}, options).template data_ptr<T>();
              for (int64_t r = r0; r < r1; ++r) {
                const int64_t i0 = r * round_tiles, i1 = std::min(tiles, i0 + round_tiles);
                for (int64_t s = first; s < last; ++s) {
                  const int64_t k0 = s * wgrad::kKc, kc = std::min(wgrad::kKc, K - k0);
                  wgrad::pack_and_multiply_dispatch<T>(isa, a, lda, M, k0, kc, i0, i1, packed_a, colsum,
                                                       packed_b + (s - first) * panels * panel_size,
                                                       panel_group.data(), panel_n0.data(), panels, c.data(),
                                                       ldc.data(), n.data(), s > 0);
                }
              }
            }));
}

}  // namespace tbptt::cpu
