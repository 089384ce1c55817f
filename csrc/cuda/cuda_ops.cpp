// CUDA backend of the chunk ops (checks, GEMMs and allocation: csrc/chunk_ops.h): the
// device guard and current stream, the Acc-typed scratch, and the recurrence: one
// kernel launch per direction on the persistent (chunk_kernels.cuh), latency
// (block_kernels.cuh) and throughput (tile_kernels.cuh) paths, or a GEMM and a pointwise
// kernel per step on the stepwise path (step_kernels.cuh); kernels instantiated per
// cell in *_kernels.cu.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>  // at::cuda::getCurrentCUDABlasHandle; cublas_v2.h
#include <torch/version.h>
#if !defined(TORCH_VERSION_MAJOR) || !defined(TORCH_VERSION_MINOR)
#error "torch/version.h did not define TORCH_VERSION_MAJOR/MINOR"
#endif
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../chunk_ops.h"
#include "chunk_launch.h"
#include "path_rule.h"

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

// Which recurrence kernels run: TBPTT_EXT_CUDA_PATH (read at every call), the paths and
// the rule of `auto` in path_rule.h. All five paths ran on an H200 and an H100
// (tests/test_cuda.py, compute-sanitizer; 2026-11-27); the current `auto` rule was drawn
// from the H100's runs afterwards and has not run on a GPU as a whole.
Path requested_path() {
  const char* path = std::getenv("TBPTT_EXT_CUDA_PATH");
  if (path == nullptr) return Path::kAuto;
  for (const Path p : {Path::kAuto, Path::kPersistent, Path::kLatency, Path::kThroughput, Path::kStepwise}) {
    if (std::strcmp(path, path_name(p)) == 0) return p;
  }
  TORCH_CHECK(false, "TBPTT_EXT_CUDA_PATH must be one of auto, persistent, latency, throughput, stepwise; got '",
              path, "'");
}

// Forward and backward of a chunk resolve to the same path (same cell, B, H, dtype).
template <class Cell>
Path resolve_path(int64_t B, int64_t H, const at::Tensor& w_hh) {
  const Path path = requested_path();
  return path != Path::kAuto ? path : auto_path(Cell::kGates, B, H, static_cast<int>(w_hh.element_size()));
}

// Precision policy, that of torch.nn's cuDNN RNNs: fp32 products may run as TF32 on
// tensor cores when torch.backends.cudnn.allow_tf32 (its RNN setting; True by default),
// and are exact fp32 otherwise, whatever torch's matmul setting. That covers the
// products around the recurrence (input projection, weight and input gradients: the
// Gemms below) and the recurrent products of the throughput and stepwise paths; the
// persistent and latency kernels are exact fp32 always.
bool cudnn_tf32(const at::Tensor& t) {
  if (t.scalar_type() != at::kFloat) return false;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 11)
  return at::globalContext().allowTF32CuDNN(at::Float32Op::RNN);  // (no argument: throws if conv and rnn differ)
#else
  return at::globalContext().allowTF32CuDNN();
#endif
}

bool tf32_allowed(const at::Tensor& t, Path path) {
  return (path == Path::kThroughput || path == Path::kStepwise) && cudnn_tf32(t);
}

cudaDataType_t cuda_data_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return CUDA_R_32F;
    case at::kDouble: return CUDA_R_64F;
    case at::kHalf: return CUDA_R_16F;
    case at::kBFloat16: return CUDA_R_16BF;
    default: TORCH_CHECK(false, "tbptt_ext: no cuBLAS type for ", t);
  }
}

int cublas_int(int64_t v) {
  TORCH_CHECK(v <= std::numeric_limits<int>::max(), "tbptt_ext: a product too large for cuBLAS (", v,
              " in one dimension)");
  return static_cast<int>(v);
}

// ATen's cuBLAS handle for the current stream (its workspace set), for products of one
// operand dtype with outputs in Acc (fp32; fp64 for fp64): fp32 accumulation for the
// half types, TF32 for fp32 only where `tf32`. ATen sets the handle's math mode from
// torch's matmul flag each time it hands the handle out; exact fp32 here clears TF32
// from it, and the destructor puts it back.
class Cublas {
 public:
  Cublas(at::ScalarType operand, bool tf32) : handle_(at::cuda::getCurrentCUDABlasHandle()) {
    if (operand == at::kDouble) {
      compute_ = CUBLAS_COMPUTE_64F;
    } else if (operand == at::kFloat && tf32) {
      compute_ = CUBLAS_COMPUTE_32F_FAST_TF32;
    } else {
      compute_ = CUBLAS_COMPUTE_32F;
      check("math mode", cublasGetMathMode(handle_, &saved_mode_));
      restore_mode_ = true;
      // (the mode is the low four bits, flags such as DISALLOW_REDUCED_PRECISION_REDUCTION above)
      const unsigned mode = saved_mode_ & 0xfu, flags = saved_mode_ & ~0xfu;
      const unsigned exact = mode == unsigned(CUBLAS_TF32_TENSOR_OP_MATH) ? unsigned(CUBLAS_DEFAULT_MATH) : mode;
      check("math mode", cublasSetMathMode(handle_, cublasMath_t(flags | exact)));
    }
  }
  ~Cublas() {
    if (restore_mode_) cublasSetMathMode(handle_, saved_mode_);
  }
  Cublas(const Cublas&) = delete;
  Cublas& operator=(const Cublas&) = delete;

