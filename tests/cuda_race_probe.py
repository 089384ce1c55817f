"""One chunk (forward + backward) of one configuration, for a compute-sanitizer probe
(not a pytest module). benchmarks/gpu_session.sh's race_probe stage runs it under
racecheck with each kernel filter, CUDA_LAUNCH_BLOCKING=1 and nothing else on the GPU:
on an H200 (2026-11-27) racecheck stopped with "Internal Sanitizer Error: The Sanitizer
failed to handle a hardware exception" at these shapes (T=3, B=18, I=8, H=300) in
bfloat16 and float32 even with no kernel instrumented (filter no_such_kernel), at the
chunk's first cuBLAS product, before any of our kernels ran: the tool around cuBLAS's
Hopper GEMM kernels. In float64 (no such GEMM kernels) racecheck on our kernels (filter
tbptt) completed on every path with 0 hazards.

    python tests/cuda_race_probe.py lstm tanh bfloat16     (TBPTT_EXT_CUDA_PATH picks the path)
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_cuda import fwd_bwd, to_device  # noqa: E402
from test_ops import forward_args  # noqa: E402
from tbptt_ext import ops  # noqa: E402

if __name__ == "__main__":
    cell, activation, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
    args = to_device(forward_args(cell, 3, 18, 8, 300, torch.float64, 0, reset_kind="random"), dtype)
    torch.cuda.synchronize()
    fwd_bwd(ops, cell, activation == "relu", args, True)
    torch.cuda.synchronize()
    print("OK", flush=True)
