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
  kCount
};

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
