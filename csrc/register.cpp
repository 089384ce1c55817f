// Operator schemas of the tbptt_ext namespace (declared once, here) and the Python
// module stub that lets `import tbptt_ext._C` load this library. The kernels of every
// op are csrc/chunk_ops.h over a backend: csrc/cpu/chunk_cpu.cpp (CPU) and
// csrc/cuda/cuda_ops.cpp (CUDA); fake kernels are in tbptt_ext/ops.py.
//
// One op call runs one layer and direction of a cell over a chunk of T steps.
// Shapes (T steps, B batch, I input features, H hidden, G gates: RNN 1, GRU 3, LSTM 4):
//   input [T, B, I]      time-major chunk input
//   w_ih [G*H, I], w_hh [G*H, H], b_ih, b_hh [G*H] or None: torch.nn's parameters
//   h0, c0 [B, H]        the state entering the chunk
//   reset [T, B] or None bool: reset[t, b] starts a new sequence for row b at time t:
//                        the state entering time t is zero (forward), the state carried
//                        from t to t - 1 is zero (reverse), no gradient crosses it
//   reverse              run time backwards (the reverse direction of a bidirectional layer)
//   output [T, B, H]     h_t at every time t;  h_n, c_n [B, H] where the direction ends
//   saved [T, B, S*H]    what the backward needs: LSTM (i, f, g, o, c_t), S = 5;
//                        GRU (r, z, n, W_hn h_{t-1} + b_hn), S = 4; RNN nothing
//   w_hr [P, H] or None  LSTM projection (torch.nn's proj_size = P): h_t = W_hr (o tanh c_t)
//                        is P wide (h0, h_n, output, w_hh [4H, P] too), c stays H wide, and
//                        saved gets one more block, o tanh c_t (S = 6); grad_w_hr [P, H]
//                        (an empty tensor without a projection)
// Backward: grad_output [T, B, H] and grad_h_n, grad_c_n [B, H] in; out the gradients of
// input (an empty tensor unless input_needs_grad), h0, c0, w_ih, w_hh and the biases
// (RNN and LSTM: one grad_bias for b_ih and b_hh alike), and, if record_flow, grad_h_norm
// [T] = || dL/dh_t ||_2 over batch and units at every time t (the output gradient plus
// the gradient carried from the step processed before); else an empty tensor.
// All tensors of a call share dtype and device (grad_h_norm: float32, float64 for float64).
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(tbptt_ext, m) {
  m.def("rnn_chunk_forward(Tensor input, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor h0, "
        "Tensor? reset, bool reverse, bool relu) -> (Tensor output, Tensor h_n)");
  m.def("rnn_chunk_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor output, Tensor w_ih, "
        "Tensor w_hh, Tensor h0, Tensor? reset, bool reverse, bool relu, bool input_needs_grad, bool record_flow) -> "
        "(Tensor grad_input, Tensor grad_h0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias, "
        "Tensor grad_h_norm)");

  m.def("lstm_chunk_forward(Tensor input, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor h0, "
        "Tensor c0, Tensor? reset, bool reverse, Tensor? w_hr=None) -> "
        "(Tensor output, Tensor h_n, Tensor c_n, Tensor saved)");
  m.def("lstm_chunk_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor output, "
        "Tensor saved, Tensor w_ih, Tensor w_hh, Tensor h0, Tensor c0, Tensor? reset, bool reverse, "
        "bool input_needs_grad, bool record_flow, Tensor? w_hr=None) -> (Tensor grad_input, Tensor grad_h0, "
        "Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias, Tensor grad_h_norm, "
        "Tensor grad_w_hr)");

  m.def("gru_chunk_forward(Tensor input, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor h0, "
        "Tensor? reset, bool reverse) -> (Tensor output, Tensor h_n, Tensor saved)");
  m.def("gru_chunk_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor output, Tensor saved, "
        "Tensor w_ih, Tensor w_hh, Tensor h0, Tensor? reset, bool reverse, bool input_needs_grad, "
        "bool record_flow) -> (Tensor grad_input, Tensor grad_h0, Tensor grad_w_ih, Tensor grad_w_hh, "
        "Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_h_norm)");
}
