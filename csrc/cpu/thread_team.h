// One team of threads for all the steps of a chunk, with a barrier between phases.
//
// A step of the recurrence is a few phases that depend on each other (the W_hh
// product over column panels, then the pointwise cell over batch rows, ...). A step
// can take a few microseconds, comparable to an OpenMP fork/join, so the team lives
// for the whole chunk and crosses a StepBarrier after every phase.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace tbptt::cpu {

// A reusable barrier that spins briefly, then sleeps.
//
// Spinning costs ~0.1 us per crossing when every thread of the team has a core, where a
// sleeping barrier costs several microseconds to wake. But when the machine is shared
// and a partner thread has lost its core, spinning burns the core the partner needs:
// so a waiter spins for at most kSpinTime, then sleeps on a futex (Linux; elsewhere it
// yields) until the last thread arrives.
class StepBarrier {
 public:
  static constexpr std::chrono::microseconds kSpinTime{30};

  explicit StepBarrier(int count) : count_(count) {}

  void wait() {
    const uint32_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_seq_cst);
      if (sleepers_.load(std::memory_order_seq_cst) > 0) wake_all();
      return;
    }
    if (spin_until_changed(generation)) return;
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (generation_.load(std::memory_order_seq_cst) == generation) sleep_while(generation);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  bool spin_until_changed(uint32_t generation) const {
    const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
    while (true) {
      for (int k = 0; k < 64; ++k) {
        if (generation_.load(std::memory_order_acquire) != generation) return true;
        pause();
      }
      if (std::chrono::steady_clock::now() > deadline) return false;
    }
  }

  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

  void sleep_while(uint32_t generation) {
#if defined(__linux__)
    // Returns at once if the generation already moved on (the value differs).
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&generation_), FUTEX_WAIT_PRIVATE, generation, nullptr, nullptr,
            0);
#else
    (void)generation;
    std::this_thread::yield();
#endif
  }

  void wake_all() {
#if defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&generation_), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
#endif
  }

  const int count_;
  std::atomic<int> arrived_{0};
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> sleepers_{0};
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex word must be a plain 32-bit integer");
};

// One phase of a step: fn(step, begin, end) over a split of [0, size) (column panels,
// batch rows, ...). Build with phase(size, fn).
template <class Fn>
struct Phase {
  int64_t size;
  Fn fn;
};
template <class Fn>
Phase<Fn> phase(int64_t size, Fn fn) {
  return {size, fn};
}

// Runs `steps` steps, each running the phases in order, every phase followed by a
// barrier. `work_per_step` (multiply-adds) decides how many threads are worth waking.
template <class... Fns>
void run_steps(int64_t steps, int64_t work_per_step, const Phase<Fns>&... phases) {
  constexpr int64_t kMinWorkPerThread = int64_t{1} << 15;
  const int64_t widest = std::max({phases.size...});
  int64_t threads = std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), widest,
                                       work_per_step / kMinWorkPerThread});
#if !defined(_OPENMP)
  threads = 1;
#endif
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t s = 0; s < steps; ++s) (phases.fn(s, int64_t{0}, phases.size), ...);
    return;
  }
#if defined(_OPENMP)
  std::unique_ptr<StepBarrier> barrier;
#pragma omp parallel num_threads(static_cast<int>(threads))
  {
#pragma omp single
    barrier = std::make_unique<StepBarrier>(omp_get_num_threads());  // implicit barrier after single
    const int64_t team = omp_get_num_threads(), tid = omp_get_thread_num();
    auto run_share = [&](const auto& ph, int64_t s) {
      const int64_t per = (ph.size + team - 1) / team;
      const int64_t begin = std::min(ph.size, tid * per), end = std::min(ph.size, begin + per);
      if (begin < end) ph.fn(s, begin, end);
      barrier->wait();
    };
    for (int64_t s = 0; s < steps; ++s) (run_share(phases, s), ...);
  }
#endif
}

}  // namespace tbptt::cpu
