// Argument checks and small helpers shared by the CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace tbptt::cpu {

// Pointwise loops are compiled for several instruction sets and picked at load
// time (GCC function multi-versioning), so one build runs everywhere and still
// vectorises with AVX2/AVX-512 where the machine has it.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TBPTT_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TBPTT_CPU_CLONES
#endif

// Marks a pointwise loop whose iterations touch disjoint elements, so the
// compiler vectorises it without run-time alias checks (GCC gives up past ten).
#if defined(__clang__)
#define TBPTT_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define TBPTT_IVDEP _Pragma("GCC ivdep")
#else
#define TBPTT_IVDEP
#endif

// Checks a chunk's per-step sequence tensor `seq` ([T, B, seq_blocks * H]), the
// recurrent weight ([w_blocks * H, H]) and the initial state h0 ([B, H]); returns
// (T, B, H).
inline std::tuple<int64_t, int64_t, int64_t> check_chunk_args(const char* op, const char* seq_name,
                                                              const at::Tensor& seq, int64_t seq_blocks,
                                                              const at::Tensor& w_hh, int64_t w_blocks,
                                                              const at::Tensor& h0) {
  TORCH_CHECK(seq.dim() == 3, op, ": ", seq_name, " must be [T, B, ", seq_blocks, "H], got ", seq.dim(),
              "-D tensor of shape ", seq.sizes());
  TORCH_CHECK(h0.dim() == 2, op, ": h0 must be [B, H], got shape ", h0.sizes());
  const int64_t T = seq.size(0), B = seq.size(1), H = h0.size(1);
  TORCH_CHECK(h0.size(0) == B, op, ": h0 batch size ", h0.size(0), " does not match ", seq_name,
              " batch size ", B);
  TORCH_CHECK(seq.size(2) == seq_blocks * H, op, ": ", seq_name, " last dim must be ", seq_blocks,
              " * H = ", seq_blocks * H, ", got ", seq.size(2));
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == w_blocks * H && w_hh.size(1) == H, op, ": w_hh must be [",
              w_blocks * H, ", ", H, "], got ", w_hh.sizes());
  for (const at::Tensor* t : {&w_hh, &h0}) {
    TORCH_CHECK(t->scalar_type() == seq.scalar_type(), op, ": all tensors must have dtype ",
                seq.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == seq.device(), op, ": all tensors must be on ", seq.device(), ", got ",
                t->device());
  }
  return {T, B, H};
}

inline void check_same(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape,
                       const at::Tensor& like) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have dtype ",
              like.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " must be on ", like.device(), ", got ",
              t.device());
}

inline void check_cpu_dtype(const char* op, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": the CPU kernels support float32 and float64, got ", t.scalar_type(),
              " (use backend='reference' for other dtypes)");
}

// Rows of B processed per parallel task: enough work per task to pay for the
// thread hand-off, at least one row.
inline int64_t row_grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

// dL/dW_hh = sum_t grad_pre_t^T h_{t-1}, as two GEMMs over the whole chunk
// (h_{t-1} is h0 for t = 0 and output[t-1] after). grad_pre: [T, B, G], h0: [B, H],
// output: [T, B, H] -> [G, H].
inline at::Tensor recurrent_weight_grad(const at::Tensor& grad_pre, const at::Tensor& h0,
                                        const at::Tensor& output) {
  const int64_t T = grad_pre.size(0), G = grad_pre.size(2), H = h0.size(1);
  if (T == 0) return at::zeros({G, H}, h0.options());
  at::Tensor grad_w = at::mm(grad_pre.select(0, 0).t(), h0);
  if (T > 1) {
    grad_w.addmm_(grad_pre.slice(0, 1).reshape({-1, G}).t(), output.slice(0, 0, T - 1).reshape({-1, H}));
  }
  return grad_w;
}

}  // namespace tbptt::cpu

// Defines `name##_parallel(params, B)`: runs the row loop `name<T>(params, b0, b1)`
// over the batch with at::parallel_for; the float instantiation is compiled once
// per instruction set (TBPTT_CPU_CLONES).
#define TBPTT_CPU_ROW_LOOP(name, Params)                                                   \
  TBPTT_CPU_CLONES void name##_f32(const Params<float>& p, int64_t b0, int64_t b1) {       \
    name<float>(p, b0, b1);                                                                \
  }                                                                                        \
  void name##_f64(const Params<double>& p, int64_t b0, int64_t b1) { name<double>(p, b0, b1); } \
  template <typename T>                                                                    \
  void name##_parallel(const Params<T>& p, int64_t B, int64_t width) {                     \
    at::parallel_for(0, B, ::tbptt::cpu::row_grain(width), [&](int64_t b0, int64_t b1) {   \
      if constexpr (std::is_same_v<T, float>) {                                            \
        name##_f32(p, b0, b1);                                                             \
      } else {                                                                             \
        name##_f64(p, b0, b1);                                                             \
      }                                                                                    \
    });                                                                                    \
  }
