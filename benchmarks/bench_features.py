"""What the features no other RNN library has cost, measured side by side, interleaved.

1. Reset masks: one chunk (forward + backward) of tbptt_ext with a [T, B] reset mask
   against the same without resets (the goal: within 5 %), against the Python loop
   people write today (one step at a time through torch.nn, the state multiplied by
   1 - reset), and against torch.nn without resets.
2. The gradient-flow record: the backward of a chunk (timed alone) inside
   tbptt_ext.diagnostics.GradientFlow against the same outside it (the goal: within
   10 %), on the CPU benchmark shapes.

    python benchmarks/bench_features.py [--repeats 20] [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

import tbptt_ext
from bench_cpu import SHAPES, time_interleaved
from tbptt_ext.diagnostics import GradientFlow

RESET_SHAPES = [("LSTM", 32, 64, 256, 64), ("GRU", 16, 128, 128, 64), ("RNN", 32, 256, 256, 50)]


class Chunk:
    """Forward and backward of one chunk of `rnn`; `mode`: plain, reset, masked loop or record."""

    def __init__(self, rnn, B, I, H, k, mode, reset_rate=0.05):
        g = torch.Generator().manual_seed(0)
        self.rnn, self.mode = rnn, mode
        self.x = torch.randn(k, B, I, generator=g)
        self.reset = torch.rand(k, B, generator=g) < reset_rate
        self.weights = torch.randn(k, B, H, generator=g)
        self.flow = GradientFlow(rnn) if mode == "record" else None

    def step(self):
        if self.mode == "masked loop":
            out = self.masked_loop()
        elif self.mode == "reset":
            out, _ = self.rnn(self.x, reset=self.reset)
        elif self.mode == "record":  # (the context is open around the whole run, as in training)
            out, _ = self.rnn(self.x)
            (out * self.weights).sum().backward()
            self.flow.records.clear()
            return
        else:
            out, _ = self.rnn(self.x)
        (out * self.weights).sum().backward()

    def masked_loop(self):
        state, outs = None, []
        for t in range(self.x.shape[0]):
            keep = (~self.reset[t]).float().view(1, -1, 1)
            if state is not None:
                state = tuple(s * keep for s in state) if isinstance(state, tuple) else state * keep
            out, state = self.rnn(self.x[t : t + 1], state)
            outs.append(out)
        return torch.cat(outs)


def time_backward_interleaved(chunks, repeats, warmup=3):
    """Median seconds of the backward alone (the forward runs untimed before it)."""
    times = [[] for _ in chunks]
    for r in range(warmup + repeats):
        for i, chunk in enumerate(chunks):
            out, _ = chunk.rnn(chunk.x)
            loss = (out * chunk.weights).sum()
            start = time.perf_counter()
            loss.backward()
            if r >= warmup:
                times[i].append(time.perf_counter() - start)
            if chunk.flow is not None:
                chunk.flow.records.clear()
    return [statistics.median(t) for t in times]


def pair(cell, I, H):
    torch.manual_seed(0)
    ours = getattr(tbptt_ext, cell)(I, H, backend="fused")
    theirs = getattr(nn, cell)(I, H)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="tiny shapes, a few repeats (smoke test)")
    args = p.parse_args()
    reset_shapes = [("LSTM", 4, 8, 16, 8)] if args.quick else RESET_SHAPES
    record_shapes = [("GRU", 4, 8, 16, 8)] if args.quick else SHAPES
    repeats = 3 if args.quick else args.repeats
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU kernels: {tbptt_ext.ops.cpu_isa()}; "
          f"median of {repeats}, interleaved; ms per chunk (forward + backward)\n")

    print("1. Reset masks (5 % of steps restart a row)")
    print(f"{'cell':5} {'B':>3} {'I':>4} {'H':>4} {'k':>3} {'no reset':>9} {'reset':>8} {'reset cost':>11} "
          f"{'masked loop':>12} {'torch.nn':>9} {'vs loop':>8}")
    for cell, B, I, H, k in reset_shapes:
        ours, theirs = pair(cell, I, H)
        runners = [Chunk(ours, B, I, H, k, "plain"), Chunk(ours, B, I, H, k, "reset"),
                   Chunk(theirs, B, I, H, k, "masked loop"), Chunk(theirs, B, I, H, k, "plain")]
        plain, reset, loop, torch_nn = (t * 1e3 for t in time_interleaved(runners, repeats))
        print(f"{cell:5} {B:>3} {I:>4} {H:>4} {k:>3} {plain:>9.2f} {reset:>8.2f} {reset / plain - 1:>+10.1%} "
              f"{loop:>12.2f} {torch_nn:>9.2f} {loop / reset:>7.1f}x")

    print("\n2. Gradient-flow record: the backward of a chunk, recorded (GradientFlow active) or not")
    print(f"{'cell':5} {'B':>3} {'I':>4} {'H':>4} {'k':>4} {'backward':>9} {'recorded':>9} {'overhead':>9}")
    overheads = []
    for cell, B, I, H, k in record_shapes:
        ours, _ = pair(cell, I, H)
        twin, _ = pair(cell, I, H)  # a second module, recorded throughout
        recorded_run = Chunk(twin, B, I, H, k, "record")
        with recorded_run.flow:
            plain, recorded = (t * 1e3 for t in time_backward_interleaved(
                [Chunk(ours, B, I, H, k, "plain"), recorded_run], repeats))
        overheads.append(recorded / plain)
        print(f"{cell:5} {B:>3} {I:>4} {H:>4} {k:>4} {plain:>9.2f} {recorded:>9.2f} {recorded / plain - 1:>+8.1%}")
    geo = math.exp(sum(math.log(o) for o in overheads) / len(overheads))
    print(f"geometric-mean overhead of the record: {geo - 1:+.1%}; largest {max(overheads) - 1:+.1%}")


if __name__ == "__main__":
    main()
