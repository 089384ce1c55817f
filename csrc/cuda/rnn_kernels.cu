// Elman RNN (tanh and relu) chunk kernels, every dtype. See chunk_kernels.cuh.
#include "chunk_kernels.cuh"

TBPTT_INSTANTIATE_CELL(tbptt::cuda::Cell::RNN_TANH)
TBPTT_INSTANTIATE_CELL(tbptt::cuda::Cell::RNN_RELU)
