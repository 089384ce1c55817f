// Throughput path (issue 10): the recurrent products on tensor cores, W_hh on chip for
// the whole chunk, the batch split into row tiles that never wait for each other.
//
// Partition: block (u, r) = (blockIdx.x, blockIdx.y) owns hidden units
// [u*U, u*U + U) of batch rows [r*R, r*R + R) for the whole chunk. The blocks of one row
// tile (same r) exchange h_t (forward) or grad_hp_t (backward) every step through L2 and
// meet at a barrier of their own: one thread-block cluster (cluster.sync) when the row
// tile's blocks fit one cluster (at most 8, sm_90), else a counter barrier among them in
// a cooperative launch. Row tiles never meet.
//
// Forward step s (time t), per block:
//   (1) pre[R, G*U] = h_{t-1}[rows, :] W_hh[own gate rows, :]^T: h_{t-1} staged from L2
//       into shared memory (all its columns at once where they fit, else in passes of
//       TileShape::stage columns), used by every gate column the block owns; W_hh's slice
//       [H, G*U] resident in shared memory since the launch (TF32-rounded for TF32).
//   (2) the cell's pointwise step for the own (row, unit) pairs; h and c of the own units
//       stay in shared memory (Acc precision), h_t goes to the output.
//   (3) the row tile's barrier.
// Backward step, per block: (1) the pointwise backward of the own pairs, grad_hp_t to a
// scratch double-buffered by step parity; (2) the row tile's barrier; (3) the carry
// dL/dh_{t-1}[R, U] = grad_hp_t[rows, :] W_hh[:, own units] (slice [G*H, U] resident).
//
// Products: bf16/fp16 operands on tensor cores (WMMA m16n16k16, fp32 accumulators);
// fp32 operands on tensor cores as TF32 (m16n16k8) when p.tf32 (torch.backends.cudnn.
// allow_tf32), else exactly in fp32 on CUDA cores; float64 exactly on CUDA cores. Every
// sum runs in a fixed order (no atomics in any reduction): bitwise reproducible.
//
// Verified on an H200 (tests/test_cuda.py, compute-sanitizer memcheck, synccheck and
// racecheck in float64; benchmarks/RESULTS.md), its one-pass staging on an H100 (tests,
// memcheck, racecheck in float64); `auto` picks it by the rule in path_rule.h. The
// launcher returns cudaErrorNotSupported where no tiling fits on chip, and the caller
// runs the stepwise path (step_kernels.cuh) instead.
#pragma once

#include <mma.h>

#include "chunk_kernels.cuh"
#include "tile_plan.h"

namespace tbptt::cuda {

TBPTT_HD int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// ------------------------------------------------------------ the barrier
// ld.acquire of a counter other blocks increment.
__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Every block of the row tile has finished the step's writes before any reads them
// (reads go through L2: load_from_l2, __ldcg). Cluster: barrier.cluster arrive.release /
// wait.acquire by every thread. Counters: one per row tile, zeroed before the launch,
// `target` = (steps done) * blocks; thread 0 fences, arrives and waits for the block
// (the pattern of cooperative_groups' grid sync).
__device__ __forceinline__ void row_tile_barrier(const TileShape& shape, unsigned* counter, unsigned target) {
  if (shape.unit_tiles == 1) {
    __syncthreads();
  } else if (shape.cluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cooperative_groups::this_cluster().sync();
#else
    __trap();  // the launcher never picks clusters for code compiled below sm_90
#endif
  } else {
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      atomicAdd(counter, 1u);
      while (load_acquire(counter) < target) __nanosleep(20);
      __threadfence();
    }
    __syncthreads();
  }
}

// -------------------------------------------------------- the product
template <typename Scalar, MatMul kMath>
struct WmmaTypes {
  using A = Scalar;  // __half or __nv_bfloat16
  static constexpr int kK = 16;
};
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800  // bf16 and tf32 fragments: sm_80 and newer
#define TBPTT_TILE_WMMA 1
template <>
struct WmmaTypes<float, MatMul::kTf32> {
  using A = nvcuda::wmma::precision::tf32;
  static constexpr int kK = 8;
};
#endif

