// The per-step matrix product of the recurrence, out[B, N] (+)= a[B, K] m[K, N],
// with m the same for every step of a chunk (W_hh^T forward, W_hh backward).
//
// m is packed once per chunk into panels of 32 columns ([N/32][K][32], zero-padded),
// so a panel streams contiguously and a block of 128 of its rows (16 KB) stays in
// L1 while every row group of the batch passes over it. The tile keeps 4 rows x 32
// columns of accumulators in registers. Threads split the column panels (see
// run_steps in common.h). A BLAS call per step would repack m every step and costs
// 5-20 us of overhead at small batch, which is why this is not at::mm.
#pragma once

#include "common.h"

namespace tbptt::cpu {

namespace detail {

constexpr int kPanel = 32;   // columns per panel (one tile's width)
constexpr int64_t kKBlock = 128;  // rows of a panel per L1 block

// out[ROWS, kPanel] (+)= a[ROWS, k0:k1] panel[k0:k1, :], with ROWS x kPanel
// accumulators held in vector registers. FULL: all kPanel columns of out exist;
// else only the first `cols`.
template <typename T, int ROWS, bool FULL>
inline __attribute__((always_inline)) void matmul_tile(const T* a, int64_t lda, const T* panel, int64_t k0,
                                                       int64_t k1, bool accumulate, T* out, int64_t ldo,
                                                       int64_t cols) {
  // GCC vector type: one 64-byte register on AVX-512, split by the compiler on
  // narrower targets; may_alias/aligned so it can view any float/double array.
  typedef T vec __attribute__((vector_size(64), aligned(alignof(T)), may_alias));
  constexpr int kVecs = kPanel * sizeof(T) / 64;
  vec acc[ROWS][kVecs];
  if constexpr (FULL) {
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
      for (int q = 0; q < kVecs; ++q) acc[r][q] = accumulate ? *reinterpret_cast<const vec*>(out + r * ldo + q * (64 / sizeof(T))) : vec{};
  } else {
    T buf[ROWS][kPanel] = {};
    if (accumulate)
      for (int r = 0; r < ROWS; ++r)
        for (int64_t v = 0; v < cols; ++v) buf[r][v] = out[r * ldo + v];
    for (int r = 0; r < ROWS; ++r)
      for (int q = 0; q < kVecs; ++q) __builtin_memcpy(&acc[r][q], &buf[r][q * (64 / sizeof(T))], 64);
  }
  for (int64_t k = k0; k < k1; ++k) {
    const vec* pk = reinterpret_cast<const vec*>(panel + k * kPanel);
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r) {
      const T av = a[r * lda + k];
#pragma GCC unroll 4
      for (int q = 0; q < kVecs; ++q) acc[r][q] += av * pk[q];
    }
  }
  if constexpr (FULL) {
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
      for (int q = 0; q < kVecs; ++q) *reinterpret_cast<vec*>(out + r * ldo + q * (64 / sizeof(T))) = acc[r][q];
  } else {
    T buf[ROWS][kPanel];
    for (int r = 0; r < ROWS; ++r)
      for (int q = 0; q < kVecs; ++q) __builtin_memcpy(&buf[r][q * (64 / sizeof(T))], &acc[r][q], 64);
    for (int r = 0; r < ROWS; ++r)
      for (int64_t v = 0; v < cols; ++v) out[r * ldo + v] = buf[r][v];
  }
}

template <typename T, bool FULL>
inline __attribute__((always_inline)) void matmul_panel(const T* a, int64_t B, int64_t K, const T* panel,
                                                        bool accumulate, T* out, int64_t ldo, int64_t cols) {
  for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {  // K = H > 0 whenever there are panels
    const int64_t k1 = std::min(K, k0 + kKBlock);
    const bool acc = accumulate || k0 > 0;
    int64_t b = 0;
    for (; b + 4 <= B; b += 4) matmul_tile<T, 4, FULL>(a + b * K, K, panel, k0, k1, acc, out + b * ldo, ldo, cols);
    for (; b + 2 <= B; b += 2) matmul_tile<T, 2, FULL>(a + b * K, K, panel, k0, k1, acc, out + b * ldo, ldo, cols);
    for (; b < B; ++b) matmul_tile<T, 1, FULL>(a + b * K, K, panel, k0, k1, acc, out + b * ldo, ldo, cols);
  }
}

// Column panels [p0, p1) of out = (accumulate ? out : 0) + a packed.
template <typename T>
inline __attribute__((always_inline)) void matmul_panels(const T* a, int64_t B, int64_t K, int64_t N,
                                                         const T* packed, bool accumulate, T* out, int64_t p0,
                                                         int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n0 = p * kPanel, cols = std::min<int64_t>(kPanel, N - n0);
    const T* panel = packed + p * K * kPanel;
    if (cols == kPanel) {
      matmul_panel<T, true>(a, B, K, panel, accumulate, out + n0, N, cols);
    } else {
      matmul_panel<T, false>(a, B, K, panel, accumulate, out + n0, N, cols);
    }
  }
}

