"""tbptt_ext's CUDA recurrence kernels against cuDNN (torch.nn), one TBPTT chunk.

For each point (cell, dtype, batch B, hidden H; input size I = H; k time steps,
time-major, one layer), in one process and with the same weights and inputs:

  torch.nn                  torch.nn.RNN/LSTM/GRU (cuDNN on a GPU)
  tbptt_ext[<path>]         tbptt_ext.RNN/LSTM/GRU(backend="fused"), one column per
                            TBPTT_EXT_CUDA_PATH in --paths (the variable is read by the
                            C++ at every op call, so it is switched in-process)

Measured per implementation:
  fwd+bwd     out, state = m(x, hx); autograd.backward([out, *state], random grads);
              x needs a gradient, the carried state (h0, c0) is random and detached
  forward     the same forward under torch.no_grad()
              Both: median of --repeats after --warmup untimed runs, implementations
              interleaved round by round; CUDA events on a GPU, perf_counter on the CPU.
  memory      peak bytes allocated by one fwd+bwd beyond what was allocated before
              (GPU only), as a ratio tbptt_ext / cuDNN
  accuracy    relative error ||a - truth|| / ||truth|| of the output and of all
              gradients (input + parameters, concatenated), truth = torch.nn in float64
              on the same device with the same (rounded) weights and inputs; reported as the
              ratio tbptt_ext error / cuDNN error. float32 on a GPU is measured with
              torch.backends.cudnn.allow_tf32 on (torch's default, which our kernels
              follow) and off.

Speedup = cuDNN time / tbptt_ext time (> 1: tbptt_ext is faster). After the table, one
summary per path against the targets: fwd+bwd geometric mean >= 1.5, no point below
1.0, forward-only geometric mean >= 1.5, peak memory <= cuDNN's at every point, error
ratio <= 2. Writes results.json (environment and every raw number) and results.md to --out.

    python benchmarks/bench_cuda.py                                  # GPU, full grid
    python benchmarks/bench_cuda.py --paths auto,persistent,latency --cells LSTM
    python benchmarks/bench_cuda.py --device cpu --cells RNN --shapes 2x16 --k 4 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import tbptt_ext

CELLS = ["RNN", "LSTM", "GRU"]
DEFAULT_SHAPES = "1x128,8x256,32x256,64x512,128x1024,512x256"
DEFAULT_DTYPES = "float32,bfloat16"
CUDA_PATH_ENV = "TBPTT_EXT_CUDA_PATH"
CUDA_PATHS = ["auto", "persistent", "latency", "throughput", "stepwise"]
BASELINE = "torch.nn"

TARGET_SPEEDUP_GEOMEAN = 1.5
TARGET_MIN_SPEEDUP = 1.0
TARGET_FWD_SPEEDUP_GEOMEAN = 1.5
TARGET_MAX_ERROR_RATIO = 2.0


# ---------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default=",".join(CELLS), help="comma list of RNN, LSTM, GRU (default: all)")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"comma list of BxH (default: {DEFAULT_SHAPES})")
    parser.add_argument("--dtypes", default=DEFAULT_DTYPES, help=f"comma list (default: {DEFAULT_DTYPES})")
    parser.add_argument("--k", type=int, default=50, help="time steps per chunk (default: 50)")
    parser.add_argument("--paths", default="auto,throughput",
                        help=f"comma list of {CUDA_PATH_ENV} values, one tbptt_ext column each "
                             f"(default: auto,throughput; ignored on the CPU); known: {', '.join(CUDA_PATHS)}")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per implementation (default: 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first (default: 10)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out_cuda"),
                        help="directory for results.json and results.md (default: benchmarks/out_cuda)")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the float64 accuracy comparison")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    args = parser.parse_args(argv)

    args.cells = split_list(args.cells)
    if bad := [c for c in args.cells if c not in CELLS]:
        parser.error(f"unknown cell(s) {', '.join(bad)}; choose from {', '.join(CELLS)}")
    try:
        args.shapes = [tuple(int(n) for n in s.lower().split("x")) for s in split_list(args.shapes)]
    except ValueError:
        parser.error(f"--shapes must look like 1x128,8x256 (BxH), got {args.shapes}")
    if any(len(s) != 2 or min(s) < 1 for s in args.shapes):
        parser.error(f"--shapes must look like 1x128,8x256 (BxH, positive), got {args.shapes}")
    args.dtypes = split_list(args.dtypes)
    if bad := [d for d in args.dtypes if not isinstance(getattr(torch, d, None), torch.dtype)]:
        parser.error(f"unknown dtype(s) {', '.join(bad)}")
    args.paths = split_list(args.paths)
    if bad := [p for p in args.paths if p not in CUDA_PATHS]:
        parser.error(f"unknown path(s) {', '.join(bad)}; choose from {', '.join(CUDA_PATHS)}")
    if args.k < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--k and --repeats must be >= 1, --warmup >= 0")
    return args


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def resolve_device(name: str, script: str = "bench_cuda.py") -> torch.device:
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"{script}: --device cuda, but this machine has no usable CUDA GPU "
                             "(torch.cuda.is_available() is False); use --device cpu for a smoke run.")
        if "cuda" not in tbptt_ext.compiled_backends():
            raise SystemExit(f"{script}: tbptt_ext was built without its CUDA kernels (compiled backends: "
                             f"{', '.join(sorted(tbptt_ext.compiled_backends())) or 'none'}); rebuild with "
                             "TBPTT_EXT_BUILD_CUDA=1.")
    elif device.type != "cpu":
        raise SystemExit(f"{script}: --device must be cuda or cpu, got {name}")
    return device


# ---------------------------------------------------------------- implementations and inputs
@dataclass
class Point:
    cell: str
    dtype_name: str
    B: int
    H: int
    k: int

    @property
    def I(self) -> int:  # noqa: E743 (the usual name of the input size)
        return self.H

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype_name)

    @property
    def label(self) -> str:
        return f"{self.cell} {self.dtype_name} B={self.B} H={self.H}"

    @property
    def seed(self) -> int:
        """Fixed per point, the same for every implementation."""
        return zlib.crc32(f"{self.cell}/{self.dtype_name}/{self.B}/{self.H}/{self.k}".encode())


@dataclass
class Impl:
    """One implementation column: torch.nn, or tbptt_ext with one CUDA path."""

    name: str
    cuda_path: str | None = None  # TBPTT_EXT_CUDA_PATH while it runs; None: leave the variable alone
    module: nn.Module | None = None
    error: str | None = None
    fwd_bwd_ms: list[float] = field(default_factory=list)
    fwd_ms: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    rel_errors: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> {"output", "grads"}

    @property
    def ok(self) -> bool:
        return self.error is None

    def select(self):
        if self.cuda_path is not None:
            os.environ[CUDA_PATH_ENV] = self.cuda_path


def impl_names(device: torch.device, paths: list[str]) -> list[tuple[str, str | None]]:
    """(column name, CUDA path) of each implementation, the baseline first."""
    if device.type != "cuda":
        return [(BASELINE, None), ("tbptt_ext", None)]
    return [(BASELINE, None)] + [(f"tbptt_ext[{p}]", p) for p in paths]


def reference_weights(point: Point, device: torch.device) -> dict:
    """A randomly initialized torch.nn module's state dict at the point's seed and dtype."""
    torch.manual_seed(point.seed)
    return getattr(nn, point.cell)(point.I, point.H).to(device=device, dtype=point.dtype).state_dict()


def build_module(impl: Impl, point: Point, weights: dict, device: torch.device) -> nn.Module:
    factory = dict(device=device, dtype=point.dtype)
    if impl.name == BASELINE:
        module = getattr(nn, point.cell)(point.I, point.H, **factory)
    else:
        module = getattr(tbptt_ext, point.cell)(point.I, point.H, backend="fused", **factory)
    module.load_state_dict(weights)
    return module


@dataclass
class ChunkInputs:
    """x [k, B, I] (needs a gradient), the carried state h0 (and c0) [1, B, H] (no gradient),
    and random gradients for the output and the final state."""

    x: torch.Tensor
    state: list[torch.Tensor]
    grad_output: torch.Tensor
    grad_state: list[torch.Tensor]

    @staticmethod
    def random(point: Point, device: torch.device, dtype: torch.dtype) -> "ChunkInputs":
        gen = torch.Generator(device="cpu").manual_seed(point.seed)
        n_state = 2 if point.cell == "LSTM" else 1

        def randn(*shape):
            return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

        x = randn(point.k, point.B, point.I).requires_grad_(True)
        state = [randn(1, point.B, point.H) for _ in range(n_state)]
        grad_output = randn(point.k, point.B, point.H)
        grad_state = [randn(1, point.B, point.H) for _ in range(n_state)]
        return ChunkInputs(x, state, grad_output, grad_state)

    @property
    def hx(self):
        return tuple(self.state) if len(self.state) == 2 else self.state[0]

    def upcast_to_float64(self, device: torch.device) -> "ChunkInputs":
        def up(t):
            return t.detach().to(device=device, dtype=torch.float64)

        return ChunkInputs(up(self.x).requires_grad_(True), [up(s) for s in self.state], up(self.grad_output),
                           [up(g) for g in self.grad_state])


def state_tensors(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, (tuple, list)) else [state]


def clear_grads(module: nn.Module, inputs: ChunkInputs):
    module.zero_grad(set_to_none=True)
    inputs.x.grad = None


def forward_backward(module: nn.Module, inputs: ChunkInputs) -> torch.Tensor:
    out, state = module(inputs.x, inputs.hx)
    torch.autograd.backward([out, *state_tensors(state)], [inputs.grad_output, *inputs.grad_state])
    return out


def forward_only(module: nn.Module, inputs: ChunkInputs):
    with torch.no_grad():
        module(inputs.x, inputs.hx)


# ---------------------------------------------------------------- measures
def time_ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e3


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def guarded(impl: Impl, device: torch.device, fn):
    """Runs fn(); on an exception records it as the implementation's error (it then sits out
    the rest of the point) and returns None."""
    try:
        return fn()
    except Exception as error:  # out of memory, unsupported shape or dtype, kernel failure...
        impl.error = f"error: {first_line(error)}"
        if device.type == "cuda":
            try:  # after a sticky CUDA error these raise too; the next implementation's call will say so
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()
            except Exception:
                pass
        return None


def time_interleaved(impls: list[Impl], inputs: ChunkInputs, run, record: str, args, device):
    """Round r runs every implementation once; the first --warmup rounds are not recorded."""
    for round_index in range(args.warmup + args.repeats):
        for impl in impls:
            if not impl.ok:
                continue
            impl.select()
            clear_grads(impl.module, inputs)
            ms = guarded(impl, device, lambda: time_ms(lambda: run(impl.module, inputs), device))
            if ms is not None and round_index >= args.warmup:
                getattr(impl, record).append(ms)
    for impl in impls:
        if impl.module is not None:
            clear_grads(impl.module, inputs)


def measure_peak_memory(impls: list[Impl], inputs: ChunkInputs, device: torch.device):
    for impl in impls:
        if not impl.ok:
            continue
        impl.select()
        clear_grads(impl.module, inputs)

        def one_chunk():
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            forward_backward(impl.module, inputs)
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - base

        impl.peak_bytes = guarded(impl, device, one_chunk)
        clear_grads(impl.module, inputs)


def output_and_grads(module: nn.Module, inputs: ChunkInputs, param_names: list[str]):
    """The output and all gradients (input, then parameters in param_names order) of one
    fwd+bwd, in float64 on the CPU."""
    clear_grads(module, inputs)
    out = forward_backward(module, inputs)
    params = dict(module.named_parameters())
    grads = [inputs.x.grad] + [params[name].grad for name in param_names]
    if any(g is None for g in grads):
        raise RuntimeError("a gradient is missing after backward")
    flat = torch.cat([g.detach().reshape(-1).to(device="cpu", dtype=torch.float64) for g in grads])
    result = out.detach().to(device="cpu", dtype=torch.float64), flat
    clear_grads(module, inputs)
    return result


def relative_error(value: torch.Tensor, truth: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(value - truth) / torch.linalg.vector_norm(truth)).item()


def accuracy_modes(point: Point, device: torch.device) -> list[tuple[str, bool | None]]:
    """(mode name, torch.backends.cudnn.allow_tf32 during the mode; None: leave it)."""
    if device.type == "cuda" and point.dtype == torch.float32:
        return [("tf32 on", True), ("tf32 off", False)]
    return [("default", None)]


def measure_accuracy(point: Point, impls: list[Impl], inputs: ChunkInputs, weights: dict, device: torch.device):
    # The truth: torch.nn in float64 on the same device (cuDNN's double-precision RNN on a
    # GPU: independent of tbptt_ext, and fast enough for the largest points).
    truth_module = getattr(nn, point.cell)(point.I, point.H, dtype=torch.float64, device=device)
    truth_module.load_state_dict({name: t.to(device=device, dtype=torch.float64)
                                  for name, t in weights.items()})
    param_names = [name for name, _ in truth_module.named_parameters()]
    truth_out, truth_grads = output_and_grads(truth_module, inputs.upcast_to_float64(device), param_names)
    saved_tf32 = torch.backends.cudnn.allow_tf32
    try:
        for mode, allow_tf32 in accuracy_modes(point, device):
            if allow_tf32 is not None:
                torch.backends.cudnn.allow_tf32 = allow_tf32
            for impl in impls:
                if not impl.ok:
                    continue
                impl.select()
                result = guarded(impl, device, lambda: output_and_grads(impl.module, inputs, param_names))
                if result is not None:
                    out, grads = result
                    impl.rel_errors[mode] = dict(output=relative_error(out, truth_out),
                                                 grads=relative_error(grads, truth_grads))
    finally:
        torch.backends.cudnn.allow_tf32 = saved_tf32


def run_point(point: Point, args, device: torch.device) -> dict:
    impls = [Impl(name, path) for name, path in impl_names(device, args.paths)]
    weights = reference_weights(point, device)
    for impl in impls:
        impl.select()
        impl.module = guarded(impl, device, lambda: build_module(impl, point, weights, device))
    inputs = ChunkInputs.random(point, device, point.dtype)
    time_interleaved(impls, inputs, forward_backward, "fwd_bwd_ms", args, device)
    time_interleaved(impls, inputs, forward_only, "fwd_ms", args, device)
    if device.type == "cuda" and not args.no_memory:
        measure_peak_memory(impls, inputs, device)
    if not args.no_accuracy:
        measure_accuracy(point, impls, inputs, weights, device)
    row = point_record(point, impls)
    for impl in impls:
        impl.module = None
    del inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


# ---------------------------------------------------------------- records
def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(numerator, denominator) -> float | None:
    if numerator is None or denominator is None:
        return None
    if denominator == 0:
        return 1.0 if numerator == 0 else math.inf
    return numerator / denominator


def point_record(point: Point, impls: list[Impl]) -> dict:
    baseline = impls[0]
    base_fwd_bwd, base_fwd = median_or_none(baseline.fwd_bwd_ms), median_or_none(baseline.fwd_ms)
    results = []
    for impl in impls:
        fwd_bwd, fwd = median_or_none(impl.fwd_bwd_ms), median_or_none(impl.fwd_ms)
        entry = dict(
            impl=impl.name, cuda_path=impl.cuda_path, status="ok" if impl.ok else impl.error,
            fwd_bwd_ms=fwd_bwd, fwd_ms=fwd, fwd_bwd_ms_all=impl.fwd_bwd_ms, fwd_ms_all=impl.fwd_ms,
            peak_bytes=impl.peak_bytes, peak_mb=None if impl.peak_bytes is None else impl.peak_bytes / 1e6,
            rel_errors=impl.rel_errors,
        )
        if impl is not baseline:
            usable = impl.ok and baseline.ok
            entry.update(
                speedup=ratio(base_fwd_bwd, fwd_bwd) if usable else None,
                fwd_speedup=ratio(base_fwd, fwd) if usable else None,
                peak_memory_ratio=ratio(impl.peak_bytes, baseline.peak_bytes) if usable else None,
                error_ratios={
                    mode: {what: ratio(err, baseline.rel_errors[mode][what]) for what, err in errs.items()}
                    for mode, errs in impl.rel_errors.items() if usable and mode in baseline.rel_errors
                },
            )
        results.append(entry)
    return dict(cell=point.cell, dtype=point.dtype_name, B=point.B, H=point.H, I=point.I, k=point.k,
                seed=point.seed, label=point.label, results=results)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def environment(args, device: torch.device) -> dict:
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"{cpu_model()}, {torch.get_num_threads()} threads"
    return dict(
        device=str(device), device_name=device_name, torch=torch.__version__, cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        cuda_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        tbptt_ext=tbptt_ext.__version__, tbptt_ext_compiled_backends=sorted(tbptt_ext.compiled_backends()),
        cpu_isa=tbptt_ext.ops.cpu_isa(), python=platform.python_version(), host=platform.node(),
        date=datetime.datetime.now().isoformat(timespec="seconds"), command=" ".join(sys.argv),
        timer="CUDA events" if device.type == "cuda" else "time.perf_counter",
        k=args.k, repeats=args.repeats, warmup=args.warmup, cells=args.cells,
        shapes=[f"{B}x{H}" for B, H in args.shapes], dtypes=args.dtypes,
        cuda_paths=args.paths if device.type == "cuda" else None,
        accuracy=not args.no_accuracy, memory=device.type == "cuda" and not args.no_memory,
    )


# ---------------------------------------------------------------- table
def fmt_ms(ms) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def fmt_ratio(value) -> str:
    return "-" if value is None else "inf" if math.isinf(value) else f"{value:.2f}"


def fmt_error_ratios(ratios: dict | None, mode: str) -> str:
    if not ratios or mode not in ratios:
        return "-"
    return f"{fmt_ratio(ratios[mode]['output'])}/{fmt_ratio(ratios[mode]['grads'])}"


@dataclass
class Column:
    group: str  # "" for the point's own columns, else an implementation name
    header: str
    width: int
    value: callable  # row record -> text


def impl_entry(row: dict, name: str) -> dict:
    return next(r for r in row["results"] if r["impl"] == name)


def table_columns(env: dict, device: torch.device) -> list[Column]:
    baseline_label = "cuDNN" if device.type == "cuda" else BASELINE
    memory, accuracy = env["memory"], env["accuracy"]
    two_tf32_modes = device.type == "cuda" and "float32" in env["dtypes"]
    columns = [
        Column("", "cell", 4, lambda r: r["cell"]),
        Column("", "dtype", 8, lambda r: r["dtype"]),
        Column("", "B", 4, lambda r: str(r["B"])),
        Column("", "H", 5, lambda r: str(r["H"])),
        Column("", f"{baseline_label} ms", 8, lambda r: baseline_cell(r, "fwd_bwd_ms", fmt_ms)),
    ]
    if memory:
        columns.append(Column("", f"{baseline_label} MB", 8, lambda r: baseline_cell(r, "peak_mb", fmt_mb)))
    for name, _ in impl_names(device, env["cuda_paths"] or []):
        if name == BASELINE:
            continue

        def field_of(key, fmt, name=name):
            return lambda r: impl_cell(r, name, key, fmt)

        columns += [
            Column(name, "ms", 7, field_of("fwd_bwd_ms", fmt_ms)),
            Column(name, "speedup", 7, field_of("speedup", fmt_ratio)),
            Column(name, "fwd", 5, field_of("fwd_speedup", fmt_ratio)),
        ]
        if memory:
            columns.append(Column(name, "mem", 5, field_of("peak_memory_ratio", fmt_ratio)))
        if accuracy:
            columns.append(Column(name, "err", 9, lambda r, name=name: error_cell(r, name)))
            if two_tf32_modes:
                columns.append(Column(name, "err tf32 off", 12,
                                      lambda r, name=name: impl_cell(r, name, "error_ratios",
                                                                     lambda e: fmt_error_ratios(e, "tf32 off"))))
    return columns


def fmt_mb(mb) -> str:
    return "-" if mb is None else f"{mb:.1f}"


def baseline_cell(row: dict, key: str, fmt) -> str:
    entry = impl_entry(row, BASELINE)
    if entry["status"] != "ok":
        return "error" if key == "fwd_bwd_ms" else "-"
    return fmt(entry[key])


def impl_cell(row: dict, name: str, key: str, fmt) -> str:
    """The implementation's value; a failed one shows "error" in its time column (the message
    is listed after the table), "-" elsewhere."""
    entry = impl_entry(row, name)
    if entry["status"] != "ok":
        return "error" if key == "fwd_bwd_ms" else "-"
    return fmt(entry.get(key))


def error_cell(row: dict, name: str) -> str:
    """The first accuracy mode of the row: "tf32 on" for float32 on a GPU, else "default"."""
    entry = impl_entry(row, name)
    if entry["status"] != "ok":
        return "-"
    ratios = entry.get("error_ratios") or {}
    mode = "tf32 on" if "tf32 on" in ratios else "default"
    return fmt_error_ratios(ratios, mode)


def column_widths(columns: list[Column]) -> list[int]:
    return [max(c.width, len(c.header)) for c in columns]


def align(column: Column, width: int, text: str) -> str:
    return text.ljust(width) if column.header in ("cell", "dtype") else text.rjust(width)


def text_header(columns: list[Column]) -> str:
    """Two lines of headers (the implementation over its columns, then the column names) and a rule."""
    widths = column_widths(columns)
    group_line, position = "", 0
    for i, (col, width) in enumerate(zip(columns, widths)):
        if col.group and (i == 0 or columns[i - 1].group != col.group):
            span = sum(w + 2 for c, w in zip(columns[i:], widths[i:]) if c.group == col.group) - 2
            group_line = group_line.ljust(position) + f" {col.group} ".center(span, "-")
        position += width + 2
    names = "  ".join(align(c, w, c.header) for c, w in zip(columns, widths))
    return group_line + "\n" + names + "\n" + "-" * len(names)


def text_row(columns: list[Column], row: dict) -> str:
    return "  ".join(align(c, w, c.value(row)) for c, w in zip(columns, column_widths(columns)))


def markdown_table(columns: list[Column], rows: list[dict]) -> str:
    headers = [f"{c.group} {c.header}" if c.group else c.header for c in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(c.value(r) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def markdown_error_table(rows: list[dict], impl_list: list[str]) -> str:
    """Every implementation's relative error (output / gradients) against float64, per point and mode."""
    lines = ["| cell | dtype | B | H | mode | " + " | ".join(f"{n} output / grads" for n in impl_list) + " |",
             "|" + "|".join("---" for _ in range(5 + len(impl_list))) + "|"]
    for row in rows:
        modes = []
        for entry in row["results"]:
            modes += [m for m in entry["rel_errors"] if m not in modes]
        for mode in modes:
            cells = []
            for name in impl_list:
                errs = impl_entry(row, name)["rel_errors"].get(mode)
                cells.append(f"{errs['output']:.2e} / {errs['grads']:.2e}" if errs else "-")
            lines.append(f"| {row['cell']} | {row['dtype']} | {row['B']} | {row['H']} | {mode} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- summary
def geometric_mean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarize_path(name: str, rows: list[dict], env: dict) -> dict:
    entries = [(row["label"], impl_entry(row, name)) for row in rows]
    ok = [(label, e) for label, e in entries if e["status"] == "ok" and e.get("speedup") is not None]
    speedups = [(e["speedup"], label) for label, e in ok]
    fwd_speedups = [e["fwd_speedup"] for _, e in ok if e.get("fwd_speedup") is not None]
    memory = [(e["peak_memory_ratio"], label) for label, e in ok if e.get("peak_memory_ratio") is not None]
    worst_error = None
    for label, e in ok:
        for mode, ratios in (e.get("error_ratios") or {}).items():
            for what, value in ratios.items():
                if value is not None and (worst_error is None or value > worst_error[0]):
                    worst_error = (value, f"{label}, {what}" + ("" if mode == "default" else f", {mode}"))
    minimum = min(speedups) if speedups else None
    return dict(
        impl=name, points=len(entries), points_ok=len(ok),
        failed=[(label, e["status"]) for label, e in entries if e["status"] != "ok"],
        speedup_geomean=geometric_mean([s for s, _ in speedups]),
        speedup_min=minimum[0] if minimum else None, speedup_min_point=minimum[1] if minimum else None,
        points_below_1=[label for s, label in speedups if s < TARGET_MIN_SPEEDUP],
        fwd_speedup_geomean=geometric_mean(fwd_speedups),
        memory_measured=len(memory), points_memory_above_baseline=[label for m, label in memory if m > 1.0],
        worst_error_ratio=worst_error[0] if worst_error else None,
        worst_error_point=worst_error[1] if worst_error else None,
        error_measured=env["accuracy"],
    )


def target_lines(s: dict, baseline_label: str) -> list[tuple[str, str]]:
    """(target, verdict) pairs; verdict starts with "met", "NOT met" or "not measured"."""

    def verdict(measured: bool, met: bool, detail: str) -> str:
        if not measured:
            return "not measured"
        return ("met" if met else "NOT met") + (f" ({detail})" if detail else "")

    has_speed = s["speedup_geomean"] is not None
    below = s["points_below_1"]
    above = s["points_memory_above_baseline"]
    lines = [
        (f"fwd+bwd geometric mean >= {TARGET_SPEEDUP_GEOMEAN}",
         verdict(has_speed, has_speed and s["speedup_geomean"] >= TARGET_SPEEDUP_GEOMEAN,
                 fmt_ratio(s["speedup_geomean"]))),
        (f"no point below {TARGET_MIN_SPEEDUP}",
         verdict(has_speed, not below, f"{len(below)} below: {'; '.join(below)}" if below else "")),
        (f"forward-only geometric mean >= {TARGET_FWD_SPEEDUP_GEOMEAN}",
         verdict(s["fwd_speedup_geomean"] is not None,
                 s["fwd_speedup_geomean"] is not None and s["fwd_speedup_geomean"] >= TARGET_FWD_SPEEDUP_GEOMEAN,
                 fmt_ratio(s["fwd_speedup_geomean"]))),
        (f"peak memory <= {baseline_label}'s at every point",
         verdict(s["memory_measured"] > 0, not above and s["memory_measured"] == s["points_ok"],
                 f"above at: {'; '.join(above)}" if above else
                 "" if s["memory_measured"] == s["points_ok"] else f"measured at {s['memory_measured']} points")),
        (f"error ratio <= {TARGET_MAX_ERROR_RATIO:g}",
         verdict(s["error_measured"] and s["worst_error_ratio"] is not None,
                 s["worst_error_ratio"] is not None and s["worst_error_ratio"] <= TARGET_MAX_ERROR_RATIO,
                 fmt_ratio(s["worst_error_ratio"]))),
        ("every point ran", verdict(True, not s["failed"], f"{len(s['failed'])} failed" if s["failed"] else "")),
    ]
    return lines


def summary_text(s: dict, baseline_label: str) -> str:
    n_ok, n = s["points_ok"], s["points"]
    lines = [f"{s['impl']} against {baseline_label}, {n_ok} of {n} points measured:"]
    if s["speedup_geomean"] is not None:
        lines.append(f"  fwd+bwd speedup ({baseline_label} time / tbptt_ext time): geometric mean "
                     f"{fmt_ratio(s['speedup_geomean'])}, minimum {fmt_ratio(s['speedup_min'])} "
                     f"({s['speedup_min_point']})")
        lines.append(f"  forward-only speedup: geometric mean {fmt_ratio(s['fwd_speedup_geomean'])}")
    if s["memory_measured"]:
        lines.append(f"  peak memory above {baseline_label}'s at {len(s['points_memory_above_baseline'])} "
                     f"of {s['memory_measured']} points")
    else:
        lines.append("  peak memory: not measured (GPU only)" if baseline_label != "cuDNN"
                     else "  peak memory: not measured")
    if s["worst_error_ratio"] is not None:
        lines.append(f"  worst error ratio (tbptt_ext error / {baseline_label} error, against float64): "
                     f"{fmt_ratio(s['worst_error_ratio'])} ({s['worst_error_point']})")
    else:
        lines.append("  error ratio: not measured")
    lines.append("  targets:")
    width = max(len(t) for t, _ in target_lines(s, baseline_label))
    lines += [f"    {target.ljust(width)}  {verdict}" for target, verdict in target_lines(s, baseline_label)]
    return "\n".join(lines)


# ---------------------------------------------------------------- main
def header_text(env: dict) -> str:
    cuda = env["device"].startswith("cuda")
    measured = ["fwd+bwd and forward-only time"]
    measured += ["peak memory"] if env["memory"] else []
    measured += ["accuracy against float64"] if env["accuracy"] else []
    lines = [
        f"tbptt_ext vs torch.nn ({'cuDNN' if cuda else 'CPU'}): one truncated-BPTT chunk",
        f"device   {env['device_name']}",
        f"torch    {env['torch']}, CUDA {env['cuda'] or 'none'}, cuDNN {env['cudnn'] or 'none'}; "
        f"tbptt_ext {env['tbptt_ext']}",
        f"date     {env['date']}",
        f"chunk    k={env['k']} steps, I=H, one layer, time-major",
        f"measured {', '.join(measured)}",
        f"timing   median of {env['repeats']} after {env['warmup']} warm-up runs ({env['timer']}), "
        "implementations interleaved round by round",
    ]
    if env["cuda_paths"]:
        lines.append(f"paths    {CUDA_PATH_ENV} = {', '.join(env['cuda_paths'])} (one tbptt_ext column each)")
    baseline = "cuDNN" if cuda else BASELINE
    lines.append(f"speedup  fwd+bwd {baseline} time / tbptt_ext time (> 1: tbptt_ext faster); "
                 "fwd: the same, forward only")
    if env["memory"]:
        lines.append(f"mem      peak memory of one fwd+bwd, tbptt_ext / {baseline}; {baseline} MB: {baseline}'s")
    if env["accuracy"]:
        lines.append(f"err      relative error against float64, tbptt_ext / {baseline}, output/gradients"
                     + ("; float32 with cudnn.allow_tf32 on (torch's default), and off" if cuda else ""))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    env = environment(args, device)
    baseline_label = "cuDNN" if device.type == "cuda" else BASELINE
    columns = table_columns(env, device)
    print(header_text(env))
    print()
    print(text_header(columns), flush=True)

    saved_path = os.environ.get(CUDA_PATH_ENV)
    rows = []
    try:
        for cell in args.cells:
            for dtype_name in args.dtypes:
                for B, H in args.shapes:
                    row = run_point(Point(cell, dtype_name, B, H, args.k), args, device)
                    rows.append(row)
                    print(text_row(columns, row), flush=True)
    finally:
        if saved_path is None:
            os.environ.pop(CUDA_PATH_ENV, None)
        else:
            os.environ[CUDA_PATH_ENV] = saved_path

    failures = [(row["label"], e["impl"], e["status"]) for row in rows for e in row["results"] if e["status"] != "ok"]
    if failures:
        print("\nfailed:")
        for label, impl, status in failures:
            print(f"  {label}, {impl}: {status}")
    tbptt_names = [name for name, _ in impl_names(device, args.paths) if name != BASELINE]
    summaries = [summarize_path(name, rows, env) for name in tbptt_names]
    for s in summaries:
        print()
        print(summary_text(s, baseline_label))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(dict(environment=env, rows=rows, summary=summaries), indent=1))
    markdown = [
        "# tbptt_ext vs torch.nn, one TBPTT chunk", "",
        "```", header_text(env), "```", "",
        markdown_table(columns, rows), "",
    ]
    if env["accuracy"]:
        markdown += ["## Relative errors against float64 (output / gradients)", "",
                     markdown_error_table(rows, [BASELINE] + tbptt_names), ""]
    markdown += ["## Summary", ""] + ["```\n" + summary_text(s, baseline_label) + "\n```\n" for s in summaries]
    if failures:
        markdown += ["## Failures", ""] + [f"- {label}, {impl}: {status}" for label, impl, status in failures]
    (out / "results.md").write_text("\n".join(markdown) + "\n")
    print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":
    main()
