// The per-step matrix product of the recurrence, out[B, N] (+)= a[B, K] m[K, N].
//
// Small batches (the latency-bound case of TBPTT) use a register-tiled kernel
// (4 rows x 32 columns of accumulators, m streamed from cache once per 4 rows),
// split over threads by columns: an ATen/BLAS call costs 5-20 us of overhead at
// these sizes, several times the arithmetic. Larger batches call ATen's GEMM.
#pragma once

#include "common.h"

namespace tbptt::cpu {

// Batches up to this size use the tiled kernel; above it, BLAS.
constexpr int64_t kSmallBatchMax = 8;

namespace detail {

template <typename T, int ROWS, int COLS>
inline __attribute__((always_inline)) void matmul_tile(const T* a, int64_t lda, const T* m, int64_t K, int64_t ldm,
                                                       bool accumulate, T* out, int64_t ldo) {
  T acc[ROWS][COLS];
#pragma GCC unroll 4
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < COLS; ++v) acc[r][v] = accumulate ? out[r * ldo + v] : T(0);
  for (int64_t k = 0; k < K; ++k) {
    const T* mk = m + k * ldm;
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r) {
      const T av = a[r * lda + k];
#pragma GCC unroll 16
      for (int v = 0; v < COLS; ++v) acc[r][v] += av * mk[v];
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < COLS; ++v) out[r * ldo + v] = acc[r][v];
}

// Rows [0, ROWS) of a, columns [n0, n1) of out.
template <typename T, int ROWS>
inline __attribute__((always_inline)) void matmul_rows(const T* a, int64_t lda, const T* m, int64_t K, int64_t N,
                                                       bool accumulate, T* out, int64_t ldo, int64_t n0,
                                                       int64_t n1) {
  constexpr int kCols = 32;
  int64_t n = n0;
  for (; n + kCols <= n1; n += kCols) {
    matmul_tile<T, ROWS, kCols>(a, lda, m + n, K, N, accumulate, out + n, ldo);
  }
  for (; n < n1; ++n) {
    for (int r = 0; r < ROWS; ++r) {
      T sum = accumulate ? out[r * ldo + n] : T(0);
      for (int64_t k = 0; k < K; ++k) sum += a[r * lda + k] * m[k * N + n];
      out[r * ldo + n] = sum;
    }
  }
}

template <typename T>
inline __attribute__((always_inline)) void small_matmul(const T* a, int64_t B, const T* m, int64_t K, int64_t N,
                                                        bool accumulate, T* out, int64_t n0, int64_t n1) {
  int64_t b = 0;
  for (; b + 4 <= B; b += 4) matmul_rows<T, 4>(a + b * K, K, m, K, N, accumulate, out + b * N, N, n0, n1);
  for (; b < B; ++b) matmul_rows<T, 1>(a + b * K, K, m, K, N, accumulate, out + b * N, N, n0, n1);
}

TBPTT_CPU_CLONES inline void small_matmul_f32(const float* a, int64_t B, const float* m, int64_t K, int64_t N,
                                              bool accumulate, float* out, int64_t n0, int64_t n1) {
  small_matmul<float>(a, B, m, K, N, accumulate, out, n0, n1);
}

}  // namespace detail

// The right-hand operand for recurrent_matmul with batch B: w^T if transpose, else w.
// The tiled kernel needs it contiguous; BLAS takes the transposed view as it is,
// which is faster than a transposed copy.
inline at::Tensor recurrent_operand(const at::Tensor& w, bool transpose, int64_t B) {
  if (!transpose) return w.contiguous();
  return B <= kSmallBatchMax ? w.t().contiguous() : w.t();
}

// out[B, N] = a[B, K] m[K, N], or out += a m with accumulate; a and out row-major
// and contiguous, m from recurrent_operand.
template <typename T>
void recurrent_matmul(const T* a, int64_t B, const at::Tensor& m, bool accumulate, T* out) {
  const int64_t K = m.size(0), N = m.size(1);
  if (B == 0 || N == 0) return;
  if (B <= kSmallBatchMax) {
    TORCH_INTERNAL_ASSERT(m.is_contiguous());
    const T* m_data = m.const_data_ptr<T>();
    // Blocks of 32 columns per task: enough multiply-adds (~64K) to pay for waking a thread.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(B * K * 32, 1));
    at::parallel_for(0, (N + 31) / 32, grain, [&](int64_t c0, int64_t c1) {
      const int64_t n0 = c0 * 32, n1 = std::min(N, c1 * 32);
      if constexpr (std::is_same_v<T, float>) {
        detail::small_matmul_f32(a, B, m_data, K, N, accumulate, out, n0, n1);
      } else {
        detail::small_matmul<T>(a, B, m_data, K, N, accumulate, out, n0, n1);
      }
    });
    return;
  }
  const at::Tensor a_t = at::from_blob(const_cast<T*>(a), {B, K}, m.options());
  at::Tensor out_t = at::from_blob(out, {B, N}, m.options());
  if (accumulate) {
    out_t.addmm_(a_t, m);
  } else {
    at::mm_out(out_t, a_t, m);
  }
}

}  // namespace tbptt::cpu
