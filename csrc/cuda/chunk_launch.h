// Host-side interface of the CUDA chunk kernels: parameter structs (raw pointers,
// filled in by cuda_ops.cpp) and the launchers, explicitly instantiated per cell and
// dtype in {rnn,lstm,gru}_kernels.cu. No torch headers here or in the kernels.
//
// Shapes as in csrc/register.cpp: T steps, B batch, H hidden, G gates per unit
// (RNN 1, GRU 3, LSTM 4). "acc" is the accumulation type: float for float, half and
// bfloat16, double for double. Scratch buffers are acc-typed and owned by the caller.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace tbptt::cuda {

enum class Cell { RNN_TANH, RNN_RELU, LSTM, GRU };

template <typename Scalar, typename Acc>
struct ForwardParams {
  int64_t T, B, H;
  const Scalar* xproj;     // [T, B, G*H]  x W_ih^T + biases (GRU: + b_ih only)
  const Scalar* w_hh;      // [G*H, H]
  const Scalar* b_hh;      // [G*H] GRU only, may be null
  const Scalar* h0;        // [B, H]
  const Scalar* c0;        // [B, H] LSTM only
  Scalar* output;          // [T, B, H]
  Scalar* gates;           // [T, B, 4H] LSTM (i, f, g, o) and GRU (r, z, n, hp_n); null for RNN
  Scalar* cell;            // [T, B, H] LSTM only
  Scalar* h_n;             // [B, H]
  Scalar* c_n;             // [B, H] LSTM only
  Acc* pre;           // scratch [B, G*H]: h_{t-1} W_hh^T of the current step
  Acc* state;         // scratch [B, H]: h (GRU) or c (LSTM) carried in acc precision
};

template <typename Scalar, typename Acc>
struct BackwardParams {
  int64_t T, B, H;
  const Scalar* grad_output;  // [T, B, H]
  const Scalar* grad_h_n;     // [B, H]
  const Scalar* grad_c_n;     // [B, H] LSTM only
  const Scalar* output;       // [T, B, H]
  const Scalar* gates;        // [T, B, 4H] LSTM/GRU (as written by the forward)
  const Scalar* cell;         // [T, B, H] LSTM only
  const Scalar* w_hh_t;       // [H, G*H]: W_hh transposed, contiguous
  const Scalar* h0;           // [B, H]
  const Scalar* c0;           // [B, H] LSTM only
  Scalar* grad_xproj;         // [T, B, G*H]
  Scalar* grad_hp;            // [T, B, 3H] GRU only: dL/d(h_prev W_hh^T + b_hh)
  Scalar* grad_h0;            // [B, H]
  Scalar* grad_c0;            // [B, H] LSTM only
  Acc* delta;            // scratch [B, G*H]: this step's gradient through W_hh
  Acc* carry_h;          // scratch [B, H]: dL/dh flowing to the previous step
  Acc* carry_c;          // scratch [B, H]: LSTM dL/dc flowing to the previous step
};

// Run the whole chunk's recurrence in one persistent, cooperative launch on `stream`.
// Return cudaSuccess or the launch error.
template <Cell C, typename Scalar, typename Acc>
cudaError_t chunk_forward(const ForwardParams<Scalar, Acc>& p, int device, cudaStream_t stream);

template <Cell C, typename Scalar, typename Acc>
cudaError_t chunk_backward(const BackwardParams<Scalar, Acc>& p, int device, cudaStream_t stream);

}  // namespace tbptt::cuda
