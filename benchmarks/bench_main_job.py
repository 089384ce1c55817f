"""The main job's training update, torch.nn.LSTM against tbptt_ext.LSTM, interleaved.

One update of tbptt-char-lm's model (embedding 256 -> 64, LSTM 64 -> 256, linear
256 -> 256; batch 32, k = 64; Adam, gradient clipping at 1.0, state carried and
detached), both models built from the same weights and timed alternately in one
process. Prints the median and the mean time per update of each (the mean is a run's
throughput; under contention the times are bimodal and the two differ), the ratios
torch.nn time / tbptt_ext time (> 1: tbptt_ext is faster) and, with --profile, where
the time goes.

    python benchmarks/bench_main_job.py                  # quiet machine
    python benchmarks/bench_main_job.py --contention 1   # with one CPU-bound process beside
    python benchmarks/bench_main_job.py --profile        # per-op breakdown of both
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

import torch
from torch import nn

import tbptt_ext
from tbptt_ext.examples.char_lm import CharLM, cross_entropy
from bench_cpu import time_interleaved  # benchmarks/bench_cpu.py: medians, runners alternating


class Trainer:
    """One model with its optimizer, carried state and a fixed stream of chunks."""

    def __init__(self, rnn_cls, args, seed=0):
        torch.manual_seed(seed)
        self.model = CharLM(rnn_cls, embed=args.embed, hidden=args.hidden, layers=args.layers)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=3e-3)
        self.clip = args.clip
        g = torch.Generator().manual_seed(1)
        self.data = torch.randint(0, 256, (args.bptt * 8 + 1, args.batch), generator=g)
        self.k, self.position, self.state = args.bptt, 0, None

    def step(self):
        x = self.data[self.position : self.position + self.k]
        y = self.data[self.position + 1 : self.position + self.k + 1]
        self.position = (self.position + self.k) % (self.data.shape[0] - self.k - 1)
        logits, state = self.model(x, self.state)
        self.state = tbptt_ext.detach_state(state)
        loss = cross_entropy(logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad()


def profile(trainer, label, rows):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            trainer.step()
    print(f"\n{label}: self CPU time per update by op (5 updates profiled)")
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    print(f"{'op':48} {'ms/update':>10} {'calls':>6}")
    for e in events:
        print(f"{e.key[:48]:48} {e.self_cpu_time_total / 5e3:>10.2f} {e.count // 5:>6}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bptt", type=int, default=64)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--contention", type=int, default=0, help="CPU-bound processes to run beside (default 0)")
    p.add_argument("--profile", action="store_true", help="print the per-op breakdown of both models")
    args = p.parse_args()

    trainers = {"torch.nn.LSTM": Trainer(nn.LSTM, args), "tbptt_ext.LSTM": Trainer(tbptt_ext.LSTM, args)}
    trainers["tbptt_ext.LSTM"].model.load_state_dict(trainers["torch.nn.LSTM"].model.state_dict())
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.contention)]
    try:
        medians, times = time_interleaved(list(trainers.values()), args.repeats, args.warmup, raw=True)
        medians = [m * 1e3 for m in medians]
        means = [statistics.mean(t) * 1e3 for t in times]
        # each update of torch.nn against the tbptt_ext update beside it (same round): the
        # VM's drift over a run (10-30 %) moves both alike
        pairs = sorted(a / b for a, b in zip(*times))
        if args.profile:
            for label, trainer in trainers.items():
                profile(trainer, label, 14)
    finally:
        for proc in busy:
            proc.kill()
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, CPU kernels: {tbptt_ext.ops.cpu_isa()}; "
          f"batch {args.batch} x k {args.bptt}, LSTM {args.embed} -> {args.hidden} x {args.layers}; "
          f"{args.contention} CPU-bound process(es) beside; median of {args.repeats}")
    print(f"{'model':16} {'median ms':>10} {'chars/s':>10} {'mean ms':>10} {'chars/s':>10}")
    for label, ms, mean in zip(trainers, medians, means):
        rate = args.batch * args.bptt * 1e3
        print(f"{label:16} {ms:>10.2f} {rate / ms:>10,.0f} {mean:>10.2f} {rate / mean:>10,.0f}")
    print(f"speedup (torch.nn time / tbptt_ext time): {medians[0] / medians[1]:.2f}x by medians, "
          f"{means[0] / means[1]:.2f}x by means (the throughput of a run)")
    if len(pairs) >= 4:
        quartiles = statistics.quantiles(pairs, n=4)
        print(f"update by update (each torch.nn update against the tbptt_ext update beside it): median "
              f"{statistics.median(pairs):.2f}x, middle half {quartiles[0]:.2f}x-{quartiles[2]:.2f}x")


if __name__ == "__main__":
    main()
