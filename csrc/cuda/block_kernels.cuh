// Latency path (issue 9, first step): one thread block per batch row runs the whole
// recurrence of a chunk, with no grid-wide barrier. Batch rows never exchange state, so
// blocks need no common barrier: a step is two __syncthreads.
//
// Forward, per block (row b), per step s (time t = time_of(s)):
//   (1) pre[n] = sum_k h[k] W_hh[n, k] for every gate column n: one thread per column,
//       W_hh^T held in shared memory k-major (consecutive threads read consecutive words)
//       when it fits, else read through the read-only cache; h in shared memory;
//       four partial sums per dot product, added in a fixed order (reproducible).
//   (2) the cell's pointwise step for every unit j (one thread per unit): h[j] and c[j]
//       stay in shared memory for the next step; output and saved go to global memory.
// Backward, per step from the last: (1) the pointwise backward per unit with the
// carried gradient from shared memory, grad_hp to shared memory; (2) the carry
// carry[k] (+)= sum_n grad_hp[n] W_hh[n, k] per unit k (W_hh row-major in shared memory).
//
// Verified on an H200 (tests/test_cuda.py, compute-sanitizer memcheck, synccheck and
// racecheck in float64; benchmarks/RESULTS.md). Opt-in with TBPTT_EXT_CUDA_PATH=latency:
// `auto` does not pick it (ahead of the persistent kernels only within the spread).
#pragma once

#include "chunk_kernels.cuh"

namespace tbptt::cuda {

constexpr int kBlockThreads = 512;

// The block's shared memory: two vectors [H] (h and c forward, the two carries
// backward), one [G*H] (the gates' W_hh products, or grad_hp), then W_hh when it fits.
template <typename Scalar, typename Acc>
struct BlockShared {
  Acc *first, *second, *gates;
  Scalar* w;
};

template <typename Scalar, typename Acc>
__device__ __forceinline__ BlockShared<Scalar, Acc> block_shared(int64_t H, int64_t GH) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Acc* first = reinterpret_cast<Acc*>(smem_raw);
  return {first, first + H, first + 2 * H, reinterpret_cast<Scalar*>(first + 2 * H + GH)};
}

// sum_k a[k] w[k * stride] over k < K with four partial sums, added in a fixed order.
template <typename Acc, typename Scalar, bool kReadOnlyCache>
__device__ __forceinline__ Acc dot_strided(const Acc* a, const Scalar* w, int64_t stride, int64_t K) {
  Acc s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t k = 0;
  auto load = [&](int64_t i) { return to_acc(kReadOnlyCache ? load_readonly(w + i * stride) : w[i * stride]); };
  for (; k + 4 <= K; k += 4) {
    s0 += a[k] * load(k);
    s1 += a[k + 1] * load(k + 1);
    s2 += a[k + 2] * load(k + 2);
    s3 += a[k + 3] * load(k + 3);
  }
  for (; k < K; ++k) s0 += a[k] * load(k);
  return (s0 + s1) + (s2 + s3);
}

template <class Cell, typename Scalar, typename Acc, bool W_SMEM>
__global__ void __launch_bounds__(kBlockThreads) block_forward_kernel(CudaForwardParams<Scalar, Acc> p) {
  constexpr int G = Cell::kGates;
  constexpr bool kCell = Cell::kCellIndex >= 0;
  const int64_t H = p.H, GH = G * H, b = blockIdx.x;
  const auto [h, c, pre, w_t] = block_shared<Scalar, Acc>(H, GH);  // w_t: [H, G*H] = W_hh^T, if W_SMEM
  if (W_SMEM) {
    for (int64_t i = threadIdx.x; i < GH * H; i += blockDim.x) w_t[i] = p.w_hh_t[i];
  }
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    h[j] = to_acc(p.h0[b * H + j]);
    c[j] = kCell ? to_acc(p.c0[b * H + j]) : Acc(0);
  }
  __syncthreads();
  for (int64_t s = 0; s < p.T; ++s) {
    const bool restart = p.restarts(s, b);
    // (1) the W_hh product of every gate column (zero for a restarting row)
    for (int64_t n = threadIdx.x; n < GH; n += blockDim.x) {
      pre[n] = restart ? Acc(0)
               : W_SMEM ? dot_strided<Acc, Scalar, false>(h, w_t + n, GH, H)
                        : dot_strided<Acc, Scalar, true>(h, p.w_hh_t + n, GH, H);
    }
    __syncthreads();
    // (2) the pointwise step of every unit
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      h[j] = unit_forward<Cell>(p, s, b, j, [gates = pre + j, H](int g) { return gates[g * H]; }, h[j], c[j]);
    }
    __syncthreads();
  }
}

