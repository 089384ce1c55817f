// Elman RNN (tanh and relu) chunk kernels, every dtype. See chunk_kernels.cuh and csrc/cells/rnn.h.
#include "chunk_kernels.cuh"

TBPTT_INSTANTIATE_CELL(tbptt::RNNCell<false>)
TBPTT_INSTANTIATE_CELL(tbptt::RNNCell<true>)
