// GRU chunk kernels, every dtype. See chunk_kernels.cuh and csrc/cells/gru.h.
#include "chunk_kernels.cuh"

TBPTT_INSTANTIATE_CELL(tbptt::GRUCell)
