// CUDA backend of the chunk ops (checks, GEMMs and allocation: csrc/chunk_ops.h): the
// device guard and current stream, the Acc-typed scratch, and the recurrence: one
// kernel launch per direction on the persistent (chunk_kernels.cuh), latency
// (block_kernels.cuh) and throughput (tile_kernels.cuh) paths, or a GEMM and a pointwise
// kernel per step on the stepwise path (step_kernels.cuh); kernels instantiated per
// cell in *_kernels.cu.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/version.h>
#if !defined(TORCH_VERSION_MAJOR) || !defined(TORCH_VERSION_MINOR)
#error "torch/version.h did not define TORCH_VERSION_MAJOR/MINOR"
#endif
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <array>
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

// Which recurrence kernels run, from TBPTT_EXT_CUDA_PATH (read at every call):
//   auto (default)    chosen per call from the cell, B, H and dtype (resolve_path below).
//   persistent        the v1 persistent kernels (chunk_kernels.cuh): one cooperative
//                     launch each way, a grid barrier per step.
//   latency           one block per batch row (block_kernels.cuh); persistent where its
//                     vectors do not fit.
//   throughput        row tiles x unit tiles on tensor cores (tile_kernels.cuh); stepwise
//                     where no tiling fits on chip.
//   stepwise          one GEMM and one pointwise kernel per step (step_kernels.cuh).
// All five ran on an H200 (tests/test_cuda.py, compute-sanitizer memcheck; 2026-11-27).
enum class Path { kAuto, kPersistent, kLatency, kThroughput, kStepwise };

Path requested_path() {
  const char* path = std::getenv("TBPTT_EXT_CUDA_PATH");
  if (path == nullptr || std::strcmp(path, "auto") == 0) return Path::kAuto;
  if (std::strcmp(path, "persistent") == 0) return Path::kPersistent;
  if (std::strcmp(path, "latency") == 0) return Path::kLatency;
  if (std::strcmp(path, "throughput") == 0) return Path::kThroughput;
  if (std::strcmp(path, "stepwise") == 0) return Path::kStepwise;
  TORCH_CHECK(false, "TBPTT_EXT_CUDA_PATH must be one of auto, persistent, latency, throughput, stepwise; got '",
              path, "'");
}

// What `auto` runs, measured with benchmarks/bench_cuda.py on an H200 (every path against
// cuDNN, k = 50, I = H, fp32 and bf16; issue 10's grid and issue 9's B in {1, 4, 16} x
// H in {64..512}; benchmarks/RESULTS.md, 2026-11-27). W = W_hh's bytes (G*H*H elements).
//   small batch: B <= 8, or B <= 16 where H <= 256 or W > 2 MiB, with W <= 4 MiB
//       -> persistent (LSTM fp32 B=16 H=256: 1.94x cuDNN against throughput's 1.22x;
//          B=4 H=512: 2.10x against stepwise's 0.85x)
//   W > 2 MiB -> stepwise (fp32 LSTM B=64 H=512: 0.90x against throughput's 0.71x;
//          bf16 LSTM B=128 H=1024: 0.92x against 0.47x)
//   otherwise -> throughput (bf16 LSTM B=32 H=256: 1.87x against persistent's 1.59x;
//          B=512 H=256: 1.15x against 0.11x; bf16 LSTM B=16 H=512: 0.97x against 0.84x)
// Forward and backward of a chunk resolve to the same path (same cell, B, H, dtype).
template <class Cell>
Path resolve_path(int64_t B, int64_t H, const at::Tensor& w_hh) {
  const Path path = requested_path();
  if (path != Path::kAuto) return path;
  constexpr double kMiB = 1024.0 * 1024.0;
  const double w_bytes = double(Cell::kGates) * double(H) * double(H) * double(w_hh.element_size());
  const bool small_batch = B <= 8 || (B <= 16 && (H <= 256 || w_bytes > 2 * kMiB));
  if (small_batch && w_bytes <= 4 * kMiB) return Path::kPersistent;
  if (w_bytes > 2 * kMiB) return Path::kStepwise;
  return Path::kThroughput;
}