// A W_hh element as the block keeps it in shared memory: rounded to TF32 once, when it
// is loaded, where the products run as TF32 (the fragments then need no conversion).
template <MatMul kMath, typename Scalar>
__device__ __forceinline__ Scalar resident_weight(Scalar v) {
#if defined(TBPTT_TILE_WMMA)
  if constexpr (kMath == MatMul::kTf32) return nvcuda::wmma::__float_to_tf32(v);
#endif
  return v;
}

// out[r, n] = sum_k a[r, k] w[k, n] for r < R, n < n_pad: `a` is global memory written
// by other blocks of this launch (rows a_rows apart; rows >= valid_rows and columns
// >= K read as zero), `w` the resident slice [k_pad, ldw]. All threads of the block
// call it; out is complete on return.
template <MatMul kMath, typename Scalar, typename Acc>
__device__ __forceinline__ void tile_product(const Scalar* a, int64_t a_rows, int valid_rows, int64_t K,
                                             const TileShape& shape, const TileSmem<Scalar, Acc>& layout,
                                             const Scalar* w, Scalar* a_smem, Acc* out) {
  const int R = shape.rows, n_pad = shape.n_pad, lda = layout.lda, ldw = layout.ldw, ldo = layout.ldo;
  const int stage_cols = shape.stage;  // (all of k_pad where shared memory allows: one pass)
  // (a) stage a[:, k0 : k0 + stage_cols] into shared memory; 16-byte loads where rows allow.
  constexpr int kVec = 16 / static_cast<int>(sizeof(Scalar));
  const bool vector_ok = a_rows % kVec == 0 && K % kVec == 0 && reinterpret_cast<uintptr_t>(a) % 16 == 0;
  auto stage = [&](int64_t k0) {
    if (vector_ok) {
      const int vectors = stage_cols / kVec;
      for (int i = threadIdx.x; i < R * vectors; i += blockDim.x) {
        const int r = i / vectors, kk = (i % vectors) * kVec;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < valid_rows && k0 + kk < K) v = __ldcg(reinterpret_cast<const uint4*>(a + r * a_rows + k0 + kk));
        *reinterpret_cast<uint4*>(a_smem + r * lda + kk) = v;
      }
    } else {
      for (int i = threadIdx.x; i < R * stage_cols; i += blockDim.x) {
        const int r = i / stage_cols, kk = i % stage_cols;
        a_smem[r * lda + kk] =
            r < valid_rows && k0 + kk < K ? load_from_l2(a + r * a_rows + k0 + kk) : from_acc<Scalar>(Acc(0));
      }
    }
  };
  if constexpr (kMath == MatMul::kExact) {
    // CUDA cores: thread i owns outputs i + m * blockDim.x, a sequential sum over k each.
    Acc acc[kMaxExact];
#pragma unroll
    for (int m = 0; m < kMaxExact; ++m) acc[m] = Acc(0);
    for (int64_t k0 = 0; k0 < shape.k_pad; k0 += stage_cols) {
      stage(k0);
      __syncthreads();
      const int kc = static_cast<int>(imin(stage_cols, shape.k_pad - k0));
#pragma unroll
      for (int m = 0; m < kMaxExact; ++m) {
        const int i = threadIdx.x + m * blockDim.x;
        if (i < R * n_pad) {
          const int r = i / n_pad, n = i % n_pad;
          const Scalar* a_row = a_smem + r * lda;
          const Scalar* w_col = w + k0 * ldw + n;
          Acc sum = acc[m];
          for (int kk = 0; kk < kc; ++kk) sum += to_acc(a_row[kk]) * to_acc(w_col[kk * ldw]);
          acc[m] = sum;
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int m = 0; m < kMaxExact; ++m) {
      const int i = threadIdx.x + m * blockDim.x;
      if (i < R * n_pad) out[(i / n_pad) * ldo + i % n_pad] = acc[m];
    }
  } else {
#if !defined(TBPTT_TILE_WMMA)
    __trap();  // the launcher refuses devices below sm_80
#else
    // Tensor cores: 16x16 output tiles dealt round-robin to the warps, accumulators
    // held in registers across the staged chunks.
    namespace wmma = nvcuda::wmma;
    const int warp = threadIdx.x / 32;
    using Types = WmmaTypes<Scalar, kMath>;
    constexpr int kK = Types::kK;
    const int tiles_n = n_pad / 16, tiles = (R / 16) * tiles_n;
    wmma::fragment<wmma::accumulator, 16, 16, kK, float> acc[kMaxFragments];
#pragma unroll
    for (int f = 0; f < kMaxFragments; ++f) wmma::fill_fragment(acc[f], 0.0f);
    for (int64_t k0 = 0; k0 < shape.k_pad; k0 += stage_cols) {
      stage(k0);
      __syncthreads();
      const int kc = static_cast<int>(imin(stage_cols, shape.k_pad - k0));  // a multiple of 16
#pragma unroll
      for (int f = 0; f < kMaxFragments; ++f) {
        const int tile = warp + f * kTileWarps;
        if (tile < tiles) {
          const int tm = tile / tiles_n, tn = tile % tiles_n;
          for (int kk = 0; kk < kc; kk += kK) {
            wmma::fragment<wmma::matrix_a, 16, 16, kK, typename Types::A, wmma::row_major> a_frag;
            wmma::fragment<wmma::matrix_b, 16, 16, kK, typename Types::A, wmma::row_major> b_frag;
            wmma::load_matrix_sync(a_frag, a_smem + tm * 16 * lda + kk, lda);
            wmma::load_matrix_sync(b_frag, w + (k0 + kk) * ldw + tn * 16, ldw);
            if constexpr (kMath == MatMul::kTf32) {  // (w already holds TF32 values: resident_weight)
#pragma unroll
              for (int e = 0; e < a_frag.num_elements; ++e) a_frag.x[e] = wmma::__float_to_tf32(a_frag.x[e]);
            }
            wmma::mma_sync(acc[f], a_frag, b_frag, acc[f]);
          }
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int f = 0; f < kMaxFragments; ++f) {
      const int tile = warp + f * kTileWarps;
      if (tile < tiles) {
        const int tm = tile / tiles_n, tn = tile % tiles_n;
        wmma::store_matrix_sync(out + tm * 16 * ldo + tn * 16, acc[f], ldo, wmma::mem_row_major);
      }
    }
#endif
  }
  __syncthreads();
}

// first[r, u] = a[r0 + r, j0 + u] (and second from c, cells with a cell state) for the
// block's [R, U] pairs, zero outside the batch and H: the state (or carry) a block
// starts with, from a [B, H] tensor.
template <bool kCell, typename Acc, typename Scalar>
__device__ __forceinline__ void load_own_tile(Acc* first, const Scalar* a, Acc* second, const Scalar* c,
                                              int valid_rows, int64_t r0, int64_t j0, int R, int U, int64_t H) {
  for (int i = threadIdx.x; i < R * U; i += blockDim.x) {
    const int r = i / U, u = i % U;
    const bool inside = r < valid_rows && j0 + u < H;
    first[i] = inside ? to_acc(a[(r0 + r) * H + j0 + u]) : Acc(0);
    second[i] = kCell && inside ? to_acc(c[(r0 + r) * H + j0 + u]) : Acc(0);
  }
}

// --------------------------------------------------------------- forward
template <class Cell, typename Scalar, typename Acc, MatMul kMath>
__global__ void __launch_bounds__(kTileThreads) tile_forward_kernel(CudaForwardParams<Scalar, Acc> p, TileShape shape) {
  constexpr int G = Cell::kGates;
  constexpr bool kCell = Cell::kCellIndex >= 0;
  const int64_t H = p.H, B = p.B, step_elems = B * H;
  const int R = shape.rows, U = shape.units;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * U, r0 = static_cast<int64_t>(blockIdx.y) * R;
  const int valid_rows = static_cast<int>(imin(R, B - r0));
  const TileSmem<Scalar, Acc> layout(shape);
  extern __shared__ __align__(128) unsigned char tile_smem[];
  Scalar* w = reinterpret_cast<Scalar*>(tile_smem + layout.w_off);  // [H, G*U]: w[k, g*U + u] = W_hh[g*H + j0 + u, k]
  Scalar* a_smem = reinterpret_cast<Scalar*>(tile_smem + layout.a_off);
  Acc* pre = reinterpret_cast<Acc*>(tile_smem + layout.out_off);  // [R, G*U]
  Acc* h_own = reinterpret_cast<Acc*>(tile_smem + layout.first_off);  // [R, U]
  Acc* c_own = reinterpret_cast<Acc*>(tile_smem + layout.second_off);
  // The W_hh slice, zero outside W_hh (k >= H, u beyond the units): read along k (coalesced).
  for (int64_t i = threadIdx.x; i < static_cast<int64_t>(shape.n_pad) * shape.k_pad; i += blockDim.x) {
    const int n = static_cast<int>(i / shape.k_pad), k = static_cast<int>(i % shape.k_pad);
    const int g = n / U, u = n % U;
    const bool inside = g < G && j0 + u < H && k < H;
    w[k * layout.ldw + n] = inside ? resident_weight<kMath>(p.w_hh[(g * H + j0 + u) * H + k]) : from_acc<Scalar>(Acc(0));
  }
  load_own_tile<kCell>(h_own, p.h0, c_own, p.c0, valid_rows, r0, j0, R, U, H);
  __syncthreads();
  unsigned* counter = p.barrier == nullptr ? nullptr : p.barrier + blockIdx.y;
  for (int64_t s = 0; s < p.T; ++s) {
    const Scalar* h_prev = (s > 0 ? p.output + p.time_of(s - 1) * step_elems : p.h0) + r0 * H;
    // (1) the own gate columns of h_{t-1} W_hh^T, every row of the tile
    tile_product<kMath>(h_prev, H, valid_rows, H, shape, layout, w, a_smem, pre);
    // (2) the pointwise step of the own (row, unit) pairs
    for (int i = threadIdx.x; i < R * U; i += blockDim.x) {
      const int r = i / U, u = i % U;
      if (r >= valid_rows || j0 + u >= H) continue;
      const Acc* product = pre + r * layout.ldo + u;
      h_own[i] = unit_forward<Cell>(p, s, r0 + r, j0 + u, [&](int g) { return product[g * U]; }, h_own[i], c_own[i]);
    }
    // (3) the row tile's h_t is complete before any of its blocks reads it
    row_tile_barrier(shape, counter, static_cast<unsigned>((s + 1) * shape.unit_tiles));
  }
}

// -------------------------------------------------------------- backward
template <class Cell, typename Scalar, typename Acc, MatMul kMath>
__global__ void __launch_bounds__(kTileThreads) tile_backward_kernel(CudaBackwardParams<Scalar, Acc> p,
                                                                     TileShape shape) {
  constexpr int G = Cell::kGates;
  constexpr bool kCell = Cell::kCellIndex >= 0;
  const int64_t H = p.H, B = p.B, GH = G * H;
  const int R = shape.rows, U = shape.units;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * U, r0 = static_cast<int64_t>(blockIdx.y) * R;
  const int valid_rows = static_cast<int>(imin(R, B - r0));
  const TileSmem<Scalar, Acc> layout(shape);
  extern __shared__ __align__(128) unsigned char tile_smem[];
  Scalar* w = reinterpret_cast<Scalar*>(tile_smem + layout.w_off);  // [G*H, U]: w[n, u] = W_hh[n, j0 + u]
  Scalar* a_smem = reinterpret_cast<Scalar*>(tile_smem + layout.a_off);
  Acc* product = reinterpret_cast<Acc*>(tile_smem + layout.out_off);  // [R, U]
  Acc* carry_h = reinterpret_cast<Acc*>(tile_smem + layout.first_off);  // [R, U]
  Acc* carry_c = reinterpret_cast<Acc*>(tile_smem + layout.second_off);
  for (int64_t i = threadIdx.x; i < static_cast<int64_t>(shape.k_pad) * shape.n_pad; i += blockDim.x) {
    const int64_t n = i / shape.n_pad;
    const int u = static_cast<int>(i % shape.n_pad);
    const bool inside = n < GH && u < U && j0 + u < H;
    w[n * layout.ldw + u] = inside ? resident_weight<kMath>(p.w_hh[n * H + j0 + u]) : from_acc<Scalar>(Acc(0));
  }
  load_own_tile<kCell>(carry_h, p.grad_h_n, carry_c, p.grad_c_n, valid_rows, r0, j0, R, U, H);
  __syncthreads();
  unsigned* counter = p.barrier == nullptr ? nullptr : p.barrier + blockIdx.y;
  for (int64_t i_step = 0; i_step < p.T; ++i_step) {
    const int64_t s = p.T - 1 - i_step;
    Scalar* delta = p.delta_op + (i_step % 2) * B * GH;  // grad_hp_t, the product's left operand
    // (1) the pointwise backward of the own pairs
    for (int i = threadIdx.x; i < R * U; i += blockDim.x) {
      const int r = i / U, u = i % U;
      if (r >= valid_rows || j0 + u >= H) continue;
      Acc ghp[G], grad_h_prev, grad_c_prev;
      unit_backward<Cell>(p, s, r0 + r, j0 + u, carry_h[i], carry_c[i], ghp, grad_h_prev, grad_c_prev);
      store_blocks<G>(delta + (r0 + r) * GH + j0 + u, H, ghp, FromAcc<Scalar>{});
      carry_h[i] = Cell::kDirectHiddenGrad ? grad_h_prev : Acc(0);  // (3) adds the product
      if constexpr (kCell) carry_c[i] = grad_c_prev;
    }
    // (2) the row tile's grad_hp_t is complete before any of its blocks reads it
    row_tile_barrier(shape, counter, static_cast<unsigned>((i_step + 1) * shape.unit_tiles));
    // (3) the carry to h_{t-1} for the own units: grad_hp_t[rows, :] W_hh[:, own units]
    tile_product<kMath>(delta + r0 * GH, GH, valid_rows, GH, shape, layout, w, a_smem, product);
    for (int i = threadIdx.x; i < R * U; i += blockDim.x) carry_h[i] += product[(i / U) * layout.ldo + i % U];
    __syncthreads();
  }
  for (int i = threadIdx.x; i < R * U; i += blockDim.x) {
    const int r = i / U, u = i % U;
    if (r >= valid_rows || j0 + u >= H) continue;
    const int64_t at = (r0 + r) * H + j0 + u;
    p.grad_h0[at] = from_acc<Scalar>(carry_h[i]);
    if (kCell) p.grad_c0[at] = from_acc<Scalar>(carry_c[i]);
  }
}

// -------------------------------------------------------------- launchers
// One launch of `kernel` over the plan's grid: a cluster launch (the row tile's blocks
// one cluster) or a cooperative one (all blocks resident for the counter barrier, the
// counters zeroed first). A refused cluster launch falls back to the counters.
template <typename Kernel, typename Params>
cudaError_t launch_tiles(Kernel kernel, Params& params, TileShape shape, size_t smem, int device,
                         cudaStream_t stream) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(shape.unit_tiles), static_cast<unsigned>(shape.row_tiles));
  if (shape.cluster) {
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = dim3(kTileThreads);
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeClusterDimension;
    attribute[0].val.clusterDim.x = static_cast<unsigned>(shape.unit_tiles);
    attribute[0].val.clusterDim.y = 1;
    attribute[0].val.clusterDim.z = 1;
    config.attrs = attribute;
    config.numAttrs = 1;
    // Clusters need the kernel compiled for sm_90 (not JIT-compiled from older PTX) and a
    // cluster of this size to fit; otherwise the counter barrier runs.
    cudaFuncAttributes attributes = {};
    int clusters = 0;
    err = cudaFuncGetAttributes(&attributes, kernel);
    if (err != cudaSuccess) return err;
    if (attributes.ptxVersion >= 90) {
      err = cudaOccupancyMaxActiveClusters(&clusters, kernel, &config);
      if (err != cudaSuccess) {
        cudaGetLastError();  // clear the error of the refused query (ours) before falling back
        clusters = 0;
      }
    }
    // (every row tile's cluster resident at once: fewer would run the chunk in waves)
    if (clusters >= shape.row_tiles) return cudaLaunchKernelEx(&config, kernel, params, shape);
    shape.cluster = false;
  }
  int resident = 0, sms = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kTileThreads, smem);
  if (err != cudaSuccess) return err;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (static_cast<int64_t>(resident) * sms < static_cast<int64_t>(shape.unit_tiles) * shape.row_tiles) {
    return cudaErrorNotSupported;
  }
  if (shape.unit_tiles > 1) {
    err = cudaMemsetAsync(params.barrier, 0, sizeof(unsigned) * shape.row_tiles, stream);
    if (err != cudaSuccess) return err;
  }
  void* args[] = {&params, &shape};
  return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), grid, dim3(kTileThreads), args, smem, stream);
}

