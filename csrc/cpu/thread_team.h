// One team of threads for all the steps of a chunk, sharing each phase's work.
//
// A step of the recurrence is a few phases that depend on each other (the W_hh product
// over column panels, then the pointwise cell over batch rows, ...). A step can take a
// few microseconds, comparable to an OpenMP fork/join, so the team lives for the whole
// chunk and moves through the phases of every step together.
//
// The work of a phase is not tied to threads. Its items are split into one contiguous
// range per thread; a thread works through its own range first (the same panels and
// rows every step, so they stay in its caches), then takes what is left of the others'.
// Whoever finishes a phase's last item opens the next phase. So when the machine is
// shared and a thread loses its core, the others carry on without it instead of
// waiting at a barrier for it to be scheduled again; a thread with nothing to do spins
// briefly, then sleeps on a futex until the next phase opens. On a quiet machine this
// is a static partition with one synchronisation per phase.
//
// Each item is computed by exactly one thread whatever the schedule, so results do not
// depend on the thread count or on timing.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace tbptt::cpu {

// The shared state of a team going through `phases` (a flattened list: step s, phase p is
// epoch s * P + p). Atomics that are claimed or counted carry the epoch in their top 32
// bits, so a thread that is late cannot take or finish work of an epoch already closed.
class StepSchedule {
 public:
  static constexpr std::chrono::microseconds kSpinTime{20};

  StepSchedule(int team, std::vector<int64_t> sizes, int64_t steps)
      : team_(team), sizes_(std::move(sizes)), epochs_(steps * static_cast<int64_t>(sizes_.size())),
        cursors_(static_cast<size_t>(team)) {
    open(first_nonempty(0));
  }

  int64_t epochs() const { return epochs_; }
  int phases() const { return static_cast<int>(sizes_.size()); }

  // The current epoch once it is past `done` (or epochs() when all work is done).
  int64_t wait_past(int64_t done) {
    int64_t e = epoch_.load(std::memory_order_acquire);
    if (e > done) return e;
    const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
    while (std::chrono::steady_clock::now() < deadline) {
      for (int k = 0; k < 32; ++k) {
        if ((e = epoch_.load(std::memory_order_acquire)) > done) return e;
        pause();
      }
    }
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while ((e = epoch_.load(std::memory_order_seq_cst)) <= done) futex_wait(static_cast<uint32_t>(e));
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
    return e;
  }

  // Claims up to a chunk of items of epoch e, own range first: [begin, end), empty when none
  // is left (or the epoch has closed).
  std::pair<int64_t, int64_t> claim(int64_t e, int tid) {
    const int64_t size = sizes_[e % phases()];
    const int64_t chunk = std::max<int64_t>(1, size / (4 * team_));
    for (int k = 0; k < team_; ++k) {
      const int r = (tid + k) % team_;
      const int64_t begin = range_begin(size, r), length = range_begin(size, r + 1) - begin;
      std::atomic<uint64_t>& cursor = cursors_[r].value;
      uint64_t v = cursor.load(std::memory_order_relaxed);
      while (tag(v) == static_cast<uint64_t>(e) && count(v) < length) {
        const int64_t n = std::min<int64_t>(chunk, length - count(v));
        if (cursor.compare_exchange_weak(v, v + n, std::memory_order_acq_rel)) {
          return {begin + count(v), begin + count(v) + n};
        }
      }
      if (tag(v) != static_cast<uint64_t>(e)) break;  // closed already
    }
    return {0, 0};
  }

  // Reports n items of epoch e as done; the last one opens the next epoch.
  void finish(int64_t e, int64_t n) {
    const uint64_t v = done_.fetch_add(static_cast<uint64_t>(n), std::memory_order_acq_rel) + n;
    if (count(v) == sizes_[e % phases()]) open(first_nonempty(e + 1));
  }

 private:
  struct alignas(64) Cursor {
    std::atomic<uint64_t> value{0};
  };

