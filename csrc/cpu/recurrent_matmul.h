// The per-step matrix product of the recurrence, out[B, N] (+)= a[B, K] m[K, N], with m
// the same for every step of a chunk (W_hh^T forward, W_hh backward).
//
// m is packed once per chunk into panels of NR columns ([N/NR][K][NR], zero-padded),
// NR = two vector registers of the kernel's ISA. A micro-kernel keeps an MR x NR tile
// of out in registers (MR = 6 rows for 16 vector registers, 12 for 32) and streams
// its panel over K in blocks that stay in L1 while every row tile passes over them.
// Threads split the column panels (run_steps in thread_team.h). A BLAS call per step
// would repack m every step, which costs 5-20 us at small batch.
//
// Each output element is one fixed-order sum over k, whatever the thread count or the
// tile a row falls in: results are bitwise reproducible.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "isa.h"
#include "workspace.h"

namespace tbptt::cpu {

namespace matmul {

constexpr int kVectorsPerPanel = 2;
constexpr int64_t kKBlock = 256;  // rows of a panel per L1 block

template <Isa kIsa>
constexpr int kTileRows = kIsa == Isa::kAvx512 ? 12 : 6;

template <Isa kIsa, typename T>
constexpr int64_t panel_width() {
  return kVectorsPerPanel * kVectorBytes<kIsa> / static_cast<int>(sizeof(T));
}

inline int64_t panel_width(Isa isa, size_t elem_size) {
  const int bytes = isa == Isa::kAvx512 ? 64 : isa == Isa::kAvx2 ? 32 : 16;
  return kVectorsPerPanel * bytes / static_cast<int64_t>(elem_size);
}

inline int64_t tile_rows(Isa isa) { return isa == Isa::kAvx512 ? kTileRows<Isa::kAvx512> : kTileRows<Isa::kAvx2>; }

// The micro-kernel's loop, shared with weight_grad.h: acc[r] += a(r, k) panel[k] over
// k in [k0, k1), with a(r, k) = a[r * rs + k * ks] (rows of a, or a packed tile).
template <Isa kIsa, typename T, int ROWS>
TBPTT_ALWAYS_INLINE void accumulate_panel(typename VecType<T, kVectorBytes<kIsa>>::type (&acc)[ROWS][kVectorsPerPanel],
                                          const T* a, int64_t rs, int64_t ks, const T* panel, int64_t k0, int64_t k1) {
  using V = typename VecType<T, kVectorBytes<kIsa>>::type;
  constexpr int W = kVectorBytes<kIsa> / sizeof(T), NV = kVectorsPerPanel, NR = NV * W;
  for (int64_t k = k0; k < k1; ++k) {
    V b[NV];
    for (int q = 0; q < NV; ++q) b[q] = *reinterpret_cast<const V*>(panel + k * NR + q * W);
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      const T av = a[r * rs + k * ks];
#pragma GCC unroll 4
      for (int q = 0; q < NV; ++q) acc[r][q] += av * b[q];
    }
  }
}

// out[ROWS, NR] (+)= a[ROWS, k0:k1] panel[k0:k1, :]. kFull: all NR columns of out exist,
// else only the first `cols`.
template <Isa kIsa, typename T, int ROWS, bool kFull>
TBPTT_ALWAYS_INLINE void tile(const T* a, int64_t lda, const T* panel, int64_t k0, int64_t k1, bool accumulate, T* out,
                              int64_t ldo, int64_t cols) {
  using V = typename VecType<T, kVectorBytes<kIsa>>::type;
  constexpr int W = kVectorBytes<kIsa> / sizeof(T), NV = kVectorsPerPanel, NR = NV * W;
  V acc[ROWS][NV];
  if (!accumulate) {
    for (int r = 0; r < ROWS; ++r)
      for (int q = 0; q < NV; ++q) acc[r][q] = V{};
  } else if constexpr (kFull) {
    for (int r = 0; r < ROWS; ++r)
      for (int q = 0; q < NV; ++q) acc[r][q] = *reinterpret_cast<const V*>(out + r * ldo + q * W);
  } else {
    T buf[ROWS][NR] = {};
    for (int r = 0; r < ROWS; ++r)
      for (int64_t v = 0; v < cols; ++v) buf[r][v] = out[r * ldo + v];
    for (int r = 0; r < ROWS; ++r)
      for (int q = 0; q < NV; ++q) acc[r][q] = *reinterpret_cast<const V*>(&buf[r][q * W]);
  }
  accumulate_panel<kIsa, T, ROWS>(acc, a, lda, 1, panel, k0, k1);
  if constexpr (kFull) {
    for (int r = 0; r < ROWS; ++r)
      for (int q = 0; q < NV; ++q) *reinterpret_cast<V*>(out + r * ldo + q * W) = acc[r][q];
  } else {
    T buf[ROWS][NR];
    for (int r = 0; r < ROWS; ++r)
      for (int q = 0; q < NV; ++q) *reinterpret_cast<V*>(&buf[r][q * W]) = acc[r][q];
    for (int r = 0; r < ROWS; ++r)
      for (int64_t v = 0; v < cols; ++v) out[r * ldo + v] = buf[r][v];
  }
}

// The last rows < kTileRows of a panel, one tile of exactly `rows` rows.
template <Isa kIsa, typename T, int ROWS, bool kFull>
TBPTT_ALWAYS_INLINE void tail_tile(int64_t rows, const T* a, int64_t lda, const T* panel, int64_t k0, int64_t k1,
                                   bool accumulate, T* out, int64_t ldo, int64_t cols) {
  if constexpr (ROWS > 0) {
    if (rows == ROWS) return tile<kIsa, T, ROWS, kFull>(a, lda, panel, k0, k1, accumulate, out, ldo, cols);
    tail_tile<kIsa, T, ROWS - 1, kFull>(rows, a, lda, panel, k0, k1, accumulate, out, ldo, cols);
  }
}

template <Isa kIsa, typename T, bool kFull>
TBPTT_ALWAYS_INLINE void panel_product(const T* a, int64_t lda, int64_t B, int64_t K, const T* panel, bool accumulate,
                                       T* out, int64_t ldo, int64_t cols) {
  constexpr int MR = kTileRows<kIsa>;
  for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
    const int64_t k1 = std::min(K, k0 + kKBlock);
    const bool acc = accumulate || k0 > 0;
    // Full tiles, then the last rows as one or two tiles of similar height: a tile of
    // one or two rows has too few independent accumulators to keep the FMA units busy
    // (B = 32 as 6 x 5 + 2 ran 14% slower than as 6 x 4 + 4 x 2).
    int64_t full = B / MR, rest = B % MR;
    if (full > 0 && rest > 0 && rest < MR / 2) --full, rest += MR;
    int64_t b = 0;
    for (int64_t i = 0; i < full; ++i, b += MR) {
      tile<kIsa, T, MR, kFull>(a + b * lda, lda, panel, k0, k1, acc, out + b * ldo, ldo, cols);
    }
    const int64_t first = rest < MR ? rest : (rest + 1) / 2;  // each < MR
    for (const int64_t rows : {first, rest - first}) {
      if (rows == 0) continue;
      tail_tile<kIsa, T, MR - 1, kFull>(rows, a + b * lda, lda, panel, k0, k1, acc, out + b * ldo, ldo, cols);
      b += rows;
    }
  }
}

