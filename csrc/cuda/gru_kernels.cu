// GRU chunk kernels, every dtype. See chunk_kernels.cuh.
#include "chunk_kernels.cuh"

TBPTT_INSTANTIATE_CELL(tbptt::cuda::Cell::GRU)