  // Column-major C[m, n] = op_a(A) op_b(B) + beta C (cublasGemmEx); m, n > 0, k >= 0.
  void gemm(const char* what, cublasOperation_t op_a, cublasOperation_t op_b, int64_t m, int64_t n, int64_t k,
            const void* a, cudaDataType_t a_type, int64_t lda, const void* b, cudaDataType_t b_type, int64_t ldb,
            double beta, void* c, cudaDataType_t c_type, int64_t ldc) const {
    const double one64 = 1, beta64 = beta;
    const float one32 = 1, beta32 = static_cast<float>(beta);
    const bool f64 = compute_ == CUBLAS_COMPUTE_64F;
    check(what, cublasGemmEx(handle_, op_a, op_b, cublas_int(m), cublas_int(n), cublas_int(k),
                             f64 ? static_cast<const void*>(&one64) : &one32, a, a_type, cublas_int(lda), b, b_type,
                             cublas_int(ldb), f64 ? static_cast<const void*>(&beta64) : &beta32, c, c_type,
                             cublas_int(ldc), compute_, CUBLAS_GEMM_DEFAULT));
  }

  static void check(const char* what, cublasStatus_t status) {
    TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "tbptt_ext: cuBLAS failed (", what, "): ", cublasGetStatusString(status));
  }

 private:
  cublasHandle_t handle_;
  cublasComputeType_t compute_ = CUBLAS_COMPUTE_32F;
  cublasMath_t saved_mode_ = CUBLAS_DEFAULT_MATH;
  bool restore_mode_ = false;
};

// A 2-D view x [r, c] as cuBLAS's column-major operand x^T: its data, the op that turns
// the stored column-major matrix into x^T, and the leading dimension; null where neither
// dimension has unit stride (the caller copies).
struct TransposedOperand {
  const void* data = nullptr;
  cublasOperation_t op = CUBLAS_OP_N;
  int64_t ld = 1;
};
TransposedOperand transposed_operand(const at::Tensor& x) {
  const int64_t r = x.size(0), c = x.size(1);
  if ((x.stride(1) == 1 || c == 1) && (r == 1 || x.stride(0) >= std::max<int64_t>(c, 1)))
    return {x.data_ptr(), CUBLAS_OP_N, r == 1 ? std::max<int64_t>(c, 1) : x.stride(0)};  // rows contiguous
  if ((x.stride(0) == 1 || r == 1) && (c == 1 || x.stride(1) >= std::max<int64_t>(r, 1)))
    return {x.data_ptr(), CUBLAS_OP_T, c == 1 ? std::max<int64_t>(r, 1) : x.stride(1)};  // columns contiguous
  return {};
}

// The CUDA backend's products around the recurrence and the bias column sums, on cuBLAS
// under the policy above (AtenGemms in csrc/chunk_ops.h is the interface). Half types
// accumulate in fp32 and round once, as ATen's do.
struct CudaGemms {
  // c [M, N] contiguous = a [M, K] b [K, N] + beta c: a and b of one dtype, c in it or in
  // Acc; TF32 for fp32 operands only where `tf32`.
  static void gemm(at::Tensor& c, const at::Tensor& a, const at::Tensor& b, double beta, bool tf32) {
    const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
    if (M == 0 || N == 0) return;
    if (K == 0) {  // the empty sum
      if (beta == 0) c.zero_(); else c.mul_(beta);
      return;
    }
    TransposedOperand at_ = transposed_operand(a), bt = transposed_operand(b);
    const at::Tensor a_copy = at_.data ? at::Tensor() : a.contiguous(), b_copy = bt.data ? at::Tensor() : b.contiguous();
    if (!at_.data) at_ = transposed_operand(a_copy);
    if (!bt.data) bt = transposed_operand(b_copy);
    const cudaDataType_t type = cuda_data_type(a.scalar_type());
    // row-major c = a b  <=>  column-major c^T = b^T a^T
    Cublas(a.scalar_type(), tf32)
        .gemm("a product around the recurrence", bt.op, at_.op, N, M, K, bt.data, type, bt.ld, at_.data, type, at_.ld,
              beta, c.data_ptr(), cuda_data_type(c.scalar_type()), N);
  }
  static at::Tensor mm(const at::Tensor& a, const at::Tensor& b) {
    at::Tensor c = at::empty({a.size(0), b.size(1)}, a.options());
    gemm(c, a, b, 0, cudnn_tf32(a));
    return c;
  }
  static void addmm_(at::Tensor& c, const at::Tensor& a, const at::Tensor& b) {
    TORCH_CHECK(c.is_contiguous(), "tbptt_ext: addmm_ into a non-contiguous tensor");
    gemm(c, a, b, 1, cudnn_tf32(a));
  }
  // [R, N] -> [N]: ones[R] x as a product with an Acc output (fp32
  // accumulation, fp64 for fp64; no TF32: a sum), rounded once to x's dtype, as ATen's
  // sum(0) does (an Acc output also keeps cuBLAS from reducing split-K partial sums in
  // the half type). ATen's column sum kept a block of 132 MiB alive at the backward's
  // peak for bf16 [25600, 1024] on an H200 (benchmarks/cuda_memory_probe.py), more than
  // the chunk's activations; this needs the ones vector and the [N] output. (The same
  // cublasGemmEx call as before: m = N, n = 1, k = R, x's rows as the first operand.)
  static at::Tensor column_sum(const at::Tensor& x) {
    const int64_t R = x.size(0), N = x.size(1);
    if (R == 0 || N == 0) return at::zeros({N}, x.options());
    at::Tensor out = at::empty({1, N}, acc_options(x));
    gemm(out, at::ones({1, R}, x.options()), x, 0, /*tf32=*/false);  // [1, R] x [R, N]
    return out.view({N}).to(x.scalar_type());
  }
};

