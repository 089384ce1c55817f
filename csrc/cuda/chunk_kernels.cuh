// Persistent CUDA kernels over the cell traits (csrc/cells/): one cooperative launch
// runs all T steps of a chunk's forward recurrence, another all steps of its backward.
//
// Block b owns hidden units [j0, j0 + U) for the whole chunk and keeps the W_hh rows
// it needs in shared memory (rows g*H + j of W_hh for the forward, rows j of W_hh^T
// for the backward) when they fit, else reads them from global memory (L2) each step.
// Forward step s (time t = time_of(s)): (1) the block computes h_{t-1} W_hh^T for its
// G*U gate columns and all B rows (reading h_{t-1} of every unit, written by every
// block in the previous step), (2) Cell::forward for its own units, (3) one grid-wide
// barrier. Backward step: (1) Cell::backward for its own units (it owns their carried
// gradient), a grid-wide barrier, (2) the gradient carried to h_{t-1} for its own
// units, grad_hp_t W_hh, reading grad_hp_t of every unit. The grad_hp scratch is
// double-buffered by step parity, so the next step's pointwise phase cannot overwrite
// what a slower block is still reading.
// The dot products of the matrix phases are one warp each (lanes striding over the
// reduction, coalesced), summed in a fixed order: results are bitwise reproducible.
// A row whose state restarts (reset mask) reads h_prev = c_prev = 0 and no W_hh product;
// no carry crosses into the step before it.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "../cells/gru.h"
#include "../cells/lstm.h"
#include "../cells/rnn.h"
#include "chunk_launch.h"

namespace tbptt::cuda {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;

// ------------------------------------------------------------- conversions
TBPTT_HD float to_acc(float x) { return x; }
TBPTT_HD double to_acc(double x) { return x; }
TBPTT_HD float to_acc(__half x) { return __half2float(x); }
TBPTT_HD float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename Scalar>
TBPTT_HD Scalar from_acc(float x) {
  if constexpr (std::is_same_v<Scalar, __half>) {
    return __float2half(x);
  } else if constexpr (std::is_same_v<Scalar, __nv_bfloat16>) {
    return __float2bfloat16(x);
  } else {
    return x;
  }
}
template <typename Scalar>
TBPTT_HD Scalar from_acc(double x) {
  return x;
}

struct ToAcc {
  template <typename S>
  TBPTT_HD auto operator()(S v) const {
    return to_acc(v);
  }
};
template <typename Scalar>
struct FromAcc {
  template <typename A>
  TBPTT_HD Scalar operator()(A v) const {
    return from_acc<Scalar>(v);
  }
};
struct Identity {
  template <typename A>
  TBPTT_HD A operator()(A v) const {
    return v;
  }
};

// A load through an intrinsic that has no overloads for the half types (__ldcg, __ldg):
// those go through their 16-bit pattern.
template <typename T, typename Intrinsic>
__device__ __forceinline__ T load_via(const T* p, Intrinsic load) {
  if constexpr (std::is_same_v<T, __half>) {
    return __ushort_as_half(load(reinterpret_cast<const unsigned short*>(p)));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __ushort_as_bfloat16(load(reinterpret_cast<const unsigned short*>(p)));
  } else {
    return load(p);
  }
}

// Loads of data written by other blocks earlier in the same launch: through L2,
// bypassing the (non-coherent) L1.
template <typename T>
__device__ __forceinline__ T load_from_l2(const T* p) {
  return load_via(p, [](const auto* q) { return __ldcg(q); });
}

// Loads of data no thread writes during the launch: through the read-only cache.
template <typename T>
__device__ __forceinline__ T load_readonly(const T* p) {
  return load_via(p, [](const auto* q) { return __ldg(q); });
}

// Sum over the 32 lanes of a warp, in a fixed order (so results are reproducible);
// every lane gets the total.
template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// One unit's forward step, shared by every path: row b, unit j at processing step s.
// product(g) is the unit's h_{t-1} W_hh^T for gate g (ignored where the row restarts,
// b_hh added for kRecurrentBiasInside cells); h_before and c (c_{t-1}, cells with a cell
// state) the entering state, zero where the row restarts. Stores saved and the output,
// returns h_t and leaves c_t in c.
template <class Cell, typename Scalar, typename Acc, typename Product>
__device__ __forceinline__ Acc unit_forward(const ForwardParams<Scalar>& p, int64_t s, int64_t b, int64_t j,
                                            Product product, Acc h_before, Acc& c) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = p.H, GH = G * H, row = p.time_of(s) * p.B + b;
  const bool restart = p.restarts(s, b);
  Acc x[G], hp[G], saved[array_size(S)], h;
  load_blocks<G>(x, p.xproj + row * GH + j, H, ToAcc{});
#pragma unroll
  for (int g = 0; g < G; ++g) {
    x[g] += to_acc(p.bias_x[g * H + j]);
    hp[g] = restart ? Acc(0) : product(g);
    if constexpr (Cell::kRecurrentBiasInside) hp[g] += to_acc(p.bias_h[g * H + j]);
  }
  forward<Cell>(x, hp, restart ? Acc(0) : h_before, Cell::kCellIndex >= 0 && !restart ? c : Acc(0), saved, h);
  store_blocks<S>(p.saved + row * S * H + j, H, saved, FromAcc<Scalar>{});
  p.output[row * H + j] = from_acc<Scalar>(h);
  if constexpr (Cell::kCellIndex >= 0) c = saved[Cell::kCellIndex];
  return h;
}

