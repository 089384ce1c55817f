// Host-side interface of the CUDA chunk kernels: the parameter structs (the shared
// ones of csrc/chunk_params.h plus the weights and Acc-typed scratch the kernels use)
// and the launchers, explicitly instantiated per cell and dtype in
// {rnn,lstm,gru}_kernels.cu. No torch headers here or in the kernels.
//
// Acc is the arithmetic type: float for float, half and bfloat16; double for double.
// Scratch buffers are owned by the caller (csrc/cuda/cuda_ops.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../chunk_params.h"

namespace tbptt::cuda {

template <typename Scalar, typename Acc>
struct CudaForwardParams : ForwardParams<Scalar> {
  const Scalar* w_hh = nullptr;    // [G*H, H]
  const Scalar* w_hh_t = nullptr;  // [H, G*H]: W_hh transposed, contiguous (latency path)
  Acc* pre = nullptr;              // scratch [B, G*H]: h_{t-1} W_hh^T of the current step
  Acc* h_state = nullptr;        // scratch [B, H]: h_{t-1} in Acc precision
  Acc* c_state = nullptr;        // scratch [B, H]: c_{t-1}, cells with a cell state
  bool tf32 = false;             // fp32 recurrent products may run as TF32 (throughput, stepwise)
  unsigned* barrier = nullptr;   // scratch [B]: the throughput path's per-row-tile barrier counters
};

template <typename Scalar, typename Acc>
struct CudaBackwardParams : BackwardParams<Scalar, Acc> {
  const Scalar* w_hh_t = nullptr;  // [H, G*H]: W_hh transposed, contiguous (persistent path)
  const Scalar* w_hh = nullptr;    // [G*H, H]: W_hh (latency path)
  Acc* delta = nullptr;            // scratch [2, B, G*H]: grad_hp of the step, by step parity
  Acc* carry_h = nullptr;          // scratch [B, H]: dL/dh flowing to the previous step
  Acc* carry_c = nullptr;          // scratch [B, H]: dL/dc flowing to the previous step
  Scalar* delta_op = nullptr;      // scratch [2, B, G*H]: grad_hp by step parity, input dtype (throughput path)
  bool tf32 = false;               // fp32 recurrent products may run as TF32 (throughput, stepwise)
  unsigned* barrier = nullptr;     // scratch [B]: the throughput path's per-row-tile barrier counters
};

// Run the whole chunk's recurrence in one persistent, cooperative launch on `stream`.
// Return cudaSuccess or the launch error.
template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_chunk_forward(const CudaForwardParams<Scalar, Acc>& p, int device, cudaStream_t stream);

template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_chunk_backward(const CudaBackwardParams<Scalar, Acc>& p, int device, cudaStream_t stream);

// The latency path (block_kernels.cuh): one block per batch row, no grid-wide barrier.
template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_block_forward(const CudaForwardParams<Scalar, Acc>& p, int device, cudaStream_t stream);

template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_block_backward(const CudaBackwardParams<Scalar, Acc>& p, int device, cudaStream_t stream);

// The throughput path (tile_kernels.cuh): batch row tiles x unit tiles, W_hh slices
// resident in shared memory, the products on tensor cores. cudaErrorNotSupported (before
// any CUDA call that could fail) where no tiling fits: the caller runs the stepwise path.
template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_tile_forward(const CudaForwardParams<Scalar, Acc>& p, int device, cudaStream_t stream);

template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_tile_backward(const CudaBackwardParams<Scalar, Acc>& p, int device, cudaStream_t stream);

// The stepwise path's pointwise kernels (step_kernels.cuh), one step s each; the host
// runs the GEMMs between them. pre: [B, G*H] h_{t-1} W_hh^T; carry_prod: [B, H]
// grad_hp_{t+1} W_hh (unused at s = T - 1).
template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_step_forward(const CudaForwardParams<Scalar, Acc>& p, int64_t s, const Acc* pre,
                                cudaStream_t stream);

template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_step_backward(const CudaBackwardParams<Scalar, Acc>& p, int64_t s, const Acc* carry_prod,
                                 cudaStream_t stream);

}  // namespace tbptt::cuda
