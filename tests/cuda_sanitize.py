"""Runs every CUDA chunk kernel once on small configurations, for compute-sanitizer
(not a pytest module); benchmarks/gpu_session.sh runs it under each tool:

    compute-sanitizer --tool memcheck  python tests/cuda_sanitize.py
    compute-sanitizer --tool racecheck --kernel-name kns=_forward_kernel python tests/cuda_sanitize.py
"""

import os

import torch

from test_cuda import CELLS, fwd_bwd, to_device
from test_ops import forward_args
from tbptt_ext import ops


def run_every_kernel():
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for cell, relu in CELLS:
            for T, B, I, H in ((3, 2, 4, 5), (4, 3, 6, 70), (3, 18, 8, 300)):
                for reverse, reset in ((False, "none"), (True, "random")):
                    args = to_device(forward_args(cell, T, B, I, H, torch.float64, 0, reset_kind=reset), dtype)
                    fwd_bwd(ops, cell, relu, args, reverse)


if __name__ == "__main__":
    for path in os.environ.get("TBPTT_EXT_TEST_CUDA_PATHS", "persistent,latency,throughput,stepwise").split(","):
        os.environ["TBPTT_EXT_CUDA_PATH"] = path
        run_every_kernel()
    torch.cuda.synchronize()
    print("ran every kernel")
