// Scratch buffers that live across op calls, one set per thread.
//
// The backward's grad_xproj [T, B, G*H] (8 MB for the main job) and the per-chunk
// packed weights are used only inside one op call. Fresh from the allocator each call,
// a buffer this large comes back as new pages from the kernel (glibc returns large
// blocks), and touching them cost ~1,000 page faults per update of the main job. Reused,
// the pages stay mapped. A buffer only grows; it is freed when its thread exits.
#pragma once

#include <ATen/ATen.h>

#include <array>

namespace tbptt::cpu {

enum class Scratch {
  kGradXproj,
  kGradHp,
  kPackedHH,
  kPackedIH,
  kPackedHR,
  kStep0,
  kStep1,
  kPackedA,  // weight_grad.h
  kPackedB,
  kCount
};

// The row stride (elements) for rows of n elements of elem_size bytes that are used as
// matrix rows (grad_xproj: the step loop's product reads 6 rows at a time; MKL's weight
// gradient GEMMs read its columns): whole 64-byte lines, and an odd number of them, so
// that consecutive rows fall in different L1 sets. A stride of a power of two (4 KB for
// the main job's LSTM) maps every row to the same set: the dW_ih GEMM ran 25 % slower.
inline int64_t padded_row_length(int64_t n, size_t elem_size) {
  const int64_t line = 64 / static_cast<int64_t>(elem_size);
  if (n < 4 * line) return n;  // short rows: padding would only cost memory
  const int64_t ld = (n + line - 1) / line * line;
  return (ld / line) % 2 == 0 ? ld + line : ld;
}

// A tensor of `sizes` backed by this thread's buffer for `slot` (contents undefined).
inline at::Tensor workspace(Scratch slot, at::IntArrayRef sizes, const at::TensorOptions& options) {
  thread_local std::array<at::Tensor, static_cast<size_t>(Scratch::kCount)> buffers;
  at::Tensor& buffer = buffers[static_cast<size_t>(slot)];
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  if (!buffer.defined() || buffer.scalar_type() != options.dtype().toScalarType() || buffer.numel() < numel) {
    buffer = at::empty({numel}, options);
  }
  return buffer.narrow(0, 0, numel).view(sizes);
}

}  // namespace tbptt::cpu
