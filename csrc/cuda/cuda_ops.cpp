// CUDA backend of the chunk ops (checks, GEMMs and allocation: csrc/chunk_ops.h): the
// device guard and current stream, the Acc-typed scratch, and one kernel launch per
// direction: the persistent kernels (chunk_kernels.cuh) or, opted in, the latency path
// (block_kernels.cuh); both instantiated per cell in *_kernels.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "../chunk_ops.h"
#include "chunk_launch.h"

namespace tbptt::cuda {
namespace {

// at::Half / at::BFloat16 as the kernels spell them (same layout).
template <typename scalar_t>
using cuda_type_t =
    std::conditional_t<std::is_same_v<scalar_t, at::Half>, __half,
                       std::conditional_t<std::is_same_v<scalar_t, at::BFloat16>, __nv_bfloat16, scalar_t>>;
template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

void check_launch(const char* what, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "tbptt_ext: the CUDA ", what, " kernel launch failed: ", cudaGetErrorString(err));
}

at::TensorOptions acc_options(const at::Tensor& t) {
  return t.options().dtype(t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
}

// Which recurrence kernels run: "persistent" (default: one cooperative launch, a grid
// barrier per step, verified on an H100) or "latency" (one block per batch row, no grid
// barrier; not yet run on a GPU), from TBPTT_EXT_CUDA_PATH.
bool latency_path() {
  const char* path = std::getenv("TBPTT_EXT_CUDA_PATH");
  if (path == nullptr || std::strcmp(path, "persistent") == 0) return false;
  TORCH_CHECK(std::strcmp(path, "latency") == 0, "TBPTT_EXT_CUDA_PATH must be 'persistent' or 'latency', got '",
              path, "'");
  return true;
}

// LSTM projections (proj_size > 0) have no CUDA kernel: the modules run them on the
// reference there (README, backend table).
void check_no_projection(const ChunkTensors& t) {
  TORCH_CHECK(!t.w_hr.defined(), "tbptt_ext: the CUDA kernels do not implement LSTM projections (w_hr); "
              "tbptt_ext.LSTM(proj_size > 0) runs the reference on CUDA");
}

struct CudaBackend {
  static void check_supported(const char* op, const at::Tensor& input) {
    TORCH_CHECK(input.is_cuda(), op, ": the CUDA kernels need CUDA tensors, got ", input.device());
  }
  static c10::cuda::CUDAGuard device_guard(const at::Tensor& input) { return c10::cuda::CUDAGuard(input.device()); }
  // (the CUDA caching allocator already reuses memory)
  static at::Tensor scratch(int, at::IntArrayRef sizes, const at::TensorOptions& options) {
    return at::empty(sizes, options);
  }

  // The latency path runs where its per-row vectors fit in shared memory; elsewhere its
  // launcher returns cudaErrorNotSupported before any CUDA call (nothing to clear) and the
  // persistent path runs.
  template <class Cell>
  static void forward(ForwardTensors& t) {
    check_no_projection(t);
    t.xproj = input_projection(t);
    const auto acc = acc_options(t.xproj);
    const bool latency = latency_path();
    const at::Tensor w_hh_t = latency ? t.w_hh.t().contiguous() : at::Tensor();  // W_hh^T, coalesced reads
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.xproj.scalar_type(), "tbptt_chunk_forward_cuda", [&] {
      using scalar = cuda_type_t<scalar_t>;
      using acc_t = acc_type_t<scalar_t>;
      CudaForwardParams<scalar, acc_t> p;
      static_cast<ForwardParams<scalar>&>(p) = forward_params<scalar>(t);
      set(p.w_hh, t.w_hh), set(p.w_hh_t, w_hh_t);
      const auto stream = c10::cuda::getCurrentCUDAStream();
      const int device = t.xproj.get_device();
      cudaError_t err = latency ? launch_block_forward<Cell, scalar, acc_t>(p, device, stream) : cudaErrorNotSupported;
      if (err == cudaErrorNotSupported) {
        const at::Tensor pre = at::empty({t.B, Cell::kGates * t.H}, acc), h_state = at::empty({t.B, t.H}, acc);
        const at::Tensor c_state = Cell::kCellIndex >= 0 ? at::empty({t.B, t.H}, acc) : at::Tensor();
        set(p.pre, pre), set(p.h_state, h_state), set(p.c_state, c_state);
        err = launch_chunk_forward<Cell, scalar, acc_t>(p, device, stream);
      }
      check_launch("chunk forward", err);
    });
  }

  template <class Cell>
  static void backward(BackwardTensors& t) {
    check_no_projection(t);
    const auto acc = acc_options(t.output);
    const bool latency = latency_path();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.output.scalar_type(), "tbptt_chunk_backward_cuda", [&] {
      using scalar = cuda_type_t<scalar_t>;
      using acc_t = acc_type_t<scalar_t>;
      CudaBackwardParams<scalar, acc_t> p;
      static_cast<BackwardParams<scalar, acc_t>&>(p) = backward_params<scalar, acc_t>(t);
      set(p.w_hh, t.w_hh);
      const auto stream = c10::cuda::getCurrentCUDAStream();
      const int device = t.output.get_device();
      cudaError_t err = latency ? launch_block_backward<Cell, scalar, acc_t>(p, device, stream) : cudaErrorNotSupported;
      if (err == cudaErrorNotSupported) {
        const at::Tensor w_hh_t = t.w_hh.t().contiguous();
        const at::Tensor delta = at::empty({2, t.B, Cell::kGates * t.H}, acc);
        const at::Tensor carry_h = at::empty({t.B, t.H}, acc), carry_c = at::empty({t.B, t.H}, acc);
        set(p.w_hh_t, w_hh_t), set(p.delta, delta), set(p.carry_h, carry_h), set(p.carry_c, carry_c);
        err = launch_chunk_backward<Cell, scalar, acc_t>(p, device, stream);
      }
      check_launch("chunk backward", err);
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(tbptt_ext, CUDA, m) { ChunkOps<CudaBackend>::register_all(m); }

}  // namespace tbptt::cuda
