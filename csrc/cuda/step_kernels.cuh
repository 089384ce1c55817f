// Stepwise path (issue 10, large H): where W_hh does not fit on chip, each step is one
// cuBLAS GEMM (issued by the host, csrc/cuda/cuda_ops.cpp) and one fused pointwise
// kernel from this file.
//   forward step s:  pre = h_{t-1} W_hh^T  (GEMM, Acc output)  ->  step_forward_kernel
//   backward step s: step_backward_kernel (grad_xproj_t, grad_hp_t, the direct carries)
//                    ->  carry_prod = grad_hp_t W_hh  (GEMM, Acc output, read by step s-1)
// One thread per (row, unit). h_{t-1} and c_{t-1} of the recurrence are kept in Acc
// precision in scratch (h_state, c_state); the GEMM's left operand is the output in the
// input dtype, as for the other paths.
//
// Verified on an H200 (tests/test_cuda.py, compute-sanitizer memcheck, synccheck and
// racecheck in float64; benchmarks/RESULTS.md). `auto` picks it for large W_hh (rule in
// path_rule.h); the throughput path runs it where no tiling fits on chip.
#pragma once

#include "chunk_kernels.cuh"

namespace tbptt::cuda {

constexpr int kStepThreads = 256;

template <class Cell, typename Scalar, typename Acc>
__global__ void __launch_bounds__(kStepThreads) step_forward_kernel(CudaForwardParams<Scalar, Acc> p, int64_t s,
                                                                    const Acc* pre) {
  constexpr int G = Cell::kGates;
  constexpr bool kCell = Cell::kCellIndex >= 0;
  const int64_t H = p.H, B = p.B, GH = G * H;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B * H;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / H, j = i % H;
    Acc c = Acc(0);
    if constexpr (kCell) c = s == 0 ? to_acc(p.c0[i]) : p.c_state[i];
    const Acc* product = pre + b * GH + j;
    p.h_state[i] = unit_forward<Cell>(p, s, b, j, [&](int g) { return product[g * H]; },
                                      s == 0 ? to_acc(p.h0[i]) : p.h_state[i], c);
    if constexpr (kCell) p.c_state[i] = c;
  }
}

// carry_prod: [B, H] grad_hp_{t+1} W_hh from the previous (later) step's GEMM; unused at
// the first processed step (s = T - 1), where the carry is grad_h_n (grad_c_n).
// p.carry_h holds the direct part of the carry (cells with kDirectHiddenGrad), p.carry_c
// the cell-state carry.
template <class Cell, typename Scalar, typename Acc>
__global__ void __launch_bounds__(kStepThreads) step_backward_kernel(CudaBackwardParams<Scalar, Acc> p, int64_t s,
                                                                     const Acc* carry_prod) {
  constexpr int G = Cell::kGates;
  constexpr bool kCell = Cell::kCellIndex >= 0;
  const int64_t H = p.H, B = p.B;
  const bool first = s == p.T - 1;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B * H;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / H, j = i % H;
    Acc carry = Acc(0), carry_c = Acc(0);
    if (first) {
      carry = to_acc(p.grad_h_n[i]);
      if constexpr (kCell) carry_c = to_acc(p.grad_c_n[i]);
    } else {
      carry = carry_prod[i] + (Cell::kDirectHiddenGrad ? p.carry_h[i] : Acc(0));
      if constexpr (kCell) carry_c = p.carry_c[i];
    }
    Acc ghp[G], grad_h_prev, grad_c_prev;
    unit_backward<Cell>(p, s, b, j, carry, carry_c, ghp, grad_h_prev, grad_c_prev);
    if constexpr (Cell::kDirectHiddenGrad) p.carry_h[i] = grad_h_prev;
    if constexpr (kCell) p.carry_c[i] = grad_c_prev;
  }
}

inline unsigned step_blocks(int64_t elems) {
  const int64_t blocks = (elems + kStepThreads - 1) / kStepThreads;
  return static_cast<unsigned>(blocks < 65535 ? blocks : 65535);
}

template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_step_forward(const CudaForwardParams<Scalar, Acc>& p, int64_t s, const Acc* pre,
                                cudaStream_t stream) {
  if (p.B * p.H == 0) return cudaSuccess;
  step_forward_kernel<Cell, Scalar, Acc><<<step_blocks(p.B * p.H), kStepThreads, 0, stream>>>(p, s, pre);
  return cudaGetLastError();
}

template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_step_backward(const CudaBackwardParams<Scalar, Acc>& p, int64_t s, const Acc* carry_prod,
                                 cudaStream_t stream) {
  if (p.B * p.H == 0) return cudaSuccess;
  step_backward_kernel<Cell, Scalar, Acc><<<step_blocks(p.B * p.H), kStepThreads, 0, stream>>>(p, s, carry_prod);
  return cudaGetLastError();
}

}  // namespace tbptt::cuda
