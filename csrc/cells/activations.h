// Activation functions shared by the CPU loops and the CUDA kernels.
//
// float on the host is computed from a branch-free expm1 (Cody-Waite range reduction,
// a degree-7 polynomial for e^r - 1, the power of two built from the exponent bits),
// written so that the per-step loops vectorise: sigmoid(x) = 1 / (2 + expm1(-x)) and
// tanh(x) = expm1(2x) / (expm1(2x) + 2), each one division, relative error below 2e-7
// everywhere (expm1 keeps tanh accurate near 0 too) and NaN in, NaN out. double on the
// host uses the C library, so the float64 path agrees with torch.nn to ~1e-15. Device
// code uses the CUDA math library.
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
// e^x - 1 for float, vectorisable (CPU build only).
inline __attribute__((always_inline)) float expm1_vectorizable(float x) {
  // Clamp to [-87, 88] so that 2^n stays a normal float, on the bit patterns: as signed
  // integers the floats above 88 are the positive ones above 88's pattern, as unsigned
  // integers those below -87 are the ones above -87's. Two integer minimums (vpminsd,
  // vpminud); float comparisons here were compiled (GCC 12) into selects after the whole
  // computation, ~25 % slower. A NaN is clamped too and put back at the end.
  const int32_t upper = __builtin_bit_cast(int32_t, 88.0f);
  const uint32_t lower = __builtin_bit_cast(uint32_t, -87.0f);
  const int32_t bits = __builtin_bit_cast(int32_t, x);
  const uint32_t below_upper = static_cast<uint32_t>(bits < upper ? bits : upper);
  const float xc = __builtin_bit_cast(float, below_upper < lower ? below_upper : lower);
  // t = x / ln 2 + 1.5 * 2^23 + 127: its low mantissa bits are n + 127, n = round(x / ln 2).
  const float shifter = 12582912.0f + 127.0f;
  const float t = xc * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  // r = x - n ln 2 with ln 2 split in two for accuracy: |r| <= ln 2 / 2.
  float r = xc - n * 0.693145751953125f;
  r = r - n * 1.428606765330187e-06f;
  // e^r - 1 by its Taylor series to r^7 (truncation error < 6e-9 relative).
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r;
  // e^x - 1 = 2^n (e^r - 1) + (2^n - 1), 2^n from the exponent bits n + 127.
  const float two_n = __builtin_bit_cast(float, __builtin_bit_cast(int32_t, t) << 23);
  const float result = two_n * p + (two_n - 1.0f);
  return x == x ? result : x;  // NaN in, NaN out
}
#endif

TBPTT_HD float sigmoid(float x) {
#if defined(__CUDACC__)
  return 1.0f / (1.0f + expf(-x));
#else
  // Below -88 expm1's clamp would leave 6e-39 (torch: a denormal down to exactly 0 at
  // -inf). 0 there, so that 0 * inf gives NaN where torch's does (e.g. an infinite state
  // under a closed gate). A NaN x fails the comparison and stays NaN.
  const float s = 1.0f / (2.0f + expm1_vectorizable(-x));
  return x < -88.0f ? 0.0f : s;
#endif
}

TBPTT_HD double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }

TBPTT_HD float tanh_(float x) {
#if defined(__CUDACC__)
  return tanhf(x);
#else
  const float e = expm1_vectorizable(2.0f * x);
  return e / (e + 2.0f);
#endif
}

TBPTT_HD double tanh_(double x) { return ::tanh(x); }

// The activation a cell applies to one gate's summed pre-activation (kNone: the gate
// needs more than its own pre-activation and the cell's combine() computes it).
enum class Activation { kSigmoid, kTanh, kRelu, kNone };

template <Activation A, typename T>
TBPTT_HD T activate(T x) {
  if constexpr (A == Activation::kSigmoid) {
    return sigmoid(x);
  } else if constexpr (A == Activation::kTanh) {
    return tanh_(x);
  } else if constexpr (A == Activation::kRelu) {
    return x < T(0) ? T(0) : x;  // NaN stays NaN, as torch.relu
  } else {
    return x;
  }
}

}  // namespace tbptt
