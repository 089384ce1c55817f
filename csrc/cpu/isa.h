// Instruction sets of the CPU kernels. Each hot loop is a template over the ISA,
// compiled three times on x86-64 (baseline SSE2, AVX2 + FMA, AVX-512) under matching
// `target` attributes, and the best one the machine has is picked once at run time;
// one build runs everywhere. Elsewhere (e.g. aarch64) only the baseline exists and the
// 16-byte vectors map to the native SIMD registers.
//
// TBPTT_EXT_CPU_ISA=baseline|avx2|avx512 caps the choice (tests run every variant the
// machine supports).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace tbptt::cpu {

enum class Isa { kBaseline, kAvx2, kAvx512 };

inline const char* isa_name(Isa isa) {
  return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "baseline";
}

inline Isa detect_isa() {
  Isa best = Isa::kBaseline;
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
  if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f")) best = Isa::kAvx512;
#endif
  if (const char* cap = std::getenv("TBPTT_EXT_CPU_ISA")) {
    const Isa wanted = std::strcmp(cap, "baseline") == 0 ? Isa::kBaseline
                       : std::strcmp(cap, "avx2") == 0   ? Isa::kAvx2
                                                         : Isa::kAvx512;
    if (static_cast<int>(wanted) < static_cast<int>(best)) best = wanted;
  }
  return best;
}

// The ISA the kernels use in this process (read once).
inline Isa cpu_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

// Vector registers: bytes per register of each ISA's kernels.
template <Isa kIsa>
constexpr int kVectorBytes = kIsa == Isa::kAvx512 ? 64 : kIsa == Isa::kAvx2 ? 32 : 16;

// GCC vector types of each width (native registers under the matching target).
// aligned(alignof(T)): they may point at any element; may_alias: they view T arrays.
template <typename T, int kBytes>
struct VecType;
#define TBPTT_VEC_TYPE(T, BYTES, NAME)                                                    \
  typedef T NAME __attribute__((vector_size(BYTES), aligned(alignof(T)), may_alias)); \
  template <>                                                                         \
  struct VecType<T, BYTES> {                                                          \
    using type = NAME;                                                                \
  };
TBPTT_VEC_TYPE(float, 16, f32x4)
TBPTT_VEC_TYPE(float, 32, f32x8)
TBPTT_VEC_TYPE(float, 64, f32x16)
TBPTT_VEC_TYPE(double, 16, f64x2)
TBPTT_VEC_TYPE(double, 32, f64x4)
TBPTT_VEC_TYPE(double, 64, f64x8)
#undef TBPTT_VEC_TYPE

#define TBPTT_ALWAYS_INLINE inline __attribute__((always_inline))

// Marks a pointwise loop whose iterations touch disjoint elements, so the compiler
// vectorises it without run-time alias checks.
#if defined(__clang__)
#define TBPTT_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define TBPTT_IVDEP _Pragma("GCC ivdep")
#else
#define TBPTT_IVDEP
#endif

// TBPTT_ISA_DISPATCH(name) defines name_dispatch<Ts...>(isa, args...), which calls the
// function template name<kIsa, Ts...>(args...) compiled for that instruction set.
#if defined(__GNUC__) && defined(__x86_64__)
#define TBPTT_ISA_DISPATCH(name)                                                                          \
  template <class... Ts, class... Args>                                                                   \
  __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void name##_avx512(const Args&... args) { \
    name<Isa::kAvx512, Ts...>(args...);                                                                   \
  }                                                                                                       \
  template <class... Ts, class... Args>                                                                   \
  __attribute__((target("avx2,fma"))) void name##_avx2(const Args&... args) {                             \
    name<Isa::kAvx2, Ts...>(args...);                                                                     \
  }                                                                                                       \
  template <class... Ts, class... Args>                                                                   \
  void name##_dispatch(Isa isa, const Args&... args) {                                                    \
    if (isa == Isa::kAvx512) return name##_avx512<Ts...>(args...);                                        \
    if (isa == Isa::kAvx2) return name##_avx2<Ts...>(args...);                                            \
    return name<Isa::kBaseline, Ts...>(args...);                                                          \
  }
#else
#define TBPTT_ISA_DISPATCH(name)                                 \
  template <class... Ts, class... Args>                          \
  void name##_dispatch(Isa, const Args&... args) {               \
    return name<Isa::kBaseline, Ts...>(args...);                 \
  }
#endif

}  // namespace tbptt::cpu
