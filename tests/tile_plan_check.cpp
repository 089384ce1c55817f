// Host-side checks of the CUDA throughput path's planner (csrc/cuda/tile_plan.h), built
// and run by tests/test_tile_plan.py with the C++ compiler alone (no CUDA needed).
//   tile_plan_check check                       every invariant the kernels rely on,
//                                               over a grid of calls; exit 1 on a violation
//   tile_plan_check plan B H G DTYPE SMS SMEM CLUSTERS
//                                               one plan: "R U unit_tiles row_tiles cluster
//                                               forward_smem backward_smem forward_stage
//                                               backward_stage", or "none"
//   tile_plan_check path B H G ELEMENT_BYTES    the path `auto` runs (path_rule.h)
// DTYPE: bf16 (tensor cores), tf32, fp32 (exact), fp64 (exact).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cuda/path_rule.h"
#include "cuda/tile_plan.h"

using namespace tbptt::cuda;

namespace {

struct Half16 {  // a 2-byte stand-in for __half / __nv_bfloat16 (the planner reads sizeof only)
  uint16_t bits;
};

int failures = 0;

void fail(const std::string& what, int64_t B, int64_t H, int G, const char* dtype, int sms, size_t smem) {
  if (++failures <= 20) {
    std::printf("VIOLATION %s: B=%lld H=%lld G=%d %s sms=%d smem=%zu\n", what.c_str(), static_cast<long long>(B),
                static_cast<long long>(H), G, dtype, sms, smem);
  }
}

// The invariants tile_kernels.cuh relies on for one launch shape.
template <typename Scalar, typename Acc, MatMul kMath>
void check_shape(const TileShape& s, size_t bytes, int64_t K, int64_t N, int64_t B, int64_t H, int G,
                 const char* dtype, int sms, size_t smem_limit, bool clusters) {
  auto bad = [&](const char* what) { fail(what, B, H, G, dtype, sms, smem_limit); };
  if (s.rows % 16 != 0 || s.rows < 16 || s.rows > 128) bad("rows not a multiple of 16 in [16, 128]");
  if (s.row_tiles != (B + s.rows - 1) / s.rows) bad("row tiles do not cover the batch");
  if (s.units < 1 || s.unit_tiles != (H + s.units - 1) / s.units) bad("unit tiles do not cover H");
  if (static_cast<int64_t>(s.unit_tiles - 1) * s.units >= H) bad("an empty unit tile");
  if (static_cast<int64_t>(s.row_tiles) * s.unit_tiles > sms) bad("more blocks than multiprocessors");
  if (s.k_pad % 16 != 0 || s.k_pad < K || s.k_pad >= K + 16) bad("k_pad is not K rounded up to 16");
  if (s.n_pad % 16 != 0 || s.n_pad < N || s.n_pad >= N + 16) bad("n_pad is not N rounded up to 16");
  if (s.cluster && (!clusters || s.unit_tiles > 8)) bad("a cluster where none is allowed or of more than 8 blocks");
  if (s.stage % 16 != 0 || s.stage < 16 || s.stage > s.k_pad) bad("stage not a multiple of 16 in [16, k_pad]");
  const TileSmem<Scalar, Acc> layout(s);
  if (bytes != layout.bytes || bytes > smem_limit) bad("shared memory above the limit or mis-sized");
  if (kMath == MatMul::kExact) {
    if (s.rows * s.n_pad > kTileThreads * kMaxExact) bad("more outputs than the exact product's registers");
    return;
  }
  if ((s.rows / 16) * (s.n_pad / 16) > kTileWarps * kMaxFragments) bad("more 16x16 tiles than accumulators");
  // WMMA: leading dimensions multiples of 16 bytes; every fragment pointer 32-byte aligned.
  const size_t e = sizeof(Scalar), k_step = kMath == MatMul::kTf32 ? 8 : 16;
  if (layout.ldw * e % 16 || layout.lda * e % 16 || layout.ldo * sizeof(Acc) % 16) bad("ldm not a multiple of 16 B");
  for (size_t off : {layout.w_off, layout.a_off, layout.out_off, layout.first_off, layout.second_off}) {
    if (off % 128 != 0) bad("a shared-memory region not 128-byte aligned");
  }
  for (int tm = 0; tm < s.rows / 16; ++tm) {
    for (size_t kk = 0; kk < static_cast<size_t>(s.stage); kk += k_step) {
      if ((tm * 16 * layout.lda + kk) * e % 32) bad("an A fragment not 32-byte aligned");
    }
    for (int tn = 0; tn < s.n_pad / 16; ++tn) {
      if ((static_cast<size_t>(tm) * 16 * layout.ldo + tn * 16) * sizeof(Acc) % 32) bad("an accumulator store not 32-byte aligned");
    }
  }
  for (size_t k = 0; k < static_cast<size_t>(s.k_pad); k += k_step) {
    for (int tn = 0; tn < s.n_pad / 16; ++tn) {
      if ((k * layout.ldw + tn * 16) * e % 32) bad("a B fragment not 32-byte aligned");
    }
  }
}

template <typename Scalar, typename Acc, MatMul kMath>
int64_t check_all(const char* dtype) {
  int64_t plans = 0;
  for (const int sms : {16, 108, 132}) {
    for (const size_t smem : {size_t{101376}, size_t{166912}, size_t{232448}}) {
      for (const int G : {1, 3, 4}) {
        for (const int64_t B : {1, 2, 7, 16, 17, 32, 64, 100, 130, 256, 512, 1000}) {
          for (const int64_t H : {1, 5, 16, 33, 64, 100, 128, 256, 300, 512, 768, 1024, 1100, 2048}) {
            const bool clusters = sms != 16;
            const TilePlan p = plan_tiles<Scalar, Acc, kMath>(B, H, G, sms, smem, clusters);
            if (p.forward.rows == 0) continue;
            ++plans;
            check_shape<Scalar, Acc, kMath>(p.forward, p.forward_smem, H, G * p.forward.units, B, H, G, dtype, sms,
                                            smem, clusters);
            check_shape<Scalar, Acc, kMath>(p.backward, p.backward_smem, G * H, p.backward.units, B, H, G, dtype,
                                            sms, smem, clusters);
            if (p.forward.rows != p.backward.rows || p.forward.units != p.backward.units) {
              fail("forward and backward tile differently", B, H, G, dtype, sms, smem);
            }
          }
        }
      }
    }
  }
  return plans;
}

template <typename Scalar, typename Acc, MatMul kMath>
void print_plan(int64_t B, int64_t H, int G, int sms, size_t smem, bool clusters) {
  const TilePlan p = plan_tiles<Scalar, Acc, kMath>(B, H, G, sms, smem, clusters);
  if (p.forward.rows == 0) {
    std::printf("none\n");
    return;
  }
  std::printf("%d %d %d %d %d %zu %zu %d %d\n", p.forward.rows, p.forward.units, p.forward.unit_tiles,
              p.forward.row_tiles, p.forward.cluster ? 1 : 0, p.forward_smem, p.backward_smem, p.forward.stage,
              p.backward.stage);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "check") == 0) {
    const int64_t plans = check_all<Half16, float, MatMul::kHalf16>("bf16") +
                          check_all<float, float, MatMul::kTf32>("tf32") +
                          check_all<float, float, MatMul::kExact>("fp32") +
                          check_all<double, double, MatMul::kExact>("fp64");
    std::printf("%lld plans checked, %d violations\n", static_cast<long long>(plans), failures);
    return failures == 0 && plans > 0 ? 0 : 1;
  }
  if (argc == 9 && std::strcmp(argv[1], "plan") == 0) {
    const int64_t B = std::atoll(argv[2]), H = std::atoll(argv[3]);
    const int G = std::atoi(argv[4]), sms = std::atoi(argv[6]);
    const size_t smem = static_cast<size_t>(std::atoll(argv[7]));
    const bool clusters = std::atoi(argv[8]) != 0;
    const std::string dtype = argv[5];
    if (dtype == "bf16") print_plan<Half16, float, MatMul::kHalf16>(B, H, G, sms, smem, clusters);
    else if (dtype == "tf32") print_plan<float, float, MatMul::kTf32>(B, H, G, sms, smem, clusters);
    else if (dtype == "fp32") print_plan<float, float, MatMul::kExact>(B, H, G, sms, smem, clusters);
    else if (dtype == "fp64") print_plan<double, double, MatMul::kExact>(B, H, G, sms, smem, clusters);
    else return 2;
    return 0;
  }
  if (argc == 6 && std::strcmp(argv[1], "path") == 0) {
    std::printf("%s\n", path_name(auto_path(std::atoi(argv[4]), std::atoll(argv[2]), std::atoll(argv[3]),
                                            std::atoi(argv[5]))));
    return 0;
  }
  std::fprintf(stderr, "usage: tile_plan_check check | plan B H G bf16|tf32|fp32|fp64 SMS SMEM CLUSTERS | "
               "path B H G ELEMENT_BYTES\n");
  return 2;
}