// Column panels [p0, p1) of out[B, N] (+)= a[B, K] m, rows of a lda apart.
template <Isa kIsa, typename T>
TBPTT_ALWAYS_INLINE void multiply_panels(const T* a, int64_t lda, int64_t B, int64_t K, int64_t N, const T* packed,
                                         bool accumulate, T* out, int64_t p0, int64_t p1) {
  constexpr int64_t NR = panel_width<kIsa, T>();
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n0 = p * NR, cols = std::min<int64_t>(NR, N - n0);
    const T* panel = packed + p * K * NR;
    if (cols == NR) {
      panel_product<kIsa, T, true>(a, lda, B, K, panel, accumulate, out + n0, N, cols);
    } else {
      panel_product<kIsa, T, false>(a, lda, B, K, panel, accumulate, out + n0, N, cols);
    }
  }
}
TBPTT_ISA_DISPATCH(multiply_panels)

}  // namespace matmul

// The right-hand matrix m [K, N] of every step of a chunk, packed once for `isa`.
template <typename T>
class RecurrentMatrix {
 public:
  // m: any strides, e.g. w_hh.t() for the forward and w_hh for the backward. Packed into
  // this thread's workspace buffer `slot` (see workspace.h).
  RecurrentMatrix(const at::Tensor& m, Isa isa, Scratch slot)
      : isa_(isa), K_(m.size(0)), N_(m.size(1)), nr_(matmul::panel_width(isa, sizeof(T))) {
    const int64_t panels = (N_ + nr_ - 1) / nr_;
    packed_ = workspace(slot, {panels, K_, nr_}, m.options());
    if (panels > 0 && N_ % nr_ != 0) packed_.select(0, panels - 1).zero_();  // the last panel's padding
    const at::Tensor src = m.is_contiguous() || m.t().is_contiguous() ? m : m.contiguous();
    const T* s = src.const_data_ptr<T>();
    const int64_t sk = src.stride(0), sn = src.stride(1), nr = nr_, K = K_, N = N_;
    T* d = packed_.data_ptr<T>();
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t cols = std::min<int64_t>(nr, N - p * nr);
        T* panel = d + p * K * nr;
        if (sn == 1) {  // rows of m contiguous: copy row pieces
          for (int64_t k = 0; k < K; ++k)
            for (int64_t v = 0; v < cols; ++v) panel[k * nr + v] = s[k * sk + p * nr + v];
        } else {  // columns of m contiguous (a transposed view): read down each column
          for (int64_t v = 0; v < cols; ++v)
            for (int64_t k = 0; k < K; ++k) panel[k * nr + v] = s[k * sk + (p * nr + v) * sn];
        }
      }
    });
  }

  int64_t panels() const { return packed_.size(0); }
  // Multiply-adds of one product with batch B.
  int64_t work(int64_t B) const { return B * K_ * N_; }

  // Column panels [p0, p1) of out[B, N] = a[B, K] m, or out += a m with accumulate;
  // out row-major and contiguous, rows of a lda apart (default: contiguous).
  void multiply(const T* a, int64_t B, bool accumulate, T* out, int64_t p0, int64_t p1, int64_t lda = -1) const {
    if (B == 0) return;
    if (K_ == 0) {  // an empty sum: out = 0 (unchanged with accumulate)
      if (!accumulate) {
        const int64_t n0 = std::min(p0 * nr_, N_), n1 = std::min(p1 * nr_, N_);
        for (int64_t b = 0; b < B; ++b) std::fill(out + b * N_ + n0, out + b * N_ + n1, T(0));
      }
      return;
    }
    matmul::multiply_panels_dispatch<T>(isa_, a, lda < 0 ? K_ : lda, B, K_, N_, packed_.const_data_ptr<T>(),
                                        accumulate, out, p0, p1);
  }

 private:
  Isa isa_;
  int64_t K_, N_, nr_;
  at::Tensor packed_;
};

}  // namespace tbptt::cpu
