// Helpers shared by the CPU kernels (threading, vectorisation).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "../chunk_common.h"

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

inline void check_cpu_dtype(const char* op, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": the CPU kernels support float32 and float64, got ", t.scalar_type(),
              " (use backend='reference' for other dtypes)");
}

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

}  // namespace tbptt::cpu
