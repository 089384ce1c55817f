"""Runs every CUDA chunk kernel once on a small configuration, for
compute-sanitizer (not a pytest module):

    compute-sanitizer --tool memcheck  python tests/cuda_sanitize.py
    compute-sanitizer --tool racecheck python tests/cuda_sanitize.py
"""

import torch

import tbptt_ext  # noqa: F401  (registers the ops)
from test_cuda import bwd, bwd_args, fwd, inputs

OPS = torch.ops.tbptt_ext

if __name__ == "__main__":
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for cell, relu in (("rnn", False), ("rnn", True), ("lstm", False), ("gru", False)):
            for T, B, H in ((3, 2, 5), (4, 3, 70)):
                args = inputs(cell, T, B, H, dtype)
                out = fwd(OPS, cell, args, relu)
                bwd(OPS, cell, bwd_args(cell, args, out), relu)
    torch.cuda.synchronize()
    print("ran every kernel")
