// Every launcher of one cell for every dtype (persistent, latency, throughput and
// stepwise paths); used by the per-cell instantiation files, which nvcc compiles in
// parallel.
#pragma once

#include "block_kernels.cuh"
#include "chunk_kernels.cuh"
#include "step_kernels.cuh"
#include "tile_kernels.cuh"

// launch_<PATH>_forward and launch_<PATH>_backward of one cell and dtype.
#define TBPTT_INSTANTIATE_PATH(PATH, CELL, SCALAR, ACC)                                         \
  template cudaError_t tbptt::cuda::launch_##PATH##_forward<CELL, SCALAR, ACC>(                 \
      const tbptt::cuda::CudaForwardParams<SCALAR, ACC>&, int, cudaStream_t);                  \
  template cudaError_t tbptt::cuda::launch_##PATH##_backward<CELL, SCALAR, ACC>(                \
      const tbptt::cuda::CudaBackwardParams<SCALAR, ACC>&, int, cudaStream_t);
#define TBPTT_INSTANTIATE_STEP(CELL, SCALAR, ACC)                                                  \
  template cudaError_t tbptt::cuda::launch_step_forward<CELL, SCALAR, ACC>(                         \
      const tbptt::cuda::CudaForwardParams<SCALAR, ACC>&, int64_t, const ACC*, cudaStream_t);       \
  template cudaError_t tbptt::cuda::launch_step_backward<CELL, SCALAR, ACC>(                        \
      const tbptt::cuda::CudaBackwardParams<SCALAR, ACC>&, int64_t, const ACC*, cudaStream_t);
#define TBPTT_INSTANTIATE_CELL_DTYPE(CELL, SCALAR, ACC) \
  TBPTT_INSTANTIATE_PATH(chunk, CELL, SCALAR, ACC)      \
  TBPTT_INSTANTIATE_PATH(block, CELL, SCALAR, ACC)      \
  TBPTT_INSTANTIATE_PATH(tile, CELL, SCALAR, ACC)       \
  TBPTT_INSTANTIATE_STEP(CELL, SCALAR, ACC)
#define TBPTT_INSTANTIATE_CELL(CELL)                 \
  TBPTT_INSTANTIATE_CELL_DTYPE(CELL, float, float)   \
  TBPTT_INSTANTIATE_CELL_DTYPE(CELL, double, double) \
  TBPTT_INSTANTIATE_CELL_DTYPE(CELL, __half, float)  \
  TBPTT_INSTANTIATE_CELL_DTYPE(CELL, __nv_bfloat16, float)
