// Elman RNN (tanh and relu) chunk kernels, every dtype. See chunk_kernels.cuh and block_kernels.cuh and csrc/cells/rnn.h.
#include "instantiate.cuh"

TBPTT_INSTANTIATE_CELL(tbptt::RNNCell<false>)
TBPTT_INSTANTIATE_CELL(tbptt::RNNCell<true>)