// One unit's backward step, shared by every path: row b, unit j at processing step s,
// with the carries from step s + 1 (carry = dL/dh_t from the later step, carry_c =
// dL/dc_t; both dropped where that step restarted). Reads what the forward saved and
// the entering state (zero where the row restarts); stores grad_xproj (and grad_hp) and
// the gradient record; returns grad_hp in ghp and the direct carries to step s - 1.
template <class Cell, typename Scalar, typename Acc>
__device__ __forceinline__ void unit_backward(const BackwardParams<Scalar, Acc>& p, int64_t s, int64_t b, int64_t j,
                                              Acc carry, Acc carry_c, Acc (&ghp)[Cell::kGates], Acc& grad_h_prev,
                                              Acc& grad_c_prev) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t H = p.H, GH = G * H, SH = S * H, B = p.B;
  const int64_t row = p.time_of(s) * B + b, prev_row = (s > 0 ? p.time_of(s - 1) : 0) * B + b;
  const bool cut = s + 1 < p.T && p.restarts(s + 1, b);  // the next step restarted: no carry from it
  const bool restart = p.restarts(s, b);
  const Acc grad_h = to_acc(p.grad_output[row * H + j]) + (cut ? Acc(0) : carry);
  const Acc grad_c = Cell::kCellIndex >= 0 && !cut ? carry_c : Acc(0);
  Acc saved[array_size(S)], gx[G], c_prev = Acc(0), h_prev = Acc(0);
  load_blocks<S>(saved, p.saved + row * SH + j, H, ToAcc{});
  if constexpr (Cell::kCellIndex >= 0) {
    const Scalar* c = s > 0 ? p.saved + prev_row * SH + Cell::kCellIndex * H : p.c0 + b * H;
    c_prev = restart ? Acc(0) : to_acc(c[j]);
  }
  if constexpr (Cell::kUsesHPrev) {
    const Scalar* h = s > 0 ? p.output + prev_row * H : p.h0 + b * H;
    h_prev = restart ? Acc(0) : to_acc(h[j]);
  }
  const Acc h_out = Cell::kBackwardUsesOutput ? to_acc(p.output[row * H + j]) : Acc(0);
  Cell::backward(grad_h, grad_c, saved, h_out, h_prev, c_prev, gx, ghp, grad_h_prev, grad_c_prev);
  store_blocks<G>(p.grad_xproj + row * GH + j, H, gx, FromAcc<Scalar>{});
  if constexpr (Cell::kRecurrentBiasInside) store_blocks<G>(p.grad_hp + row * GH + j, H, ghp, FromAcc<Scalar>{});
  if (p.grad_h_record != nullptr) p.grad_h_record[row * H + j] = grad_h;
}

// first[b, j] = a[b, j] (and second[b, j] = c[b, j] for cells with a cell state) for the
// block's units j in [j0, j0 + U), every row b: the state (or carry) a block starts with.
template <bool kCell, typename Acc, typename Scalar>
__device__ __forceinline__ void load_own_units(Acc* first, const Scalar* a, Acc* second, const Scalar* c, int64_t B,
                                               int64_t H, int64_t j0, int64_t U) {
  for (int64_t i = threadIdx.x; i < B * U; i += blockDim.x) {
    const int64_t b = i / U, j = j0 + i % U;
    first[b * H + j] = to_acc(a[b * H + j]);
    if (kCell) second[b * H + j] = to_acc(c[b * H + j]);
  }
}

