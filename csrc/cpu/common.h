// Argument checks and small helpers shared by the CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <memory>
#include <thread>

#if defined(_OPENMP)
#include <omp.h>
#endif

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

// Defines `name##_run<T>(params, b0, b1)`: the row loop `name<T>` over batch rows
// [b0, b1), with the float instantiation compiled once per instruction set
// (TBPTT_CPU_CLONES).
#define TBPTT_CPU_ROW_LOOP(name, Params)                                                   \
  TBPTT_CPU_CLONES void name##_f32(const Params<float>& p, int64_t b0, int64_t b1) {       \
    name<float>(p, b0, b1);                                                                \
  }                                                                                        \
  void name##_f64(const Params<double>& p, int64_t b0, int64_t b1) { name<double>(p, b0, b1); } \
  template <typename T>                                                                    \
  void name##_run(const Params<T>& p, int64_t b0, int64_t b1) {                            \
    if constexpr (std::is_same_v<T, float>) {                                              \
      name##_f32(p, b0, b1);                                                               \
    } else {                                                                               \
      name##_f64(p, b0, b1);                                                               \
    }                                                                                      \
  }

// A sense-reversing barrier for the team of run_steps. It spins (then yields), which
// for two to a few threads costs ~0.1 us where an OpenMP barrier that has gone to
// sleep costs several microseconds: a step can be shorter than that.
class SpinBarrier {
 public:
  explicit SpinBarrier(int64_t count) : count_(count), waiting_(0), sense_(false) {}
  void wait() {
    const bool sense = !sense_.load(std::memory_order_relaxed);
    if (waiting_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
      waiting_.store(0, std::memory_order_relaxed);
      sense_.store(sense, std::memory_order_release);
      return;
    }
    for (int64_t spins = 0; sense_.load(std::memory_order_acquire) != sense; ++spins) {
      if (spins > 4096) std::this_thread::yield();
    }
  }

 private:
  const int64_t count_;
  std::atomic<int64_t> waiting_;
  std::atomic<bool> sense_;
};

// Runs the `steps` steps of a chunk on one team of threads that lives for the whole
// chunk. Each step has two phases with a barrier after each: phase_a(step, a0, a1)
// over a split of [0, size_a), then phase_b(step, b0, b1) over a split of [0, size_b)
// (one is the matmul's column panels, the other the pointwise part's batch rows).
// One fork/join per chunk instead of one or two per step; a step of the small-batch
// case is a few microseconds, comparable to a fork/join. `work_per_step` (multiply-
// adds) decides how many threads are worth waking.
template <typename PhaseA, typename PhaseB>
void run_steps(int64_t steps, int64_t size_a, const PhaseA& phase_a, int64_t size_b, const PhaseB& phase_b,
               int64_t work_per_step) {
  constexpr int64_t kMinWorkPerThread = int64_t{1} << 15;
  int64_t threads = std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()),
                                       std::max(size_a, size_b), work_per_step / kMinWorkPerThread});
#if !defined(_OPENMP)
  threads = 1;
#endif
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t s = 0; s < steps; ++s) {
      phase_a(s, int64_t{0}, size_a);
      phase_b(s, int64_t{0}, size_b);
    }
    return;
  }
#if defined(_OPENMP)
  std::unique_ptr<SpinBarrier> barrier;
#pragma omp parallel num_threads(static_cast<int>(threads))
  {
#pragma omp single
    barrier = std::make_unique<SpinBarrier>(omp_get_num_threads());  // implicit barrier after single
    const int64_t team = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t per_a = (size_a + team - 1) / team, per_b = (size_b + team - 1) / team;
    const int64_t a0 = std::min(size_a, tid * per_a), a1 = std::min(size_a, a0 + per_a);
    const int64_t b0 = std::min(size_b, tid * per_b), b1 = std::min(size_b, b0 + per_b);
    for (int64_t s = 0; s < steps; ++s) {
      if (a0 < a1) phase_a(s, a0, a1);
      barrier->wait();
      if (b0 < b1) phase_b(s, b0, b1);
      barrier->wait();
    }
  }
#endif
}
