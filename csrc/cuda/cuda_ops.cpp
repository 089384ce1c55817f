// CUDA implementations of the tbptt_ext chunk ops (schemas in csrc/register.cpp):
// argument checks, allocation, device guard and current stream here; the recurrence
// itself is one persistent kernel launch per direction (chunk_kernels.cuh); the weight
// gradients are one cuBLAS GEMM each over the chunk (chunk_common.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>

#include "../chunk_common.h"
#include "chunk_launch.h"

namespace tbptt::cuda {
namespace {

template <typename scalar_t>
using cuda_type_t = std::conditional_t<std::is_same_v<scalar_t, at::Half>, __half,
                                       std::conditional_t<std::is_same_v<scalar_t, at::BFloat16>, __nv_bfloat16, scalar_t>>;
template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t>
const cuda_type_t<scalar_t>* ptr(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<const cuda_type_t<scalar_t>*>(t.const_data_ptr<scalar_t>()) : nullptr;
}
template <typename scalar_t>
cuda_type_t<scalar_t>* mut_ptr(at::Tensor& t) {
  return t.defined() ? reinterpret_cast<cuda_type_t<scalar_t>*>(t.data_ptr<scalar_t>()) : nullptr;
}
template <typename scalar_t>
acc_type_t<scalar_t>* acc_ptr(at::Tensor& t) {
  return t.data_ptr<acc_type_t<scalar_t>>();
}

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

at::ScalarType acc_dtype(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

constexpr int gates_of(Cell c) { return c == Cell::LSTM ? 4 : (c == Cell::GRU ? 3 : 1); }

struct ForwardResult {
  at::Tensor output, h_n, c_n, gates, cell;
};

template <Cell C>
ForwardResult forward(const char* op, const at::Tensor& xproj_in, const at::Tensor& w_hh_in,
                      const std::optional<at::Tensor>& b_hh, const at::Tensor& h0_in, const at::Tensor& c0_in) {
  constexpr int G = gates_of(C);
  auto [T, B, H] = check_chunk_args(op, "xproj", xproj_in, G, w_hh_in, G, h0_in);
  if (C == Cell::LSTM) check_same(op, "c0", c0_in, h0_in.sizes(), h0_in);
  if (b_hh.has_value()) check_same(op, "b_hh", *b_hh, {G * H}, xproj_in);
  const c10::cuda::CUDAGuard guard(xproj_in.device());
  const at::Tensor xproj = xproj_in.contiguous(), w_hh = w_hh_in.contiguous(), h0 = h0_in.contiguous();
  const at::Tensor c0 = C == Cell::LSTM ? c0_in.contiguous() : at::Tensor();
  const at::Tensor bias = b_hh.has_value() ? b_hh->contiguous() : at::Tensor();
  const auto opts = xproj.options();
  ForwardResult r;
  r.output = at::empty({T, B, H}, opts);
  r.h_n = at::empty({B, H}, opts);
  if (C == Cell::LSTM) {
    r.c_n = at::empty({B, H}, opts);
    r.cell = at::empty({T, B, H}, opts);
  }
  if (C == Cell::LSTM || C == Cell::GRU) r.gates = at::empty({T, B, 4 * H}, opts);
  if (T == 0) {
    r.h_n.copy_(h0);
    if (C == Cell::LSTM) r.c_n.copy_(c0);
    return r;
  }
  at::Tensor pre = at::empty({B, G * H}, opts.dtype(acc_dtype(xproj)));
  at::Tensor state = at::empty({B, H}, opts.dtype(acc_dtype(xproj)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xproj.scalar_type(), "tbptt_chunk_forward_cuda", [&] {
    using cuda_t = cuda_type_t<scalar_t>;
    using acc_t = acc_type_t<scalar_t>;
    ForwardParams<cuda_t, acc_t> p{};
    p.T = T;
    p.B = B;
    p.H = H;
    p.xproj = ptr<scalar_t>(xproj);
    p.w_hh = ptr<scalar_t>(w_hh);
    p.b_hh = ptr<scalar_t>(bias);
    p.h0 = ptr<scalar_t>(h0);
    p.c0 = ptr<scalar_t>(c0);
    p.output = mut_ptr<scalar_t>(r.output);
    p.gates = mut_ptr<scalar_t>(r.gates);
    p.cell = mut_ptr<scalar_t>(r.cell);
    p.h_n = mut_ptr<scalar_t>(r.h_n);
    p.c_n = mut_ptr<scalar_t>(r.c_n);
    p.pre = acc_ptr<scalar_t>(pre);
    p.state = acc_ptr<scalar_t>(state);
    check_launch(op, chunk_forward<C, cuda_t, acc_t>(p, xproj.get_device(), c10::cuda::getCurrentCUDAStream()));
  });
  return r;
}

struct BackwardResult {
  at::Tensor grad_xproj, grad_h0, grad_c0, grad_w_hh, grad_b_hh;
};

template <Cell C>
BackwardResult backward(const char* op, const at::Tensor& grad_output_in, const at::Tensor& grad_h_n,
                        const at::Tensor& grad_c_n, const at::Tensor& output_in, const at::Tensor& gates_in,
                        const at::Tensor& cell_in, const at::Tensor& w_hh, const at::Tensor& h0_in,
                        const at::Tensor& c0_in) {
  constexpr int G = gates_of(C);
  auto [T, B, H] = check_chunk_args(op, "output", output_in, 1, w_hh, G, h0_in);
  check_same(op, "grad_output", grad_output_in, {T, B, H}, h0_in);
  check_same(op, "grad_h_n", grad_h_n, h0_in.sizes(), h0_in);
  if (C == Cell::LSTM) {
    check_same(op, "grad_c_n", grad_c_n, h0_in.sizes(), h0_in);
    check_same(op, "cell", cell_in, {T, B, H}, h0_in);
    check_same(op, "c0", c0_in, h0_in.sizes(), h0_in);
  }
  if (C == Cell::LSTM || C == Cell::GRU) check_same(op, "gates", gates_in, {T, B, 4 * H}, h0_in);
  const c10::cuda::CUDAGuard guard(output_in.device());
  const at::Tensor grad_output = grad_output_in.contiguous(), output = output_in.contiguous(),
                   h0 = h0_in.contiguous(), w_hh_t = w_hh.t().contiguous();
  const at::Tensor gates = gates_in.defined() ? gates_in.contiguous() : at::Tensor();
  const at::Tensor cell = C == Cell::LSTM ? cell_in.contiguous() : at::Tensor();
  const at::Tensor c0 = C == Cell::LSTM ? c0_in.contiguous() : at::Tensor();
  const at::Tensor g_h_n = grad_h_n.contiguous();
  const at::Tensor g_c_n = C == Cell::LSTM ? grad_c_n.contiguous() : at::Tensor();
  const auto opts = output.options();
  BackwardResult r;
  r.grad_xproj = at::empty({T, B, G * H}, opts);
  r.grad_h0 = at::empty({B, H}, opts);
  if (C == Cell::LSTM) r.grad_c0 = at::empty({B, H}, opts);
  at::Tensor grad_hp = C == Cell::GRU ? at::empty({T, B, 3 * H}, opts) : at::Tensor();
  if (T == 0) {
    r.grad_h0.copy_(g_h_n);
    if (C == Cell::LSTM) r.grad_c0.copy_(g_c_n);
  } else {
    const auto acc_opts = opts.dtype(acc_dtype(output));
    at::Tensor delta = at::empty({2, B, G * H}, acc_opts);
    at::Tensor carry_h = at::empty({B, H}, acc_opts);
    at::Tensor carry_c = at::empty({B, H}, acc_opts);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "tbptt_chunk_backward_cuda", [&] {
      using cuda_t = cuda_type_t<scalar_t>;
      using acc_t = acc_type_t<scalar_t>;
      BackwardParams<cuda_t, acc_t> p{};
      p.T = T;
      p.B = B;
      p.H = H;
      p.grad_output = ptr<scalar_t>(grad_output);
      p.grad_h_n = ptr<scalar_t>(g_h_n);
      p.grad_c_n = ptr<scalar_t>(g_c_n);
      p.output = ptr<scalar_t>(output);
      p.gates = ptr<scalar_t>(gates);
      p.cell = ptr<scalar_t>(cell);
      p.w_hh_t = ptr<scalar_t>(w_hh_t);
      p.h0 = ptr<scalar_t>(h0);
      p.c0 = ptr<scalar_t>(c0);
      p.grad_xproj = mut_ptr<scalar_t>(r.grad_xproj);
      p.grad_hp = mut_ptr<scalar_t>(grad_hp);
      p.grad_h0 = mut_ptr<scalar_t>(r.grad_h0);
      p.grad_c0 = mut_ptr<scalar_t>(r.grad_c0);
      p.delta = acc_ptr<scalar_t>(delta);
      p.carry_h = acc_ptr<scalar_t>(carry_h);
      p.carry_c = acc_ptr<scalar_t>(carry_c);
      check_launch(op, chunk_backward<C, cuda_t, acc_t>(p, output.get_device(), c10::cuda::getCurrentCUDAStream()));
    });
  }
  const at::Tensor& grad_pre = C == Cell::GRU ? grad_hp : r.grad_xproj;
  r.grad_w_hh = recurrent_weight_grad(grad_pre, h0, output);
  if (C == Cell::GRU) r.grad_b_hh = T > 0 ? grad_pre.sum(at::IntArrayRef{0, 1}) : at::zeros({3 * H}, opts);
  return r;
}

// ---------------------------------------------------------------- the ops
std::tuple<at::Tensor, at::Tensor> rnn_chunk_forward_cuda(const at::Tensor& xproj, const at::Tensor& w_hh,
                                                          const at::Tensor& h0, bool relu) {
  constexpr const char* op = "tbptt_ext::rnn_chunk_forward";
  auto r = relu ? forward<Cell::RNN_RELU>(op, xproj, w_hh, std::nullopt, h0, at::Tensor())
                : forward<Cell::RNN_TANH>(op, xproj, w_hh, std::nullopt, h0, at::Tensor());
  return {r.output, r.h_n};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_chunk_backward_cuda(const at::Tensor& grad_output,
                                                                       const at::Tensor& grad_h_n,
                                                                       const at::Tensor& output,
                                                                       const at::Tensor& w_hh, const at::Tensor& h0,
                                                                       bool relu) {
  constexpr const char* op = "tbptt_ext::rnn_chunk_backward";
  auto r = relu ? backward<Cell::RNN_RELU>(op, grad_output, grad_h_n, at::Tensor(), output, at::Tensor(),
                                           at::Tensor(), w_hh, h0, at::Tensor())
                : backward<Cell::RNN_TANH>(op, grad_output, grad_h_n, at::Tensor(), output, at::Tensor(),
                                           at::Tensor(), w_hh, h0, at::Tensor());
  return {r.grad_xproj, r.grad_h0, r.grad_w_hh};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_chunk_forward_cuda(
    const at::Tensor& xproj, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0) {
  auto r = forward<Cell::LSTM>("tbptt_ext::lstm_chunk_forward", xproj, w_hh, std::nullopt, h0, c0);
  return {r.output, r.h_n, r.c_n, r.gates, r.cell};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_chunk_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n, const at::Tensor& output,
    const at::Tensor& gates, const at::Tensor& cell, const at::Tensor& w_hh, const at::Tensor& h0,
    const at::Tensor& c0) {
  auto r = backward<Cell::LSTM>("tbptt_ext::lstm_chunk_backward", grad_output, grad_h_n, grad_c_n, output, gates,
                                cell, w_hh, h0, c0);
  return {r.grad_xproj, r.grad_h0, r.grad_c0, r.grad_w_hh};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_chunk_forward_cuda(const at::Tensor& xproj,
                                                                      const at::Tensor& w_hh,
                                                                      const std::optional<at::Tensor>& b_hh,
                                                                      const at::Tensor& h0) {
  auto r = forward<Cell::GRU>("tbptt_ext::gru_chunk_forward", xproj, w_hh, b_hh, h0, at::Tensor());
  return {r.output, r.h_n, r.gates};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_chunk_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& output, const at::Tensor& gates,
    const at::Tensor& w_hh, const at::Tensor& h0) {
  auto r = backward<Cell::GRU>("tbptt_ext::gru_chunk_backward", grad_output, grad_h_n, at::Tensor(), output, gates,
                               at::Tensor(), w_hh, h0, at::Tensor());
  return {r.grad_xproj, r.grad_h0, r.grad_w_hh, r.grad_b_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(tbptt_ext, CUDA, m) {
  m.impl("rnn_chunk_forward", &rnn_chunk_forward_cuda);
  m.impl("rnn_chunk_backward", &rnn_chunk_backward_cuda);
  m.impl("lstm_chunk_forward", &lstm_chunk_forward_cuda);
  m.impl("lstm_chunk_backward", &lstm_chunk_backward_cuda);
  m.impl("gru_chunk_forward", &gru_chunk_forward_cuda);
  m.impl("gru_chunk_backward", &gru_chunk_backward_cuda);
}

}  // namespace tbptt::cuda