// --------------------------------------------------------------- forward
template <class Cell, typename Scalar, typename Acc, bool W_SMEM>
__global__ void __launch_bounds__(kThreads) chunk_forward_kernel(CudaForwardParams<Scalar, Acc> p, int64_t units) {
  constexpr int G = Cell::kGates;
  constexpr bool kCell = Cell::kCellIndex >= 0;
  cg::grid_group grid = cg::this_grid();
  const int64_t H = p.H, B = p.B, GH = G * H, step_elems = B * H;
  const int64_t j0 = blockIdx.x * units;
  const int64_t U = std::min<int64_t>(units, H - j0);
  const int64_t lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Scalar* w_smem = reinterpret_cast<Scalar*>(smem_raw);  // [G*U, H]: row g*U + u = W_hh row g*H + j0 + u
  if (W_SMEM) {
    for (int64_t i = threadIdx.x; i < G * U * H; i += blockDim.x) {
      const int64_t row = i / H, k = i % H, g = row / U, u = row % U;
      w_smem[row * H + k] = p.w_hh[(g * H + j0 + u) * H + k];
    }
  }
  load_own_units<kCell>(p.h_state, p.h0, p.c_state, p.c0, B, H, j0, U);
  __syncthreads();
  for (int64_t s = 0; s < p.T; ++s) {
    const Scalar* h_prev = s > 0 ? p.output + p.time_of(s - 1) * step_elems : p.h0;
    // (1) pre[b, g*H + j] = sum_k h_{t-1}[b, k] W_hh[g*H + j, k] for the own units j:
    // one warp per output, lanes striding over k (coalesced), a fixed-order warp sum.
    for (int64_t item = warp; item < B * G * U; item += warps) {
      const int64_t b = item / (G * U), col = item % (G * U), g = col / U, u = col % U;
      const Scalar* w_row = W_SMEM ? w_smem + col * H : p.w_hh + (g * H + j0 + u) * H;
      const Scalar* h_row = h_prev + b * H;
      Acc sum = 0;
      for (int64_t k = lane; k < H; k += 32) sum += to_acc(load_from_l2(h_row + k)) * to_acc(w_row[k]);
      sum = warp_sum(sum);
      if (lane == 0) p.pre[b * GH + g * H + j0 + u] = sum;
    }
    __syncthreads();
    // (2) the pointwise cell update for the own units.
    for (int64_t i = threadIdx.x; i < B * U; i += blockDim.x) {
      const int64_t b = i / U, j = j0 + i % U;
      Acc c = kCell ? p.c_state[b * H + j] : Acc(0);
      const Acc* pre = p.pre + b * GH + j;
      p.h_state[b * H + j] = unit_forward<Cell>(p, s, b, j, [&](int g) { return pre[g * H]; }, p.h_state[b * H + j], c);
      if constexpr (kCell) p.c_state[b * H + j] = c;
    }
    // (3) every unit of h_t is written before any block reads it.
    grid.sync();
  }
}

