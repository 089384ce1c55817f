// Activation functions shared by the CPU loops and the CUDA kernels.
//
// float on the host uses a branch-free exp (Cody-Waite range reduction, degree-7
// polynomial, exponent built from bits) so that the per-step pointwise loops
// vectorise; its relative error is a few float ulps. double on the host uses the
// C library, so the float64 path agrees with torch.nn to ~1e-15. Device code uses
// the CUDA math library.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TBPTT_HD __host__ __device__ __forceinline__
#define TBPTT_UNROLL _Pragma("unroll")
#else
#define TBPTT_HD inline __attribute__((always_inline))
#define TBPTT_UNROLL _Pragma("GCC unroll 16")
#endif

namespace tbptt {

#if !defined(__CUDACC__)
// exp(x) for float, written so that gcc vectorises loops that call it (CPU build only).
inline __attribute__((always_inline)) float exp_vectorizable(float x) {
  x = x < -87.0f ? -87.0f : x;  // keeps 2^n a normal float
  x = x > 88.0f ? 88.0f : x;
  // n = round(x / ln 2), by the 1.5 * 2^23 trick (exact for |n| < 2^22).
  const float shifter = 12582912.0f;
  float n = (x * 1.44269504088896341f + shifter) - shifter;
  // r = x - n ln2, with ln2 split in two for accuracy: |r| <= ln2 / 2.
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187e-06f;
  // exp(r) by its Taylor series to r^7 (truncation error < 6e-9 relative).
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n from the exponent bits.
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}
#endif

TBPTT_HD float sigmoid(float x) {
#if defined(__CUDACC__)
  return 1.0f / (1.0f + expf(-x));
#else
  return 1.0f / (1.0f + exp_vectorizable(-x));
#endif
}

TBPTT_HD double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }

TBPTT_HD float tanh_(float x) {
#if defined(__CUDACC__)
  return tanhf(x);
#else
  // tanh(x) = 1 - 2 / (exp(2x) + 1): exact at 0, saturates to +-1.
  return 1.0f - 2.0f / (exp_vectorizable(2.0f * x) + 1.0f);
#endif
}

TBPTT_HD double tanh_(double x) { return ::tanh(x); }

}  // namespace tbptt
