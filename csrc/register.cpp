// Operator schemas of the tbptt_ext namespace (declared once, here) and the
// Python module stub that lets `import tbptt_ext._C` load this library.
// Kernels register themselves per device in csrc/cpu/*.cpp and csrc/cuda/*.cpp;
// fake (meta) kernels are registered in Python (tbptt_ext/_ops.py).
//
// Shapes: T steps, B batch, H hidden. Every tensor of one call shares dtype and
// device. "Pre-activation" gradients (grad_xproj) are dL/d(x W_ih^T + biases).
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(tbptt_ext, m) {
  // Elman RNN.  xproj: [T, B, H] = x W_ih^T + b_ih + b_hh;  w_hh: [H, H];  h0: [B, H]
  // -> output: [T, B, H] (h_1..h_T),  h_n: [B, H]
  m.def("rnn_chunk_forward(Tensor xproj, Tensor w_hh, Tensor h0, bool relu) -> (Tensor output, Tensor h_n)");
  // grad_output: [T, B, H], grad_h_n: [B, H], output/w_hh/h0 as in the forward
  // -> grad_xproj: [T, B, H], grad_h0: [B, H], grad_w_hh: [H, H]
  m.def("rnn_chunk_backward(Tensor grad_output, Tensor grad_h_n, Tensor output, Tensor w_hh, "
        "Tensor h0, bool relu) -> (Tensor grad_xproj, Tensor grad_h0, Tensor grad_w_hh)");

  // LSTM.  xproj: [T, B, 4H] = x W_ih^T + b_ih + b_hh (gate order i, f, g, o);
  // w_hh: [4H, H];  h0, c0: [B, H]
  // -> output: [T, B, H], h_n, c_n: [B, H], gates: [T, B, 4H] (activated i, f, g, o),
  //    cell: [T, B, H] (c_1..c_T). gates and cell are what the backward needs.
  m.def("lstm_chunk_forward(Tensor xproj, Tensor w_hh, Tensor h0, Tensor c0) -> "
        "(Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cell)");
  // -> grad_xproj: [T, B, 4H], grad_h0, grad_c0: [B, H], grad_w_hh: [4H, H]
  m.def("lstm_chunk_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor output, "
        "Tensor gates, Tensor cell, Tensor w_hh, Tensor h0, Tensor c0) -> "
        "(Tensor grad_xproj, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_hh)");

  // GRU.  xproj: [T, B, 3H] = x W_ih^T + b_ih (gate order r, z, n);  w_hh: [3H, H];
  // b_hh: [3H] or None (bias=False);  h0: [B, H]
  // -> output: [T, B, H], h_n: [B, H], gates: [T, B, 4H] = (r, z, n, W_hn h_prev + b_hn)
  m.def("gru_chunk_forward(Tensor xproj, Tensor w_hh, Tensor? b_hh, Tensor h0) -> "
        "(Tensor output, Tensor h_n, Tensor gates)");
  // -> grad_xproj: [T, B, 3H], grad_h0: [B, H], grad_w_hh: [3H, H], grad_b_hh: [3H]
  m.def("gru_chunk_backward(Tensor grad_output, Tensor grad_h_n, Tensor output, Tensor gates, "
        "Tensor w_hh, Tensor h0) -> (Tensor grad_xproj, Tensor grad_h0, Tensor grad_w_hh, "
        "Tensor grad_b_hh)");
}