// -------------------------------------------------------------- backward
template <class Cell, typename Scalar, typename Acc, bool W_SMEM>
__global__ void __launch_bounds__(kThreads) chunk_backward_kernel(CudaBackwardParams<Scalar, Acc> p, int64_t units) {
  constexpr int G = Cell::kGates;
  constexpr bool kCell = Cell::kCellIndex >= 0;
  cg::grid_group grid = cg::this_grid();
  const int64_t H = p.H, B = p.B, GH = G * H;
  const int64_t j0 = blockIdx.x * units;
  const int64_t U = std::min<int64_t>(units, H - j0);
  const int64_t lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Scalar* w_smem = reinterpret_cast<Scalar*>(smem_raw);  // [U, G*H]: row u = W_hh^T row j0 + u
  if (W_SMEM) {
    for (int64_t i = threadIdx.x; i < U * GH; i += blockDim.x) {
      const int64_t u = i / GH, n = i % GH;
      w_smem[u * GH + n] = p.w_hh_t[(j0 + u) * GH + n];
    }
  }
  load_own_units<kCell>(p.carry_h, p.grad_h_n, p.carry_c, p.grad_c_n, B, H, j0, U);
  __syncthreads();
  for (int64_t i_step = 0; i_step < p.T; ++i_step) {
    const int64_t s = p.T - 1 - i_step;
    Acc* delta = p.delta + (i_step % 2) * B * GH;
    // (1) pointwise backward for the own units: grad_hp_t and the direct carries.
    for (int64_t i = threadIdx.x; i < B * U; i += blockDim.x) {
      const int64_t b = i / U, j = j0 + i % U;
      Acc ghp[G], grad_h_prev, grad_c_prev;
      unit_backward<Cell>(p, s, b, j, p.carry_h[b * H + j], kCell ? p.carry_c[b * H + j] : Acc(0), ghp, grad_h_prev,
                          grad_c_prev);
      store_blocks<G>(delta + b * GH + j, H, ghp, Identity{});
      if constexpr (Cell::kDirectHiddenGrad) p.carry_h[b * H + j] = grad_h_prev;  // (2) adds grad_hp W_hh
      if constexpr (kCell) p.carry_c[b * H + j] = grad_c_prev;
    }
    // every unit of grad_hp_t is written before any block reads it.
    grid.sync();
    // (2) carry_h[b, k] (+)= sum_n grad_hp_t[b, n] W_hh[n, k] for the own units k: one
    // warp per output, lanes striding over n, a fixed-order warp sum. (Cells with a
    // direct term: carry_h holds it from (1); the grid barrier ordered it.)
    for (int64_t item = warp; item < B * U; item += warps) {
      const int64_t b = item / U, u = item % U, k = j0 + u;
      const Scalar* w_row = W_SMEM ? w_smem + u * GH : p.w_hh_t + k * GH;
      const Acc* d_row = delta + b * GH;
      Acc sum = 0;
      for (int64_t n = lane; n < GH; n += 32) sum += load_from_l2(d_row + n) * to_acc(w_row[n]);
      sum = warp_sum(sum);
      if (lane == 0) p.carry_h[b * H + k] = Cell::kDirectHiddenGrad ? p.carry_h[b * H + k] + sum : sum;
    }
    // (1) of the next step reads carry_h with the thread-per-item mapping.
    __syncthreads();
  }
  for (int64_t i = threadIdx.x; i < B * U; i += blockDim.x) {
    const int64_t b = i / U, j = j0 + i % U;
    p.grad_h0[b * H + j] = from_acc<Scalar>(p.carry_h[b * H + j]);
    if (kCell) p.grad_c0[b * H + j] = from_acc<Scalar>(p.carry_c[b * H + j]);
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
    int active = 0;
    const bool refused =
        cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) !=
            cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&active, smem_kernel, kThreads, smem) != cudaSuccess;
    if (refused) {
      cudaGetLastError();  // clear our refused call (only then: a pending error of other work stays)
    } else if (static_cast<int64_t>(active) * sms >= blocks) {
      kernel = smem_kernel;
    }
  }
  if (kernel == global_kernel) smem = 0;
  void* args[] = {params, &units};
  return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), dim3(static_cast<unsigned>(blocks)),
                                     dim3(kThreads), args, smem, stream);
}

template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_chunk_forward(const CudaForwardParams<Scalar, Acc>& p, int device, cudaStream_t stream) {
  if (p.T == 0 || p.B == 0 || p.H == 0) return cudaSuccess;
  CudaForwardParams<Scalar, Acc> params = p;
  return launch_persistent(chunk_forward_kernel<Cell, Scalar, Acc, true>, chunk_forward_kernel<Cell, Scalar, Acc, false>,
                           &params, p.H, p.H, Cell::kGates, sizeof(Scalar), device, stream);
}

template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_chunk_backward(const CudaBackwardParams<Scalar, Acc>& p, int device, cudaStream_t stream) {
  if (p.T == 0 || p.B == 0 || p.H == 0) return cudaSuccess;
  CudaBackwardParams<Scalar, Acc> params = p;
  return launch_persistent(chunk_backward_kernel<Cell, Scalar, Acc, true>,
                           chunk_backward_kernel<Cell, Scalar, Acc, false>, &params, p.H, Cell::kGates * p.H, 1,
                           sizeof(Scalar), device, stream);
}

}  // namespace tbptt::cuda