  static uint64_t tag(uint64_t v) { return v >> 32; }
  static int64_t count(uint64_t v) { return static_cast<int64_t>(v & 0xffffffffu); }
  int64_t range_begin(int64_t size, int r) const { return size * r / team_; }

  int64_t first_nonempty(int64_t e) const {
    while (e < epochs_ && sizes_[e % phases()] == 0) ++e;
    return e;
  }

  // Resets the cursors and the done count for epoch e, then publishes it.
  void open(int64_t e) {
    const uint64_t base = static_cast<uint64_t>(e) << 32;
    for (auto& c : cursors_) c.value.store(base, std::memory_order_relaxed);
    done_.store(base, std::memory_order_relaxed);
    epoch_.store(e, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all();
  }

  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

  // The futex word is the low half of epoch_ (little-endian); epochs stay below 2^32.
  void futex_wait(uint32_t seen) {
#if defined(__linux__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&epoch_), FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0);
#else
    (void)seen;
    std::this_thread::yield();
#endif
  }
  void futex_wake_all() {
#if defined(__linux__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&epoch_), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
#endif
  }

  const int team_;
  const std::vector<int64_t> sizes_;
  const int64_t epochs_;
  std::vector<Cursor> cursors_;
  alignas(64) std::atomic<uint64_t> done_{0};
  alignas(64) std::atomic<int64_t> epoch_{0};
  alignas(64) std::atomic<int> sleepers_{0};
};

// One phase of a step: fn(step, begin, end) over [0, size) (column panels, batch rows,
// ...) in pieces. Build with phase(size, fn).
template <class Fn>
struct Phase {
  int64_t size;
  Fn fn;
};
template <class Fn>
Phase<Fn> phase(int64_t size, Fn fn) {
  return {size, fn};
}

// Runs `steps` steps, each running the phases in order; a phase starts when all of the
// previous one is done. A phase of size 0 is skipped (fn is not called). `work_per_step` (multiply-adds) decides how many threads are
// worth waking.
template <class... Fns>
void run_steps(int64_t steps, int64_t work_per_step, const Phase<Fns>&... phases) {
  constexpr int64_t kMinWorkPerThread = int64_t{1} << 15;
  const int64_t widest = std::max({phases.size...});
  int64_t threads = std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), widest,
                                       work_per_step / kMinWorkPerThread});
#if !defined(_OPENMP)
  threads = 1;
#endif
  // (the schedule's tagged counters hold epochs and item counts in 32 bits each)
  constexpr int64_t kMaxCount = int64_t{1} << 32;
  const bool fits = steps * static_cast<int64_t>(sizeof...(Fns)) < kMaxCount && widest < kMaxCount;
  if (threads <= 1 || steps <= 0 || !fits || at::in_parallel_region()) {
    for (int64_t s = 0; s < steps; ++s) ((phases.size > 0 ? phases.fn(s, int64_t{0}, phases.size) : void()), ...);
    return;
  }
#if defined(_OPENMP)
  std::unique_ptr<StepSchedule> schedule;
#pragma omp parallel num_threads(static_cast<int>(threads))
  {
#pragma omp single
    schedule = std::make_unique<StepSchedule>(omp_get_num_threads(), std::vector<int64_t>{phases.size...}, steps);
    // (implicit barrier after single)
    const int tid = omp_get_thread_num();
    const int P = schedule->phases();
    for (int64_t e = schedule->wait_past(-1); e < schedule->epochs(); e = schedule->wait_past(e)) {
      const int64_t s = e / P;
      const int p = static_cast<int>(e % P);
      while (true) {
        const auto [begin, end] = schedule->claim(e, tid);
        if (begin == end) break;
        int i = 0;
        ((i++ == p ? phases.fn(s, begin, end) : void()), ...);  // phase p of step s
        schedule->finish(e, end - begin);
      }
    }
  }
#endif
}

}  // namespace tbptt::cpu
