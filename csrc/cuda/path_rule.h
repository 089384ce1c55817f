// Which recurrence kernels the CUDA backend's `auto` path runs: host code free of CUDA
// headers, so that tests/test_tile_plan.py checks the rule on the CPU too
// (tests/tile_plan_check.cpp). cuda_ops.cpp reads TBPTT_EXT_CUDA_PATH and calls
// auto_path when it is `auto` (the default).
#pragma once

#include <cstdint>

namespace tbptt::cuda {

// The paths (TBPTT_EXT_CUDA_PATH):
//   auto (default)    chosen per call from the cell, B, H and dtype (auto_path below).
//   persistent        the v1 persistent kernels (chunk_kernels.cuh): one cooperative
//                     launch each way, a grid barrier per step.
//   latency           one block per batch row (block_kernels.cuh); persistent where its
//                     vectors do not fit.
//   throughput        row tiles x unit tiles on tensor cores (tile_kernels.cuh); stepwise
//                     where no tiling fits on chip.
//   stepwise          one GEMM and one pointwise kernel per step (step_kernels.cuh).
enum class Path { kAuto, kPersistent, kLatency, kThroughput, kStepwise };

// What `auto` runs, measured with benchmarks/bench_cuda.py on an H100 after the
// throughput tiles staged their left operand in one pass (every path against cuDNN,
// interleaved in one run, k = 50, I = H, fp32 with cudnn.allow_tf32 on, torch's default;
// benchmarks/results/cuda_h100/staged_*, benchmarks/RESULTS.md, 2026-11-27).
// W = W_hh's bytes (G*H*H elements, G gates).
//   fp32/fp64, small batch (B <= 8, or B <= 16 with H <= 256), W <= 4 MiB, and either
//       W > 2 MiB or an LSTM/GRU with W > 512 KiB
//       -> persistent (fp32 LSTM B=8 H=512: 1.73x cuDNN against throughput's 1.43x;
//          B=4 H=256: 2.39x against 2.15x; GRU B=4 H=512: 2.59x against 1.89x)
//   W > 4 MiB -> stepwise (bf16 LSTM B=128 H=1024: 1.18x against throughput's 0.59x)
//   otherwise -> throughput: the half types at every batch (bf16 LSTM B=16 H=256: 2.63x
//          against persistent's 2.13x; B=8 H=512: 2.37x against 1.68x), fp32 RNN up to
//          2 MiB, fp32 LSTM/GRU up to 512 KiB (LSTM H <= 181, GRU H <= 209; LSTM B=1
//          H=128: 1.03x against 0.98x), and W in (2, 4] MiB at larger batches (fp32 GRU
//          B=64 H=512: 1.57x against stepwise's 1.02x); stepwise where no tiling fits.
// Not measured: fp32 with TF32 off (the tiles then run exact on CUDA cores) and fp64,
// which follow the fp32 rule; half types with W in (2, 4] MiB at small batches (the
// nearest points, W = 2 MiB, favour the tiles except at B = 1).
// Forward and backward of a chunk resolve to the same path (same cell, B, H, dtype).
inline Path auto_path(int gates, int64_t B, int64_t H, int element_size) {
  constexpr double kMiB = 1024.0 * 1024.0;
  const double w_bytes = double(gates) * double(H) * double(H) * double(element_size);
  const bool small_batch = B <= 8 || (B <= 16 && H <= 256);
  const bool persistent_wins = element_size >= 4 && (w_bytes > 2 * kMiB || (gates > 1 && w_bytes > 0.5 * kMiB));
  if (small_batch && w_bytes <= 4 * kMiB && persistent_wins) return Path::kPersistent;
  if (w_bytes > 4 * kMiB) return Path::kStepwise;
  return Path::kThroughput;
}

inline const char* path_name(Path path) {
  switch (path) {
    case Path::kAuto: return "auto";
    case Path::kPersistent: return "persistent";
    case Path::kLatency: return "latency";
    case Path::kThroughput: return "throughput";
    case Path::kStepwise: return "stepwise";
  }
  return "?";
}

}  // namespace tbptt::cuda
