"""One TBPTT chunk (forward, backward, optimizer step, state carried and detached),
torch.nn against tbptt_ext side by side in one process, interleaved.

Prints, per shape, with an input that needs no gradient (raw features) and with one
that does (an embedding or a layer below feeds the RNN), the median time per chunk of
each and the ratio torch.nn time / tbptt_ext time (> 1 means tbptt_ext is faster),
then the geometric mean of the ratios.

    python benchmarks/bench_cpu.py [--repeats 30] [--threads N] [--quick] [--markdown]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import tbptt_ext
from run import ChunkRunner  # benchmarks/run.py: the same chunk step

# (cell, B, I, H, k) from the core issue.
SHAPES = [
    ("RNN", 32, 256, 256, 50),
    ("LSTM", 32, 256, 256, 50),
    ("GRU", 32, 256, 256, 50),
    ("RNN", 1, 64, 128, 50),
    ("LSTM", 4, 128, 128, 100),
    ("GRU", 64, 512, 512, 50),
]
QUICK_SHAPES = [("RNN", 8, 32, 64, 20), ("LSTM", 8, 32, 64, 20), ("GRU", 8, 32, 64, 20)]


def make_pair(cell, I, H):
    torch.manual_seed(0)
    ours = getattr(tbptt_ext, cell)(I, H, backend="fused")
    theirs = getattr(torch.nn, cell)(I, H)
    theirs.load_state_dict(ours.state_dict())
    return theirs, ours


def time_interleaved(runners, repeats, warmup=3, raw=False):
    """Median time of each runner's step(), the runners alternating step by step (with
    raw=True also each runner's list of times, in order: the i-th of each ran side by side).
    The order within a round is reversed every other round, so that no runner always runs
    right after the same other one."""
    for _ in range(warmup):
        for r in runners:
            r.step()
    times = [[] for _ in runners]
    for k in range(repeats):
        order = list(enumerate(runners))
        for i, r in order if k % 2 == 0 else reversed(order):
            t0 = time.perf_counter()
            r.step()
            times[i].append(time.perf_counter() - t0)
    medians = [statistics.median(t) for t in times]
    return (medians, times) if raw else medians


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few repeats (smoke test)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes, repeats = (QUICK_SHAPES, 3) if args.quick else (SHAPES, args.repeats)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"tbptt_ext compiled backends {sorted(tbptt_ext.compiled_backends())} (CPU kernels: {tbptt_ext.ops.cpu_isa()}), "
        f"float32, median of {repeats}"
    )
    if args.markdown:
        print("| cell | B | I | H | k | input grad | torch.nn ms | tbptt_ext ms | speedup |\n"
              "|---|---|---|---|---|---|---|---|---|")
    else:
        print(f"{'cell':5} {'B':>4} {'I':>4} {'H':>4} {'k':>4} {'input grad':>10} {'torch.nn ms':>12} "
              f"{'tbptt_ext ms':>13} {'speedup':>8}")
    ratios = []
    for cell, B, I, H, k in shapes:
        for input_grad in (False, True):
            theirs, ours = make_pair(cell, I, H)
            runners = [ChunkRunner(m, B, I, H, k, input_grad=input_grad) for m in (theirs, ours)]
            t_nn, t_ext = time_interleaved(runners, repeats)
            ratios.append(t_nn / t_ext)
            row = (cell, B, I, H, k, "yes" if input_grad else "no", t_nn * 1e3, t_ext * 1e3, t_nn / t_ext)
            if args.markdown:
                print("| {} | {} | {} | {} | {} | {} | {:.2f} | {:.2f} | {:.2f}x |".format(*row))
            else:
                print("{:5} {:>4} {:>4} {:>4} {:>4} {:>10} {:>12.2f} {:>13.2f} {:>7.2f}x".format(*row))
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"geometric-mean speedup (torch.nn time / tbptt_ext time): {geo:.2f}x; min {min(ratios):.2f}x")


if __name__ == "__main__":
    main()