TBPTT_CPU_CLONES inline void matmul_panels_f32(const float* a, int64_t B, int64_t K, int64_t N,
                                               const float* packed, bool accumulate, float* out, int64_t p0,
                                               int64_t p1) {
  matmul_panels<float>(a, B, K, N, packed, accumulate, out, p0, p1);
}

}  // namespace detail

// The right-hand matrix m [K, N] of every step of a chunk, packed once.
template <typename T>
class RecurrentMatrix {
 public:
  // m: any strides, e.g. w_hh.t() for the forward and w_hh for the backward.
  explicit RecurrentMatrix(const at::Tensor& m) : K_(m.size(0)), N_(m.size(1)) {
    const int64_t panels = (N_ + detail::kPanel - 1) / detail::kPanel;
    packed_ = at::zeros({panels, K_, detail::kPanel}, m.options());
    const at::Tensor src = m.is_contiguous() || m.t().is_contiguous() ? m : m.contiguous();
    const T* s = src.const_data_ptr<T>();
    const int64_t sk = src.stride(0), sn = src.stride(1);
    T* d = packed_.data_ptr<T>();
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t cols = std::min<int64_t>(detail::kPanel, N_ - p * detail::kPanel);
        T* panel = d + p * K_ * detail::kPanel;
        if (sn == 1) {  // rows of m contiguous: copy 32-wide row pieces
          for (int64_t k = 0; k < K_; ++k)
            for (int64_t v = 0; v < cols; ++v) panel[k * detail::kPanel + v] = s[k * sk + p * detail::kPanel + v];
        } else {  // columns of m contiguous (a transposed view): read down each column
          for (int64_t v = 0; v < cols; ++v)
            for (int64_t k = 0; k < K_; ++k)
              panel[k * detail::kPanel + v] = s[k * sk + (p * detail::kPanel + v) * sn];
        }
      }
    });
  }

  int64_t panels() const { return packed_.size(0); }
  // Multiply-adds of one product with batch B.
  int64_t work(int64_t B) const { return B * K_ * N_; }

  // Column panels [p0, p1) of out[B, N] = a[B, K] m, or of out += a m with
  // accumulate; a and out row-major and contiguous. Threads split the panels.
  void multiply_panels(const T* a, int64_t B, bool accumulate, T* out, int64_t p0, int64_t p1) const {
    if (B == 0) return;
    const T* packed = packed_.const_data_ptr<T>();
    if constexpr (std::is_same_v<T, float>) {
      detail::matmul_panels_f32(a, B, K_, N_, packed, accumulate, out, p0, p1);
    } else {
      detail::matmul_panels<T>(a, B, K_, N_, packed, accumulate, out, p0, p1);
    }
  }

 private:
  int64_t K_, N_;
  at::Tensor packed_;
};

}  // namespace tbptt::cpu
