// Persistent CUDA kernels: one cooperative launch runs all T steps of a chunk's
// forward recurrence, another all steps of its backward.
//
// Block b owns hidden units [j0, j0 + U) for the whole chunk and keeps the W_hh rows
// it needs in shared memory (rows g*H + j of W_hh for the forward, rows j of W_hh^T
// for the backward) when they fit, else reads them from global memory (L2) each
// step. Per forward step: (1) the block computes h_{t-1} W_hh^T for its G*U gate
// columns and all B rows (reading h_{t-1} of every unit, written by every block in
// the previous step), (2) the pointwise cell update for its own units (cells.h),
// then (3) one grid-wide barrier. Per backward step: (1) the pointwise backward for
// its own units (it owns the carried gradient of those units), a grid-wide barrier,
// (2) the gradient carried to h_{t-1} for its own units, delta_t W_hh, reading
// delta_t of every unit. The delta scratch is double-buffered by step parity, so the
// next step's pointwise cannot overwrite what a slower block is still reading.
// The dot products of the matrix phases are one warp each (lanes striding over the
// reduction, coalesced), summed in a fixed order: results are bitwise reproducible.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "../cells.h"
#include "chunk_launch.h"

namespace tbptt::cuda {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;

template <Cell C>
constexpr int gates_of() {
  return C == Cell::LSTM ? 4 : (C == Cell::GRU ? 3 : 1);
}

// ------------------------------------------------------------- conversions
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename Scalar>
__device__ __forceinline__ Scalar from_acc(float x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <typename Scalar>
__device__ __forceinline__ Scalar from_acc(double x) { return x; }

// Loads of data written by other blocks earlier in the same launch: through L2,
// bypassing the (non-coherent) L1.
__device__ __forceinline__ float load_cg(const float* p) { return __ldcg(p); }
__device__ __forceinline__ double load_cg(const double* p) { return __ldcg(p); }
__device__ __forceinline__ __half load_cg(const __half* p) {
  return __ushort_as_half(__ldcg(reinterpret_cast<const unsigned short*>(p)));
}
__device__ __forceinline__ __nv_bfloat16 load_cg(const __nv_bfloat16* p) {
  return __ushort_as_bfloat16(__ldcg(reinterpret_cast<const unsigned short*>(p)));
}

// Sum over the 32 lanes of a warp, in a fixed order (so results are reproducible);
// every lane gets the total.
template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// --------------------------------------------------------------- forward
template <Cell C, typename Scalar, typename Acc, bool W_SMEM>
__global__ void __launch_bounds__(kThreads) chunk_forward_kernel(ForwardParams<Scalar, Acc> p, int64_t units) {
  constexpr int G = gates_of<C>();
  cg::grid_group grid = cg::this_grid();
  const int64_t H = p.H, B = p.B, GH = G * H, step = B * H;
  const int64_t j0 = blockIdx.x * units;
  const int64_t U = std::min<int64_t>(units, H - j0);
  const int64_t lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int64_t ldw = H;  // row stride in shared memory (a warp reads along one row)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Scalar* w_smem = reinterpret_cast<Scalar*>(smem_raw);  // [G*U, ldw]: row g*U + u = W_hh row g*H + j0 + u
  if (W_SMEM) {
    for (int64_t i = threadIdx.x; i < G * U * H; i += blockDim.x) {
      const int64_t row = i / H, k = i % H, g = row / U, u = row % U;
      w_smem[row * ldw + k] = p.w_hh[(g * H + j0 + u) * H + k];
    }
  }
  for (int64_t i = threadIdx.x; i < B * U; i += blockDim.x) {
    const int64_t b = i / U, j = j0 + i % U;
    if (C == Cell::LSTM) p.state[b * H + j] = to_acc(p.c0[b * H + j]);
    if (C == Cell::GRU) p.state[b * H + j] = to_acc(p.h0[b * H + j]);
  }
  __syncthreads();
  for (int64_t t = 0; t < p.T; ++t) {
    const Scalar* h_prev = t > 0 ? p.output + (t - 1) * step : p.h0;
    // (1) pre[b, g*H + j] = sum_k h_{t-1}[b, k] W_hh[g*H + j, k] for the own units j:
    // one warp per output, lanes striding over k (coalesced), a fixed-order warp sum.
    for (int64_t item = warp; item < B * G * U; item += warps) {
      const int64_t b = item / (G * U), col = item % (G * U), g = col / U, u = col % U;
      const Scalar* w_row = W_SMEM ? w_smem + col * ldw : p.w_hh + (g * H + j0 + u) * H;
      const Scalar* h_row = h_prev + b * H;
      Acc sum = 0;
      for (int64_t k = lane; k < H; k += 32) sum += to_acc(load_cg(h_row + k)) * to_acc(w_row[k]);
      sum = warp_sum(sum);
      if (lane == 0) p.pre[b * GH + g * H + j0 + u] = sum;
    }
    __syncthreads();
    // (2) the pointwise cell update for the own units.
    const Scalar* x_t = p.xproj + t * B * GH;
    Scalar* out_t = p.output + t * step;
    for (int64_t i = threadIdx.x; i < B * U; i += blockDim.x) {
      const int64_t b = i / U, j = j0 + i % U;
      const Scalar* x = x_t + b * GH;
      const Acc* pre = p.pre + b * GH;
      if constexpr (C == Cell::RNN_TANH || C == Cell::RNN_RELU) {
        out_t[b * H + j] = from_acc<Scalar>(rnn_activation(to_acc(x[j]) + pre[j], C == Cell::RNN_RELU));
      } else if constexpr (C == Cell::LSTM) {
        Acc gi = to_acc(x[j]) + pre[j], gf = to_acc(x[H + j]) + pre[H + j];
        Acc gg = to_acc(x[2 * H + j]) + pre[2 * H + j], go = to_acc(x[3 * H + j]) + pre[3 * H + j];
        Acc c, h;
        lstm_forward_point(gi, gf, gg, go, p.state[b * H + j], c, h);
        Scalar* gates = p.gates + t * B * 4 * H + b * 4 * H;
        gates[j] = from_acc<Scalar>(gi);
        gates[H + j] = from_acc<Scalar>(gf);
        gates[2 * H + j] = from_acc<Scalar>(gg);
        gates[3 * H + j] = from_acc<Scalar>(go);
        p.cell[t * step + b * H + j] = from_acc<Scalar>(c);
        p.state[b * H + j] = c;
        out_t[b * H + j] = from_acc<Scalar>(h);
      } else {  // GRU
        const Acc b_r = p.b_hh ? to_acc(p.b_hh[j]) : Acc(0), b_z = p.b_hh ? to_acc(p.b_hh[H + j]) : Acc(0);
        const Acc b_n = p.b_hh ? to_acc(p.b_hh[2 * H + j]) : Acc(0);
        const Acc hp_n = pre[2 * H + j] + b_n;
        Acc r, z, n, h;
        gru_forward_point(to_acc(x[j]), to_acc(x[H + j]), to_acc(x[2 * H + j]), pre[j] + b_r, pre[H + j] + b_z, hp_n,
                          p.state[b * H + j], r, z, n, h);
        Scalar* gates = p.gates + t * B * 4 * H + b * 4 * H;
        gates[j] = from_acc<Scalar>(r);
        gates[H + j] = from_acc<Scalar>(z);
        gates[2 * H + j] = from_acc<Scalar>(n);
        gates[3 * H + j] = from_acc<Scalar>(hp_n);
        p.state[b * H + j] = h;
        out_t[b * H + j] = from_acc<Scalar>(h);
      }
    }
    // (3) every unit of h_t is written before any block reads it.
    grid.sync();
  }
  for (int64_t i = threadIdx.x; i < B * U; i += blockDim.x) {
    const int64_t b = i / U, j = j0 + i % U;
    p.h_n[b * H + j] = p.output[(p.T - 1) * step + b * H + j];
    if (C == Cell::LSTM) p.c_n[b * H + j] = from_acc<Scalar>(p.state[b * H + j]);
  }
}

// -------------------------------------------------------------- backward
template <Cell C, typename Scalar, typename Acc, bool W_SMEM>
__global__ void __launch_bounds__(kThreads) chunk_backward_kernel(BackwardParams<Scalar, Acc> p, int64_t units) {
  constexpr int G = gates_of<C>();
  cg::grid_group grid = cg::this_grid();
  const int64_t H = p.H, B = p.B, GH = G * H, step = B * H;
  const int64_t j0 = blockIdx.x * units;
  const int64_t U = std::min<int64_t>(units, H - j0);
  const int64_t lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int64_t ldw = GH;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Scalar* w_smem = reinterpret_cast<Scalar*>(smem_raw);  // [U, ldw]: row u = W_hh^T row j0 + u
  if (W_SMEM) {
    for (int64_t i = threadIdx.x; i < U * GH; i += blockDim.x) {
      const int64_t u = i / GH, n = i % GH;
      w_smem[u * ldw + n] = p.w_hh_t[(j0 + u) * GH + n];
    }
  }
  for (int64_t i = threadIdx.x; i < B * U; i += blockDim.x) {
    const int64_t b = i / U, j = j0 + i % U;
    p.carry_h[b * H + j] = to_acc(p.grad_h_n[b * H + j]);
    if (C == Cell::LSTM) p.carry_c[b * H + j] = to_acc(p.grad_c_n[b * H + j]);
  }
  __syncthreads();
  for (int64_t s = 0; s < p.T; ++s) {
    const int64_t t = p.T - 1 - s;
    Acc* delta = p.delta + (s % 2) * B * GH;
    // (1) pointwise backward for the own units: delta_t and the direct carries.
    for (int64_t i = threadIdx.x; i < B * U; i += blockDim.x) {
      const int64_t b = i / U, j = j0 + i % U;
      const Acc grad_h = to_acc(p.grad_output[t * step + b * H + j]) + p.carry_h[b * H + j];
      Scalar* gx = p.grad_xproj + t * B * GH + b * GH;
      Acc* d = delta + b * GH;
      if constexpr (C == Cell::RNN_TANH || C == Cell::RNN_RELU) {
        const Acc v = rnn_activation_backward(grad_h, to_acc(p.output[t * step + b * H + j]), C == Cell::RNN_RELU);
        d[j] = v;
        gx[j] = from_acc<Scalar>(v);
      } else if constexpr (C == Cell::LSTM) {
        const Scalar* gates = p.gates + t * B * 4 * H + b * 4 * H;
        const Acc c = to_acc(p.cell[t * step + b * H + j]);
        const Acc c_prev = to_acc(t > 0 ? p.cell[(t - 1) * step + b * H + j] : p.c0[b * H + j]);
        Acc di, df, dg, dout, dc_prev;
        lstm_backward_point(grad_h, p.carry_c[b * H + j], to_acc(gates[j]), to_acc(gates[H + j]),
                            to_acc(gates[2 * H + j]), to_acc(gates[3 * H + j]), c, c_prev, di, df, dg, dout, dc_prev);
        d[j] = di;
        d[H + j] = df;
        d[2 * H + j] = dg;
        d[3 * H + j] = dout;
        gx[j] = from_acc<Scalar>(di);
        gx[H + j] = from_acc<Scalar>(df);
        gx[2 * H + j] = from_acc<Scalar>(dg);
        gx[3 * H + j] = from_acc<Scalar>(dout);
        p.carry_c[b * H + j] = dc_prev;
      } else {  // GRU
        const Scalar* gates = p.gates + t * B * 4 * H + b * 4 * H;
        const Acc h_prev = to_acc(t > 0 ? p.output[(t - 1) * step + b * H + j] : p.h0[b * H + j]);
        Acc dxr, dxz, dxn, dhr, dhz, dhn, direct;
        gru_backward_point(grad_h, to_acc(gates[j]), to_acc(gates[H + j]), to_acc(gates[2 * H + j]),
                           to_acc(gates[3 * H + j]), h_prev, dxr, dxz, dxn, dhr, dhz, dhn, direct);
        gx[j] = from_acc<Scalar>(dxr);
        gx[H + j] = from_acc<Scalar>(dxz);
        gx[2 * H + j] = from_acc<Scalar>(dxn);
        Scalar* ghp = p.grad_hp + t * B * GH + b * GH;
        ghp[j] = from_acc<Scalar>(dhr);
        ghp[H + j] = from_acc<Scalar>(dhz);
        ghp[2 * H + j] = from_acc<Scalar>(dhn);
        d[j] = dhr;
        d[H + j] = dhz;
        d[2 * H + j] = dhn;
        p.carry_h[b * H + j] = direct;  // the matmul below adds delta W_hh
      }
    }
    // every unit of delta_t is written before any block reads it.
    grid.sync();
    // (2) carry_h[b, k] (+)= sum_n delta_t[b, n] W_hh[n, k] for the own units k: one warp
    // per output, lanes striding over n, a fixed-order warp sum. (GRU: carry_h holds the
    // direct term written in (1); the grid barrier ordered it.)
    for (int64_t item = warp; item < B * U; item += warps) {
      const int64_t b = item / U, u = item % U, k = j0 + u;
      const Scalar* w_row = W_SMEM ? w_smem + u * ldw : p.w_hh_t + k * GH;
      const Acc* d_row = delta + b * GH;
      Acc sum = 0;
      for (int64_t n = lane; n < GH; n += 32) sum += load_cg(d_row + n) * to_acc(w_row[n]);
      sum = warp_sum(sum);
      if (lane == 0) p.carry_h[b * H + k] = C == Cell::GRU ? p.carry_h[b * H + k] + sum : sum;
    }
    // (1) of the next step reads carry_h with the thread-per-item mapping.
    __syncthreads();
  }
  for (int64_t i = threadIdx.x; i < B * U; i += blockDim.x) {
    const int64_t b = i / U, j = j0 + i % U;
    p.grad_h0[b * H + j] = from_acc<Scalar>(p.carry_h[b * H + j]);
    if (C == Cell::LSTM) p.grad_c0[b * H + j] = from_acc<Scalar>(p.carry_c[b * H + j]);
  }
}

// -------------------------------------------------------------- launchers
// Grid: one block per multiprocessor at most (all blocks must be co-resident for the
// grid-wide barrier), each owning ceil(H / blocks) units; W_hh rows in shared memory
// when they fit in the opt-in limit, else streamed from L2.
template <typename Kernel>
cudaError_t launch_persistent(Kernel smem_kernel, Kernel global_kernel, void* params, int64_t H,
                              int64_t row_elems, int64_t rows_per_unit, size_t elem_size, int device,
                              cudaStream_t stream) {
  int sms = 0, smem_optin = 0, cooperative = 0;
  cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  if (!cooperative) return cudaErrorNotSupported;
  // Blocks that can be resident at once (all must be, for the grid-wide barrier):
  // one per multiprocessor normally, fewer where the context is given fewer SMs.
  int resident = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, global_kernel, kThreads, 0);
  if (err != cudaSuccess) return err;
  int64_t blocks = std::min<int64_t>({static_cast<int64_t>(sms), static_cast<int64_t>(resident) * sms, H});
  if (blocks < 1) return cudaErrorCooperativeLaunchTooLarge;
  int64_t units = (H + blocks - 1) / blocks;
  blocks = (H + units - 1) / units;
  size_t smem = static_cast<size_t>(units * rows_per_unit * row_elems) * elem_size;
  Kernel kernel = global_kernel;
  if (smem <= static_cast<size_t>(smem_optin)) {
    if (cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) ==
        cudaSuccess) {
      int active = 0;
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&active, smem_kernel, kThreads, smem);
      if (static_cast<int64_t>(active) * sms >= blocks) kernel = smem_kernel;
    }
    cudaGetLastError();  // clear a refused attribute; the global-memory kernel runs instead
  }
  if (kernel == global_kernel) smem = 0;
  void* args[] = {params, &units};
  return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), dim3(static_cast<unsigned>(blocks)),
                                     dim3(kThreads), args, smem, stream);
}