// The plan for a call on `device`; rows = 0 where no tiling fits.
template <class Cell, typename Scalar, typename Acc, MatMul kMath>
TilePlan device_tile_plan(int64_t B, int64_t H, int device) {
  int sms = 0, smem_optin = 0, major = 0, cooperative = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  if (!cooperative || major < 8) return {};  // WMMA bf16/tf32 and the plans need sm_80+
  return plan_tiles<Scalar, Acc, kMath>(B, H, Cell::kGates, sms, static_cast<size_t>(smem_optin), major >= 9);
}

template <class Cell, typename Scalar, typename Acc, MatMul kMath>
cudaError_t launch_tile_forward_as(const CudaForwardParams<Scalar, Acc>& p, int device, cudaStream_t stream) {
  const TilePlan plan = device_tile_plan<Cell, Scalar, Acc, kMath>(p.B, p.H, device);
  if (plan.forward.rows == 0) return cudaErrorNotSupported;
  CudaForwardParams<Scalar, Acc> params = p;
  return launch_tiles(tile_forward_kernel<Cell, Scalar, Acc, kMath>, params, plan.forward, plan.forward_smem, device,
                      stream);
}

template <class Cell, typename Scalar, typename Acc, MatMul kMath>
cudaError_t launch_tile_backward_as(const CudaBackwardParams<Scalar, Acc>& p, int device, cudaStream_t stream) {
  const TilePlan plan = device_tile_plan<Cell, Scalar, Acc, kMath>(p.B, p.H, device);
  if (plan.backward.rows == 0) return cudaErrorNotSupported;
  CudaBackwardParams<Scalar, Acc> params = p;
  return launch_tiles(tile_backward_kernel<Cell, Scalar, Acc, kMath>, params, plan.backward, plan.backward_smem,
                      device, stream);
}

