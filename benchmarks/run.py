"""Speed and memory of tbptt_ext against what users would otherwise run, side by side.

For RNN, LSTM and GRU, on the device present (CPU, or CUDA when available):
  torch.nn          torch.nn.RNN/LSTM/GRU (cuDNN on GPU, oneDNN/ATen on CPU)
  cell loop         a Python loop over torch.nn.RNNCell/LSTMCell/GRUCell
  cell loop+compile that loop under torch.compile (with --compile-loop)
  tbptt_ext         tbptt_ext fused kernels
  tbptt_ext ref     tbptt_ext.reference (plain PyTorch)
each in the seed's TBPTT loop: one chunk = forward, MSE through a linear head,
backward, SGD step, state carried and detached. Implementations are interleaved
round by round so that ratios are fair; times are medians after warm-up
(torch.utils.benchmark on CPU, CUDA events on GPU).

Writes to --out: results.json (raw numbers + environment), results.csv, results.md
(markdown table with the speedup vs torch.nn), speedup_<cell>_<dtype>.png (heatmap
over B x H), memory_vs_T.png (full BPTT vs TBPTT), k_sweep.png.

    python benchmarks/run.py --quick          # 2-core CPU: under a minute
    python benchmarks/run.py                  # full grid (GPU: B 1..128 x H 128..1024, k=64)
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.utils.benchmark as tbench
from torch import nn

import tbptt_ext

IMPLS = ["torch.nn", "cell loop", "cell loop+compile", "tbptt_ext", "tbptt_ext ref"]


# ---------------------------------------------------------------- models
class CellLoop(nn.Module):
    """A one-layer RNN written as a Python loop over torch.nn's cells."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, **factory):
        super().__init__()
        self.cell_name = cell
        self.cell = getattr(nn, f"{cell}Cell")(input_size, hidden_size, **factory)

    def forward(self, x, state=None):
        outputs = []
        for x_t in x.unbind(0):
            state = self.cell(x_t, state)
            outputs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outputs), state


def cell_state_dict(layer_state: dict) -> dict:
    """torch.nn.RNN-style layer-0 names -> RNNCell names."""
    return {k.replace("_l0", ""): v for k, v in layer_state.items()}


def build(impl: str, cell: str, I: int, H: int, device, dtype, reference_state: dict | None):
    factory = dict(device=device, dtype=dtype)
    if impl == "torch.nn":
        rnn = getattr(nn, cell)(I, H, **factory)
    elif impl.startswith("cell loop"):
        rnn = CellLoop(cell, I, H, **factory)
    else:
        backend = "fused" if impl == "tbptt_ext" else "reference"
        rnn = getattr(tbptt_ext, cell)(I, H, backend=backend, **factory)
    if reference_state is not None:
        if impl.startswith("cell loop"):
            rnn.cell.load_state_dict(cell_state_dict(reference_state))
        else:
            rnn.load_state_dict(reference_state)
    if impl == "cell loop+compile":
        rnn.forward = torch.compile(rnn.forward, dynamic=False)
    return rnn


