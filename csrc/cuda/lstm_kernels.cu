// LSTM chunk kernels, every dtype. See chunk_kernels.cuh and csrc/cells/lstm.h.
#include "chunk_kernels.cuh"

TBPTT_INSTANTIATE_CELL(tbptt::LSTMCell)