// Precision policy of the fp32 recurrent products on the throughput path: TF32 on tensor
// cores when torch.backends.cudnn.allow_tf32 (its RNN setting: the flag torch.nn's cuDNN
// RNNs obey; True by default), exact fp32 otherwise. (The stepwise path's GEMMs are
// cuBLAS calls through ATen, which follow torch.backends.cuda.matmul.allow_tf32.)
bool tf32_allowed(const at::Tensor& t, Path path) {
  if (t.scalar_type() != at::kFloat || path != Path::kThroughput) return false;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 11)
  return at::globalContext().allowTF32CuDNN(at::Float32Op::RNN);  // (no argument: throws if conv and rnn differ)
#else
  return at::globalContext().allowTF32CuDNN();
#endif
}

// out = a b in Acc precision: fp32 output from half-type operands (accumulated in fp32).
void mm_acc(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == out.scalar_type()) {
    at::mm_out(out, a, b);
  } else {
    at::mm_out(out, a, b, out.scalar_type());
  }
}

// The forward's Acc scratch of the persistent and stepwise paths, pointed to by p:
// pre [B, G*H], h_state and c_state (cells with a cell state) [B, H].
template <class Cell, typename Params>
std::array<at::Tensor, 3> forward_scratch(Params& p, const ForwardTensors& t, const at::TensorOptions& acc) {
  std::array<at::Tensor, 3> scratch{at::empty({t.B, Cell::kGates * t.H}, acc), at::empty({t.B, t.H}, acc),
                                    Cell::kCellIndex >= 0 ? at::empty({t.B, t.H}, acc) : at::Tensor()};
  set(p.pre, scratch[0]), set(p.h_state, scratch[1]), set(p.c_state, scratch[2]);
  return scratch;
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

  // Each path's launcher returns cudaErrorNotSupported, before any CUDA call that could
  // fail (nothing to clear), where its data do not fit; the next path in line runs.
  template <class Cell>
  static void forward(ForwardTensors& t) {
    check_no_projection(t);
    t.xproj = input_projection(t);
    const auto acc = acc_options(t.xproj);
    const Path path = resolve_path<Cell>(t.B, t.H, t.w_hh);
    const at::Tensor w_hh_t = path == Path::kLatency ? t.w_hh.t().contiguous() : at::Tensor();  // coalesced reads
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.xproj.scalar_type(), "tbptt_chunk_forward_cuda", [&] {
      using scalar = cuda_type_t<scalar_t>;
      using acc_t = acc_type_t<scalar_t>;
      CudaForwardParams<scalar, acc_t> p;
      static_cast<ForwardParams<scalar>&>(p) = forward_params<scalar>(t);
      set(p.w_hh, t.w_hh), set(p.w_hh_t, w_hh_t);
      p.tf32 = tf32_allowed(t.xproj, path);
      const auto stream = c10::cuda::getCurrentCUDAStream();
      const int device = t.xproj.get_device();
      cudaError_t err = cudaErrorNotSupported;
      if (path == Path::kLatency) err = launch_block_forward<Cell, scalar, acc_t>(p, device, stream);
      if (path == Path::kThroughput) {
        const at::Tensor barrier = at::empty({t.B}, t.xproj.options().dtype(at::kInt));
        set(p.barrier, barrier);
        err = launch_tile_forward<Cell, scalar, acc_t>(p, device, stream);
      }
      if (err == cudaErrorNotSupported && (path == Path::kThroughput || path == Path::kStepwise)) {
        stepwise_forward<Cell>(t, p, acc, stream);
        return;
      }
      if (err == cudaErrorNotSupported) {
        const auto scratch = forward_scratch<Cell>(p, t, acc);
        err = launch_chunk_forward<Cell, scalar, acc_t>(p, device, stream);
      }
      check_launch("chunk forward", err);
    });
  }

  template <class Cell>
  static void backward(BackwardTensors& t) {
    check_no_projection(t);
    const auto acc = acc_options(t.output);
    const Path path = resolve_path<Cell>(t.B, t.H, t.w_hh);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.output.scalar_type(), "tbptt_chunk_backward_cuda", [&] {
      using scalar = cuda_type_t<scalar_t>;
      using acc_t = acc_type_t<scalar_t>;
      CudaBackwardParams<scalar, acc_t> p;
      static_cast<BackwardParams<scalar, acc_t>&>(p) = backward_params<scalar, acc_t>(t);
      set(p.w_hh, t.w_hh);
      p.tf32 = tf32_allowed(t.output, path);
      const auto stream = c10::cuda::getCurrentCUDAStream();
      const int device = t.output.get_device();
      cudaError_t err = cudaErrorNotSupported;
      if (path == Path::kLatency) err = launch_block_backward<Cell, scalar, acc_t>(p, device, stream);
      if (path == Path::kThroughput) {
        const at::Tensor barrier = at::empty({t.B}, t.output.options().dtype(at::kInt));
        const at::Tensor delta = at::empty({2, t.B, Cell::kGates * t.H}, t.output.options());
        set(p.barrier, barrier), set(p.delta_op, delta);
        err = launch_tile_backward<Cell, scalar, acc_t>(p, device, stream);
      }
      if (err == cudaErrorNotSupported && (path == Path::kThroughput || path == Path::kStepwise)) {
        stepwise_backward<Cell>(t, p, acc, stream);
        return;
      }
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

  // The stepwise path: per step, pre = h_{t-1} W_hh^T (cuBLAS, Acc output) and one
  // pointwise kernel.
  template <class Cell, typename Params>
  static void stepwise_forward(ForwardTensors& t, Params& p, const at::TensorOptions& acc, cudaStream_t stream) {
    auto scratch = forward_scratch<Cell>(p, t, acc);
    at::Tensor& pre = scratch[0];
    const at::Tensor w_hh_t = t.w_hh.t();
    for (int64_t s = 0; s < t.T; ++s) {
      mm_acc(pre, s == 0 ? t.h0 : t.output.select(0, p.time_of(s - 1)), w_hh_t);
      check_launch("stepwise forward", launch_step_forward<Cell>(p, s, p.pre, stream));
    }
  }

  // Per step from the last: one pointwise kernel, then carry_prod = grad_hp_t W_hh
  // (cuBLAS, Acc output) for the step before; grad_h0 = the last carry.
  template <class Cell, typename Params>
  static void stepwise_backward(BackwardTensors& t, Params& p, const at::TensorOptions& acc, cudaStream_t stream) {
    using acc_t = std::remove_pointer_t<decltype(p.carry_h)>;
    at::Tensor carry_prod = at::empty({t.B, t.H}, acc);
    const at::Tensor carry_h = at::empty({t.B, t.H}, acc), carry_c = at::empty({t.B, t.H}, acc);
    set(p.carry_h, carry_h), set(p.carry_c, carry_c);
    const at::Tensor& grad_hp = Cell::kRecurrentBiasInside ? t.grad_hp : t.grad_xproj;
    for (int64_t s = t.T - 1; s >= 0; --s) {
      check_launch("stepwise backward", launch_step_backward<Cell>(p, s, carry_prod.data_ptr<acc_t>(), stream));
      mm_acc(carry_prod, grad_hp.select(0, p.time_of(s)), t.w_hh);
    }
    at::Tensor grad_h0 = carry_prod;
    if constexpr (Cell::kDirectHiddenGrad) grad_h0 = carry_prod + carry_h;
    t.grad_h0.copy_(grad_h0);
    if constexpr (Cell::kCellIndex >= 0) t.grad_c0.copy_(carry_c);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(tbptt_ext, CUDA, m) { ChunkOps<CudaBackend>::register_all(m); }

}  // namespace tbptt::cuda