// launch(std::integral_constant<MatMul, M>) with the product's arithmetic M for the
// dtype: tensor cores for the half types, TF32 or exact fp32 for float (tf32), exact for
// double.
template <typename Scalar, typename Launch>
cudaError_t with_matmul(bool tf32, Launch launch) {
  if constexpr (std::is_same_v<Scalar, double>) {
    return launch(std::integral_constant<MatMul, MatMul::kExact>{});
  } else if constexpr (std::is_same_v<Scalar, float>) {
    return tf32 ? launch(std::integral_constant<MatMul, MatMul::kTf32>{})
                : launch(std::integral_constant<MatMul, MatMul::kExact>{});
  } else {
    return launch(std::integral_constant<MatMul, MatMul::kHalf16>{});
  }
}

template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_tile_forward(const CudaForwardParams<Scalar, Acc>& p, int device, cudaStream_t stream) {
  if (p.T == 0 || p.B == 0 || p.H == 0) return cudaSuccess;
  return with_matmul<Scalar>(p.tf32, [&](auto math) {
    return launch_tile_forward_as<Cell, Scalar, Acc, decltype(math)::value>(p, device, stream);
  });
}

template <class Cell, typename Scalar, typename Acc>
cudaError_t launch_tile_backward(const CudaBackwardParams<Scalar, Acc>& p, int device, cudaStream_t stream) {
  if (p.T == 0 || p.B == 0 || p.H == 0) return cudaSuccess;
  return with_matmul<Scalar>(p.tf32, [&](auto math) {
    return launch_tile_backward_as<Cell, Scalar, Acc, decltype(math)::value>(p, device, stream);
  });
}

}  // namespace tbptt::cuda