// The stepwise path's per-step products, issued straight to cuBLAS: no ATen dispatch,
// tensor views or output checks per step (the host loop issues two calls per step, and
// at large B*H it is what limits the path). Row-major, W_hh [G*H, H] contiguous, the
// left operand's rows contiguous (row stride given), Acc-typed [B, N] outputs:
//   forward   pre[B, G*H] = h[B, H] W_hh^T
//   backward  carry[B, H] = grad_hp[B, G*H] W_hh
// each computed transposed (column-major C^T = op(W) A^T).
// The Cublas member holds the handle's math mode for the whole step loop: an ATen cuBLAS
// call inside the loop would set it back from torch's matmul flag.
class StepGemm {
 public:
  StepGemm(const at::Tensor& w_hh, at::ScalarType acc, bool tf32)
      : cublas_(w_hh.scalar_type(), tf32), w_(w_hh.data_ptr()), operand_(cuda_data_type(w_hh.scalar_type())),
        out_(cuda_data_type(acc)), GH_(w_hh.size(0)), H_(w_hh.size(1)) {
    TORCH_CHECK(w_hh.is_contiguous(), "tbptt_ext: the stepwise path needs a contiguous W_hh");
  }
  // pre[B, G*H] = h W_hh^T, h: B rows of H, `ld` elements apart.
  void forward(const void* h, int64_t ld, void* pre, int64_t B) const {
    if (B > 0 && GH_ > 0) run("stepwise forward product", CUBLAS_OP_T, GH_, B, H_, h, ld, pre, GH_);
  }
  // carry[B, H] = grad_hp W_hh, grad_hp: B rows of G*H, `ld` elements apart.
  void backward(const void* grad_hp, int64_t ld, void* carry, int64_t B) const {
    if (B > 0 && H_ > 0) run("stepwise backward product", CUBLAS_OP_N, H_, B, GH_, grad_hp, ld, carry, H_);
  }

 private:
  void run(const char* what, cublasOperation_t op_w, int64_t m, int64_t n, int64_t k, const void* a, int64_t lda,
           void* c, int64_t ldc) const {
    cublas_.gemm(what, op_w, CUBLAS_OP_N, m, n, k, w_, operand_, H_, a, operand_, lda, 0, c, out_, ldc);
  }

  Cublas cublas_;
  const void* w_;
  cudaDataType_t operand_, out_;
  int64_t GH_, H_;
};

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

struct CudaBackend : CudaGemms {
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
    t.xproj = input_projection<CudaGemms>(t);
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
    const StepGemm gemm(t.w_hh, acc.dtype().toScalarType(), p.tf32);
    const auto* h0 = static_cast<const char*>(t.h0.data_ptr());
    const auto* output = static_cast<const char*>(t.output.data_ptr());
    const int64_t row_bytes = t.B * t.H * t.output.element_size();  // output [T, B, H], h0 [B, H]
    for (int64_t s = 0; s < t.T; ++s) {
      gemm.forward(s == 0 ? h0 : output + p.time_of(s - 1) * row_bytes, t.H, p.pre, t.B);
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
    const at::Tensor& grad_hp = Cell::kRecurrentBiasInside ? t.grad_hp : t.grad_xproj;  // [T, B, G*H]
    const StepGemm gemm(t.w_hh, acc.dtype().toScalarType(), p.tf32);
    const int64_t GH = Cell::kGates * t.H;
    const auto* rows = static_cast<const char*>(grad_hp.data_ptr());
    const int64_t row_bytes = t.B * GH * grad_hp.element_size();
    for (int64_t s = t.T - 1; s >= 0; --s) {
      check_launch("stepwise backward", launch_step_backward<Cell>(p, s, carry_prod.data_ptr<acc_t>(), stream));
      gemm.backward(rows + p.time_of(s) * row_bytes, GH, carry_prod.data_ptr<acc_t>(), t.B);
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