class ChunkRunner:
    """Trains `rnn` + a linear head on one chunk of k steps per step(), carrying the
    detached state: the seed's TBPTT loop."""

    def __init__(self, rnn, B, I, H, k, device="cpu", dtype=torch.float32, input_grad=False):
        g = torch.Generator(device="cpu").manual_seed(0)
        self.rnn = rnn
        self.head = nn.Linear(H, I, device=device, dtype=dtype)
        self.opt = torch.optim.SGD(list(rnn.parameters()) + list(self.head.parameters()), lr=1e-3)
        # input_grad: the input needs a gradient, as when an embedding or another layer feeds the RNN
        self.x = torch.randn(k, B, I, generator=g).to(device=device, dtype=dtype).requires_grad_(input_grad)
        self.y = torch.randn(k, B, I, generator=g).to(device=device, dtype=dtype)
        self.state = None

    def step(self):
        out, state = self.rnn(self.x, self.state)
        self.state = tbptt_ext.detach_state(state)
        loss = nn.functional.mse_loss(self.head(out), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.x.grad = None


# ---------------------------------------------------------------- measures
def time_once(runner, device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        runner.step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    return tbench.Timer("runner.step()", globals={"runner": runner}).timeit(1).median


def peak_memory(runner, device, steps: int = 1) -> int:
    """Peak bytes allocated while running `steps` chunks, beyond what was allocated before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            runner.step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    # CPU: the allocations of this run alone, from the profiler's raw memory events in
    # the order they happened (nanosecond stamps; the per-op summaries have microsecond
    # stamps whose ties made the peak depend on the machine's speed).
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(steps):
            runner.step()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    current = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):
        current += nbytes
        peak = max(peak, current)
    return peak


def run_grid(args, device, log) -> list[dict]:
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for cell in args.cells:
            for B in args.batch:
                for H in args.hidden:
                    rows.extend(run_point(args, device, dtype, cell, B, H, H, args.k, log))
    return rows


def run_point(args, device, dtype, cell, B, I, H, k, log) -> list[dict]:
    torch.manual_seed(0)
    ref = getattr(tbptt_ext, cell)(I, H, device=device, dtype=dtype).state_dict()
    runners, rows = {}, []
    for impl in args.impls:
        if impl == "tbptt_ext" and not tbptt_ext.ops.has_fused_kernel(device.type, dtype):
            rows.append(dict(impl=impl, status=f"no fused kernel for {device.type}/{dtype}"))
            continue
        started = time.perf_counter()
        runner = ChunkRunner(build(impl, cell, I, H, device, dtype, ref), B, I, H, k, device, dtype)
        for _ in range(args.warmup):
            runner.step()
        runners[impl] = (runner, time.perf_counter() - started)
    times = {impl: [] for impl in runners}
    for _ in range(args.repeats):
        for impl, (runner, _) in runners.items():
            times[impl].append(time_once(runner, device))
    base = statistics.median(times["torch.nn"]) if "torch.nn" in times else None
    for impl, (runner, setup) in runners.items():
        t = statistics.median(times[impl])
        rows.append(dict(
            impl=impl, status="ok", seconds_per_chunk=t, latency_us_per_step=t / k * 1e6,
            steps_x_batch_per_s=k * B / t, peak_bytes=peak_memory(runner, device),
            speedup_vs_torch_nn=base / t if base else None, setup_seconds=setup,
        ))
    for r in rows:
        r.update(cell=cell, B=B, I=I, H=H, k=k, dtype=str(dtype).replace("torch.", ""))
    log(format_rows(rows))
    return rows


def memory_vs_T(args, device, log) -> list[dict]:
    """Peak memory of training over T steps: full BPTT (one backward through all T
    steps) against TBPTT (T / k chunks of k steps, state carried), for torch.nn and
    tbptt_ext. TBPTT should stay flat in T; full BPTT grows linearly."""
    out = []
    cell, B, H, k = "LSTM", args.memory_batch, args.memory_hidden, args.k
    for T in args.memory_T:
        for impl in ["torch.nn", "tbptt_ext"]:
            if impl == "tbptt_ext" and not tbptt_ext.ops.has_fused_kernel(device.type, torch.float32):
                continue
            for mode in ["full BPTT", "TBPTT"]:
                torch.manual_seed(0)
                chunk = T if mode == "full BPTT" else min(k, T)
                runner = ChunkRunner(build(impl, cell, H, H, device, torch.float32, None), B, H, H, chunk, device,
                                     torch.float32)
                runner.step()  # warm-up, outside the measurement
                peak = peak_memory(runner, device, steps=T // chunk)
                out.append(dict(T=T, impl=impl, mode=mode, peak_bytes=peak, B=B, H=H, k=k, cell=cell))
    log("memory vs T (MiB): " + ", ".join(f"{r['impl']} {r['mode']} T={r['T']}: {r['peak_bytes'] / 2**20:.1f}"
                                          for r in out))
    return out


def k_sweep(args, device, log) -> list[dict]:
    out = []
    for k in args.k_sweep:
        sub = argparse.Namespace(**{**vars(args), "impls": [i for i in ["torch.nn", "tbptt_ext"] if i in args.impls]})
        for r in run_point(sub, device, torch.float32, "LSTM", args.sweep_batch, args.sweep_hidden,
                           args.sweep_hidden, k, log):
            out.append(r)
    return out


# ---------------------------------------------------------------- output
def format_rows(rows) -> str:
    lines = []
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"  {r['cell']:4} B={r['B']:<4} H={r['H']:<5} k={r['k']:<4} {r['dtype']:8} {r['impl']:18} "
                         f"skipped: {r['status']}")
            continue
        speed = f"{r['speedup_vs_torch_nn']:.2f}x" if r["speedup_vs_torch_nn"] else "-"
        lines.append(
            f"  {r['cell']:4} B={r['B']:<4} H={r['H']:<5} k={r['k']:<4} {r['dtype']:8} {r['impl']:18} "
            f"{r['seconds_per_chunk'] * 1e3:9.2f} ms/chunk {r['latency_us_per_step']:9.1f} us/step "
            f"{r['peak_bytes'] / 2**20:8.1f} MiB  {speed:>7} vs torch.nn"
        )
    return "\n".join(lines)


def markdown(rows, env) -> str:
    head = (f"Device: {env['device_name']}; torch {env['torch']}"
            f"{', CUDA ' + env['cuda'] if env['cuda'] else ''}; threads {env['threads']}; {env['date']}.\n"
            "One TBPTT chunk (forward, backward, SGD step); speedup = torch.nn time / time.\n\n")
    table = ["| cell | dtype | B | H | k | implementation | ms/chunk | us/step | steps*B/s | peak MiB | speedup vs torch.nn |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            table.append(f"| {r['cell']} | {r['dtype']} | {r['B']} | {r['H']} | {r['k']} | {r['impl']} "
                         f"| - | - | - | - | {r['status']} |")
            continue
        speed = f"{r['speedup_vs_torch_nn']:.2f}x" if r["speedup_vs_torch_nn"] else "-"
        table.append(
            f"| {r['cell']} | {r['dtype']} | {r['B']} | {r['H']} | {r['k']} | {r['impl']} "
            f"| {r['seconds_per_chunk'] * 1e3:.2f} | {r['latency_us_per_step']:.1f} "
            f"| {r['steps_x_batch_per_s']:,.0f} | {r['peak_bytes'] / 2**20:.1f} | {speed} |"
        )
    ours = [r["speedup_vs_torch_nn"] for r in rows if r["impl"] == "tbptt_ext" and r["status"] == "ok"]
    summary = ""
    if ours:
        geo = math.exp(sum(math.log(s) for s in ours) / len(ours))
        summary = (f"\ntbptt_ext vs torch.nn: geometric-mean speedup {geo:.2f}x over {len(ours)} points, "
                   f"min {min(ours):.2f}x, max {max(ours):.2f}x.\n")
    return head + "\n".join(table) + "\n" + summary


def plots(rows, memory_rows, sweep_rows, out: Path) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ours = [r for r in rows if r["impl"] == "tbptt_ext" and r["status"] == "ok"]
    for cell in sorted({r["cell"] for r in ours}):
        for dtype in sorted({r["dtype"] for r in ours}):
            pts = [r for r in ours if r["cell"] == cell and r["dtype"] == dtype]
            if not pts:
                continue
            Bs, Hs = sorted({r["B"] for r in pts}), sorted({r["H"] for r in pts})
            grid = [[next((r["speedup_vs_torch_nn"] for r in pts if r["B"] == b and r["H"] == h), float("nan"))
                     for h in Hs] for b in Bs]
            fig, ax = plt.subplots(figsize=(max(5.0, 1.8 + 1.2 * len(Hs)), max(3.0, 1.4 + 0.8 * len(Bs))))
            im = ax.imshow(grid, cmap="RdYlGn", vmin=0.5, vmax=2.0, origin="lower")
            ax.set_xticks(range(len(Hs)), [str(h) for h in Hs])
            ax.set_yticks(range(len(Bs)), [str(b) for b in Bs])
            ax.set_xlabel("hidden size H (= input size)")
            ax.set_ylabel("batch B")
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    ax.text(j, i, f"{v:.2f}x", ha="center", va="center", fontsize=9)
            ax.set_title(f"{cell} {dtype}: speedup vs torch.nn", fontsize=10)
            fig.colorbar(im, ax=ax)
            fig.tight_layout()
            path = out / f"speedup_{cell}_{dtype}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path.name)
    if memory_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for impl in sorted({r["impl"] for r in memory_rows}):
            for mode, style in [("full BPTT", "-o"), ("TBPTT", "--s")]:
                pts = [r for r in memory_rows if r["impl"] == impl and r["mode"] == mode]
                ax.plot([r["T"] for r in pts], [r["peak_bytes"] / 2**20 for r in pts], style, label=f"{impl}, {mode}")
        r0 = memory_rows[0]
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("peak memory of the run (MiB)")
        ax.set_title(f"{r0['cell']} B={r0['B']} H={r0['H']}: full BPTT vs TBPTT (k={r0['k']})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "memory_vs_T.png", dpi=110)
        plt.close(fig)
        written.append("memory_vs_T.png")
    if sweep_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for impl in sorted({r["impl"] for r in sweep_rows if r["status"] == "ok"}):
            pts = sorted((r for r in sweep_rows if r["impl"] == impl and r["status"] == "ok"), key=lambda r: r["k"])
            ax.plot([r["k"] for r in pts], [r["latency_us_per_step"] for r in pts], "-o", label=impl)
        r0 = sweep_rows[0]
        ax.set_xscale("log", base=2)
        ax.set_xlabel("chunk length k")
        ax.set_ylabel("time per step (us), forward+backward+step")
        ax.set_title(f"LSTM B={r0['B']} H={r0['H']}: cost per step against k")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "k_sweep.png", dpi=110)
        plt.close(fig)
        written.append("k_sweep.png")
    return written


def environment(device) -> dict:
    return dict(
        device=str(device),
        device_name=(torch.cuda.get_device_name(device) if device.type == "cuda"
                     else f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"),
        torch=torch.__version__, cuda=torch.version.cuda if device.type == "cuda" else None,
        threads=torch.get_num_threads(), python=platform.python_version(),
        tbptt_ext_compiled=sorted(tbptt_ext.compiled_backends()),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def ints(text):
    return [int(v) for v in text.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small CPU grid, a few repeats (under a minute on 2 cores)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cells", default="RNN,LSTM,GRU")
    p.add_argument("--batch", type=ints, default=None, help="comma-separated batch sizes")
    p.add_argument("--hidden", type=ints, default=None, help="comma-separated hidden sizes (input size = H)")
    p.add_argument("--k", type=int, default=None, help="chunk length")
    p.add_argument("--dtypes", default=None, help="e.g. float32,bfloat16")
    p.add_argument("--impls", default=None, help="comma-separated, from: " + ", ".join(IMPLS))
    p.add_argument("--compile-loop", action="store_true", help="also time the cell loop under torch.compile")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-memory-vs-T", action="store_true")
    p.add_argument("--no-k-sweep", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    if args.quick:
        defaults = dict(batch=[1, 8, 32], hidden=[64, 128, 256], k=32, dtypes="float32", repeats=5,
                        memory_T=[32, 64, 128, 256], k_sweep=[8, 32, 128])
    elif gpu:
        defaults = dict(batch=[1, 8, 32, 128], hidden=[128, 256, 512, 1024], k=64, dtypes="float32,bfloat16",
                        repeats=20, memory_T=[64, 128, 256, 512, 1024, 2048], k_sweep=[8, 16, 32, 64, 128, 256])
    else:
        defaults = dict(batch=[1, 8, 32], hidden=[128, 256], k=64, dtypes="float32", repeats=10,
                        memory_T=[64, 128, 256, 512, 1024], k_sweep=[8, 16, 32, 64, 128])
    for key in ("batch", "hidden", "k", "dtypes", "repeats"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    args.memory_T, args.k_sweep = defaults["memory_T"], defaults["k_sweep"]
    args.memory_batch, args.memory_hidden = (8, 256) if not args.quick else (8, 64)
    args.sweep_batch, args.sweep_hidden = 8, (256 if not args.quick else 64)
    args.cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    impls = args.impls.split(",") if args.impls else [i for i in IMPLS if i != "cell loop+compile" or args.compile_loop]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        p.error(f"unknown implementation(s) {unknown}; choose from {IMPLS}")
    args.impls = impls
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    print(f"{env['device_name']}, torch {env['torch']}, threads {env['threads']}, "
          f"tbptt_ext compiled {env['tbptt_ext_compiled']}; writing to {out}", flush=True)

    def log(text):
        print(text, flush=True)

    started = time.perf_counter()
    rows = run_grid(args, device, log)
    memory_rows = [] if args.no_memory_vs_T else memory_vs_T(args, device, log)
    sweep_rows = [] if args.no_k_sweep else k_sweep(args, device, log)
    (out / "results.json").write_text(json.dumps(
        dict(environment=env, args={k: v for k, v in vars(args).items()}, grid=rows, memory_vs_T=memory_rows,
             k_sweep=sweep_rows), indent=1, default=str))
    keys = ["cell", "dtype", "B", "I", "H", "k", "impl", "status", "seconds_per_chunk", "latency_us_per_step",
            "steps_x_batch_per_s", "peak_bytes", "speedup_vs_torch_nn", "setup_seconds"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows, env)
    (out / "results.md").write_text(table)
    written = plots(rows, memory_rows, sweep_rows, out)
    print("\n" + table)
    print(f"wrote results.json, results.csv, results.md{''.join(', ' + w for w in written)} "
          f"in {time.perf_counter() - started:.0f} s")
    return rows


if __name__ == "__main__":
    main()