template <Cell C, typename Scalar, typename Acc>
cudaError_t chunk_forward(const ForwardParams<Scalar, Acc>& p, int device, cudaStream_t stream) {
  if (p.T == 0 || p.B == 0 || p.H == 0) return cudaSuccess;
  ForwardParams<Scalar, Acc> params = p;
  return launch_persistent(chunk_forward_kernel<C, Scalar, Acc, true>, chunk_forward_kernel<C, Scalar, Acc, false>, &params,
                           p.H, p.H, gates_of<C>(), sizeof(Scalar), device, stream);
}

template <Cell C, typename Scalar, typename Acc>
cudaError_t chunk_backward(const BackwardParams<Scalar, Acc>& p, int device, cudaStream_t stream) {
  if (p.T == 0 || p.B == 0 || p.H == 0) return cudaSuccess;
  BackwardParams<Scalar, Acc> params = p;
  return launch_persistent(chunk_backward_kernel<C, Scalar, Acc, true>, chunk_backward_kernel<C, Scalar, Acc, false>,
                           &params, p.H, gates_of<C>() * p.H, 1, sizeof(Scalar), device, stream);
}

}  // namespace tbptt::cuda

// Explicit instantiation of both launchers of one cell for every dtype.
#define TBPTT_INSTANTIATE_CELL(CELL)                                                                      \
  namespace tbptt::cuda {                                                                                 \
  template cudaError_t chunk_forward<CELL, float, float>(const ForwardParams<float, float>&, int, cudaStream_t); \
  template cudaError_t chunk_forward<CELL, double, double>(const ForwardParams<double, double>&, int,         \
                                                            cudaStream_t);                                  \
  template cudaError_t chunk_forward<CELL, __half, float>(const ForwardParams<__half, float>&, int, cudaStream_t); \
  template cudaError_t chunk_forward<CELL, __nv_bfloat16, float>(const ForwardParams<__nv_bfloat16, float>&, int, \
                                                                  cudaStream_t);                            \
  template cudaError_t chunk_backward<CELL, float, float>(const BackwardParams<float, float>&, int, cudaStream_t); \
  template cudaError_t chunk_backward<CELL, double, double>(const BackwardParams<double, double>&, int,       \
                                                             cudaStream_t);                                 \
  template cudaError_t chunk_backward<CELL, __half, float>(const BackwardParams<__half, float>&, int,         \
                                                            cudaStream_t);                                  \
  template cudaError_t chunk_backward<CELL, __nv_bfloat16, float>(const BackwardParams<__nv_bfloat16, float>&,  \
                                                                   int, cudaStream_t);                      \
  }
