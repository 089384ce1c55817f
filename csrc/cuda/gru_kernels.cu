// GRU chunk kernels, every dtype. See chunk_kernels.cuh and block_kernels.cuh and csrc/cells/gru.h.
#include "instantiate.cuh"

TBPTT_INSTANTIATE_CELL(tbptt::GRUCell)