template <class Cell, typename Scalar, typename Acc, bool W_SMEM>
__global__ void __launch_bounds__(kBlockThreads) block_backward_kernel(CudaBackwardParams<Scalar, Acc> p) {
  constexpr int G = Cell::kGates;
  constexpr bool kCell = Cell::kCellIndex >= 0;
  const int64_t H = p.H, GH = G * H, b = blockIdx.x;
  const auto [carry_h, carry_c, grad_hp, w] = block_shared<Scalar, Acc>(H, GH);  // w: [G*H, H] = W_hh, if W_SMEM
  const Scalar* w_hh = p.w_hh;  // [G*H, H] row-major
  if (W_SMEM) {
    for (int64_t i = threadIdx.x; i < GH * H; i += blockDim.x) w[i] = w_hh[i];
  }
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    carry_h[j] = to_acc(p.grad_h_n[b * H + j]);
    carry_c[j] = kCell ? to_acc(p.grad_c_n[b * H + j]) : Acc(0);
  }
  __syncthreads();
  for (int64_t i_step = 0; i_step < p.T; ++i_step) {
    const int64_t s = p.T - 1 - i_step;
    // (1) the pointwise backward of every unit
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      Acc ghp[G], grad_h_prev, grad_c_prev;
      unit_backward<Cell>(p, s, b, j, carry_h[j], carry_c[j], ghp, grad_h_prev, grad_c_prev);
      store_blocks<G>(grad_hp + j, H, ghp, Identity{});
      carry_h[j] = Cell::kDirectHiddenGrad ? grad_h_prev : Acc(0);
      if constexpr (kCell) carry_c[j] = grad_c_prev;
    }
    __syncthreads();
    // (2) the gradient carried to h_{t-1}: carry[k] (+)= sum_n grad_hp[n] W_hh[n, k]
    for (int64_t k = threadIdx.x; k < H; k += blockDim.x) {
      const Acc sum = W_SMEM ? dot_strided<Acc, Scalar, false>(grad_hp, w + k, H, GH)
                             : dot_strided<Acc, Scalar, true>(grad_hp, w_hh + k, H, GH);
      carry_h[k] += sum;
    }
    __syncthreads();
  }
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    p.grad_h0[b * H + j] = from_acc<Scalar>(carry_h[j]);
    if (kCell) p.grad_c0[b * H + j] = from_acc<Scalar>(carry_c[j]);
  }
}

// Shared memory of the path: the Acc vectors, then W_hh when it fits (else W_hh is read
// through the read-only cache). cudaErrorNotSupported when not even the vectors fit:
// the caller runs the persistent path.
template <typename Kernel>
cudaError_t launch_block_path(Kernel smem_kernel, Kernel global_kernel, void* params, int64_t B, int64_t H,
                              int64_t G, size_t acc_size, size_t elem_size, int device, cudaStream_t stream) {
  int smem_optin = 0;
  cudaError_t err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  const size_t vectors = static_cast<size_t>((2 + G) * H) * acc_size;
  const size_t with_w = vectors + static_cast<size_t>(G * H * H) * elem_size;
  if (vectors > static_cast<size_t>(smem_optin)) return cudaErrorNotSupported;
  Kernel kernel = global_kernel;
  size_t smem = vectors;
  if (with_w <= static_cast<size_t>(smem_optin)) {
    if (cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(with_w)) ==
        cudaSuccess) {
      kernel = smem_kernel, smem = with_w;
    } else {
      cudaGetLastError();  // clear the refused attribute; W_hh stays in global memory
    }
  }
  if (smem > 48 * 1024 && kernel == global_kernel) {
    err = cudaFuncSetAttribute(global_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  void* args[] = {params};
  return cudaLaunchKernel(reinterpret_cast<void*>(kernel), dim3(static_cast<unsigned>(B)), dim3(kBlockThreads), args,
                          smem, stream);
}

template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_block_forward(const CudaForwardParams<Scalar, Acc>& p, int device, cudaStream_t stream) {
  if (p.T == 0 || p.B == 0 || p.H == 0) return cudaSuccess;
  CudaForwardParams<Scalar, Acc> params = p;
  return launch_block_path(block_forward_kernel<Cell, Scalar, Acc, true>, block_forward_kernel<Cell, Scalar, Acc, false>,
                           &params, p.B, p.H, Cell::kGates, sizeof(Acc), sizeof(Scalar), device, stream);
}

template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_block_backward(const CudaBackwardParams<Scalar, Acc>& p, int device, cudaStream_t stream) {
  if (p.T == 0 || p.B == 0 || p.H == 0) return cudaSuccess;
  CudaBackwardParams<Scalar, Acc> params = p;
  return launch_block_path(block_backward_kernel<Cell, Scalar, Acc, true>,
                           block_backward_kernel<Cell, Scalar, Acc, false>, &params, p.B, p.H, Cell::kGates,
                           sizeof(Acc), sizeof(Scalar), device, stream);
}

}  // namespace tbptt::cuda
