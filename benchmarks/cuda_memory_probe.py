"""Which tensors are alive at the peak of one chunk's forward + backward on a GPU.

Written when benchmarks/bench_cuda.py measured tbptt_ext's peak memory above cuDNN's for
LSTM and GRU at B >= 64 (up to 1.52x, H200, 2026-11-27; in bfloat16 about 5 [T, B, H]
units more than in float32). What it found was fixed: the peak is now at or below
cuDNN's at every point measured (benchmarks/RESULTS.md). This script records the CUDA caching allocator's history
(torch.cuda.memory._record_memory_history) over one fwd+bwd of the same chunk as
bench_cuda.py (x needs a gradient, carried state, random output gradients), replays the
allocations to the moment the allocated bytes peak, and prints the blocks alive then,
largest first, each with its size in units of one [T, B, H] tensor of the input dtype and
the frames that allocated it (this package's and torch's Python frames, C++ op names).

    python benchmarks/cuda_memory_probe.py                       # LSTM bf16 B=512 H=256 k=50
    python benchmarks/cuda_memory_probe.py --cell GRU --dtype float32 --impl torch.nn
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cuda import BASELINE, ChunkInputs, Impl, Point, build_module, forward_backward, reference_weights  # noqa: E402

ALLOC, FREE = "alloc", ("free_requested", "free_completed")


def peak_live_blocks(events: list[dict]) -> tuple[int, list[dict]]:
    """Replays allocator trace events (dicts with 'action', 'addr', 'size', ...) in order
    and returns (peak bytes, the alloc events of the blocks alive at that peak). A block
    counts from its 'alloc' to its first free event ('free_requested', or
    'free_completed' where the trace has no request); other actions are ignored."""
    live: dict[int, dict] = {}
    total = peak = 0
    at_peak: list[dict] = []
    for event in events:
        action = event.get("action")
        if action == ALLOC:
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, at_peak = total, list(live.values())
        elif action in FREE and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
    return peak, sorted(at_peak, key=lambda e: e["size"], reverse=True)


def describe_frames(frames: list[dict], python_frames: int = 2) -> str:
    """What allocated a block, from its frames (innermost first): the ATen op that allocated
    it (innermost at::_ops name) and the outermost distinct one when different, the
    innermost tbptt C++ function, and the innermost Python lines of this package or the
    benchmarks (torch's own Python frames only when there is none of those)."""
    ops, cpp, ours, torch_py = [], None, [], []
    for frame in frames:
        name, filename = frame.get("name", ""), frame.get("filename", "")
        if filename.endswith(".py"):
            line = f"{Path(filename).name}:{frame.get('line')} {name}"
            if "tbptt_ext" in filename or "benchmarks" in filename:
                ours.append(line)
            elif "/torch/" in filename:
                torch_py.append(line)
        elif name.startswith("at::_ops::"):
            op = name.split("(")[0].rsplit("::", 1)[0]  # at::_ops::mm::call -> at::_ops::mm
            if op not in ops:
                ops.append(op)
        elif cpp is None and name.startswith("tbptt::"):
            cpp = name.split("(")[0]
    picked = ops[:1] + ops[-1:] * (len(ops) > 1) + [cpp] * (cpp is not None) + (ours or torch_py)[:python_frames]
    return " <- ".join(picked) or "(no frame recorded)"


def probe(impl_name: str, point: Point, device: torch.device, rows: int) -> None:
    impl = Impl(impl_name, None if impl_name == BASELINE else os.environ.get("TBPTT_EXT_CUDA_PATH", "auto"))
    impl.select()
    module = build_module(impl, point, reference_weights(point, device), device)
    inputs = ChunkInputs.random(point, device, point.dtype)
    forward_backward(module, inputs)  # warm-up: handles, workspaces, the allocator's pools
    module.zero_grad(set_to_none=True)
    inputs.x.grad = None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    try:
        forward_backward(module, inputs)
        torch.cuda.synchronize(device)
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    measured = torch.cuda.max_memory_allocated(device) - base
    events = snapshot["device_traces"][device.index or 0]
    peak, blocks = peak_live_blocks(events)
    unit = point.k * point.B * point.H * torch.tensor([], dtype=point.dtype).element_size()
    print(f"\n{impl_name}, {point.label}, k={point.k}: peak above the inputs {measured / 2**20:.1f} MiB "
          f"= {measured / unit:.1f} units of [T, B, H] {point.dtype_name} ({unit / 2**20:.2f} MiB); "
          f"{len(blocks)} blocks allocated during the call are alive at its peak ({peak / 2**20:.1f} MiB):")
    print(f"{'MiB':>8} {'units':>6}  allocated by")
    for block in blocks[:rows]:
        print(f"{block['size'] / 2**20:8.2f} {block['size'] / unit:6.2f}  {describe_frames(block.get('frames', []))}")
    if len(blocks) > rows:
        rest = sum(b["size"] for b in blocks[rows:])
        print(f"{rest / 2**20:8.2f} {rest / unit:6.2f}  ({len(blocks) - rows} smaller blocks)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="LSTM", choices=["RNN", "LSTM", "GRU"])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--impl", default="both", choices=["both", "tbptt_ext", BASELINE])
    parser.add_argument("--rows", type=int, default=15, help="blocks listed per implementation (default 15)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("cuda_memory_probe.py: needs a GPU (the CUDA caching allocator's history)")
    device = torch.device("cuda", torch.cuda.current_device())
    point = Point(args.cell, args.dtype, args.batch, args.hidden, args.k)
    names = [BASELINE, "tbptt_ext"] if args.impl == "both" else [args.impl]
    for name in names:
        probe(name, point, device, args.rows)


if __name__ == "__main__":
    main()
