// Argument checks and the weight gradient, shared by the CPU and CUDA chunk ops
// (ATen calls only, so they run on either device).
#pragma once

#include <ATen/ATen.h>

namespace tbptt {

// Checks a chunk's per-step sequence tensor `seq` ([T, B, seq_blocks * H]), the
// recurrent weight ([w_blocks * H, H]) and the initial state h0 ([B, H]); returns
// (T, B, H).
inline std::tuple<int64_t, int64_t, int64_t> check_chunk_args(const char* op, const char* seq_name,
                                                              const at::Tensor& seq, int64_t seq_blocks,
                                                              const at::Tensor& w_hh, int64_t w_blocks,
                                                              const at::Tensor& h0) {
  TORCH_CHECK(seq.dim() == 3, op, ": ", seq_name, " must be [T, B, ", seq_blocks, "H], got ", seq.dim(),
              "-D tensor of shape ", seq.sizes());
  TORCH_CHECK(h0.dim() == 2, op, ": h0 must be [B, H], got shape ", h0.sizes());
  const int64_t T = seq.size(0), B = seq.size(1), H = h0.size(1);
  TORCH_CHECK(h0.size(0) == B, op, ": h0 batch size ", h0.size(0), " does not match ", seq_name,
              " batch size ", B);
  TORCH_CHECK(seq.size(2) == seq_blocks * H, op, ": ", seq_name, " last dim must be ", seq_blocks,
              " * H = ", seq_blocks * H, ", got ", seq.size(2));
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == w_blocks * H && w_hh.size(1) == H, op, ": w_hh must be [",
              w_blocks * H, ", ", H, "], got ", w_hh.sizes());
  for (const at::Tensor* t : {&w_hh, &h0}) {
    TORCH_CHECK(t->scalar_type() == seq.scalar_type(), op, ": all tensors must have dtype ",
                seq.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == seq.device(), op, ": all tensors must be on ", seq.device(), ", got ",
                t->device());
  }
  return {T, B, H};
}

inline void check_same(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape,
                       const at::Tensor& like) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have dtype ",
              like.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " must be on ", like.device(), ", got ",
              t.device());
}

// dL/dW_hh = sum_t grad_pre_t^T h_{t-1}, as two GEMMs over the whole chunk
// (h_{t-1} is h0 for t = 0 and output[t-1] after). grad_pre: [T, B, G], h0: [B, H],
// output: [T, B, H] -> [G, H].
inline at::Tensor recurrent_weight_grad(const at::Tensor& grad_pre, const at::Tensor& h0,
                                        const at::Tensor& output) {
  const int64_t T = grad_pre.size(0), G = grad_pre.size(2), H = h0.size(1);
  if (T == 0) return at::zeros({G, H}, h0.options());
  at::Tensor grad_w = at::mm(grad_pre.select(0, 0).t(), h0);
  if (T > 1) {
    grad_w.addmm_(grad_pre.slice(0, 1).reshape({-1, G}).t(), output.slice(0, 0, T - 1).reshape({-1, H}));
  }
  return grad_w;
}

}  // namespace tbptt
