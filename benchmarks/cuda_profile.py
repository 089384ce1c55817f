"""Where one TBPTT chunk's time goes on a GPU: tbptt_ext against cuDNN, kernel by kernel.

For each point (cell, dtype, B, H; I = H, k steps) and each implementation (torch.nn,
then tbptt_ext on each CUDA path in --paths), one fwd+bwd as benchmarks/bench_cuda.py
times it (same inputs), under torch.profiler for --iters iterations after a warm-up.
Printed per implementation:

  wall       time per iteration of --iters back-to-back iterations, synchronized at the
             end, without the profiler (ms), then under it
  GPU busy   union of the kernels' (and copies') intervals per iteration (ms), under the
             profiler, and its share of the wall time under the profiler: the rest of
             that time the GPU waits for the host
  kernels    the kernels by GPU time per iteration: launches, total and mean time
  host       the host-side events (operators, CUDA runtime calls) by self CPU time per
             iteration, under the profiler (which adds its own cost to each)

On the CPU (--device cpu, the default without a GPU) the same without the GPU columns:
the host's time per chunk, op by op (torch.nn's CPU kernels against tbptt_ext's).

    python benchmarks/cuda_profile.py --points RNN:float32:32x256,LSTM:float32:1x128 --paths auto
    python benchmarks/cuda_profile.py --device cpu --points LSTM:float32:4x128 --k 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cuda as bc  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", default="RNN:float32:1x128,RNN:float32:32x256,RNN:float32:512x256",
                   help="comma list of CELL:DTYPE:BxH")
    p.add_argument("--paths", default="auto", help="comma list of TBPTT_EXT_CUDA_PATH values")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--iters", type=int, default=20, help="profiled iterations (default: 20)")
    p.add_argument("--top", type=int, default=12,
                   help="kernels and host events listed per implementation (default: 12)")
    p.add_argument("--forward-only", action="store_true", help="profile the forward alone (no_grad)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda (default where available) or cpu")
    return p.parse_args(argv)


def busy_ms(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (µs in, ms out)."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total / 1e3


def short(name: str, width: int = 78) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_wall_ms(module, inputs, run, iters: int, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    for _ in range(iters):
        bc.clear_grads(module, inputs)
        run(module, inputs)
    synchronize(device)
    return (time.perf_counter() - started) * 1e3 / iters


def profile_one(module, inputs, run, iters: int, device: torch.device):
    for _ in range(5):
        bc.clear_grads(module, inputs)
        run(module, inputs)
    plain = min(plain_wall_ms(module, inputs, run, iters, device) for _ in range(3))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(iters):
            bc.clear_grads(module, inputs)
            run(module, inputs)
        synchronize(device)
        wall = (time.perf_counter() - started) * 1e3 / iters
    host = sorted(((e.key, e.count, e.self_cpu_time_total) for e in prof.key_averages()
                   if e.device_type == torch.autograd.DeviceType.CPU), key=lambda r: -r[2])
    kernels: dict[str, list[float]] = {}
    intervals = []
    for evt in prof.events():
        if evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        start, end = evt.time_range.start, evt.time_range.end
        intervals.append((start, end))
        kernels.setdefault(evt.name, []).append(end - start)
    return plain, wall, busy_ms(intervals) / iters, kernels, host


def main(argv=None):
    args = parse_args(argv)
    device = bc.resolve_device(args.device, "cuda_profile.py")
    gpu = device.type == "cuda"
    paths = bc.split_list(args.paths)
    run = (lambda m, i: bc.forward_only(m, i)) if args.forward_only else bc.forward_backward
    where = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{where}, torch {torch.__version__}; k={args.k}, I=H, "
          f"{'forward only' if args.forward_only else 'fwd+bwd'}, {args.iters} profiled iterations")
    for spec in bc.split_list(args.points):
        cell, dtype_name, shape = spec.split(":")
        B, H = (int(v) for v in shape.lower().split("x"))
        point = bc.Point(cell, dtype_name, B, H, args.k)
        weights = bc.reference_weights(point, device)
        inputs = bc.ChunkInputs.random(point, device, point.dtype)
        print(f"\n=== {point.label}")
        for name, path in bc.impl_names(device, paths):
            impl = bc.Impl(name, path)
            impl.select()
            module = bc.build_module(impl, point, weights, device)
            plain, wall, busy, kernels, host = profile_one(module, inputs, run, args.iters, device)
            line = f"{name}: wall {plain:.3f} ms per iteration ({wall:.3f} under the profiler)"
            if not gpu:
                print(line)
            else:
                launches = sum(len(v) for v in kernels.values()) / args.iters
                print(f"{line}, GPU busy {busy:.3f} ms ({100 * busy / wall:.0f} % of the profiled wall), "
                      f"{launches:.0f} kernels and copies per iteration")
                rows = sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[: args.top]
                print(f"  {'launches':>8} {'ms':>8} {'mean us':>8}  kernel")
                for kname, times in rows:
                    print(f"  {len(times) / args.iters:8.1f} {sum(times) / 1e3 / args.iters:8.3f} "
                          f"{sum(times) / len(times):8.1f}  {short(kname)}")
            print(f"  {'calls':>8} {'host ms':>8} {'mean us':>8}  host event (self CPU time)")
            for hname, count, self_us in host[: args.top]:
                print(f"  {count / args.iters:8.1f} {self_us / 1e3 / args.iters:8.3f} {self_us / max(count, 1):8.1f}  "
                      f"{short(hname)}")
    os.environ.pop(bc.CUDA_PATH_ENV, None)


if __name__ == "__main__":
    main()
