"""Smoke tests of the benchmark scripts on a tiny grid (they are not timed tests)."""

import json
import math
import pathlib
import subprocess
import sys

import pytest
import torch

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def test_run_quick_tiny_grid_writes_results(tmp_path):
    pytest.importorskip("matplotlib")
    cmd = [sys.executable, str(BENCH / "run.py"), "--quick", "--cells", "LSTM,GRU", "--batch", "2",
           "--hidden", "16", "--k", "8", "--repeats", "2", "--warmup", "1", "--out", str(tmp_path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    assert "speedup vs torch.nn" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["environment"]["torch"]
    impls = {r["impl"] for r in data["grid"]}
    assert {"torch.nn", "cell loop", "tbptt_ext", "tbptt_ext ref"} <= impls
    ok = [r for r in data["grid"] if r["status"] == "ok"]
    assert all(r["seconds_per_chunk"] > 0 and r["peak_bytes"] > 0 for r in ok)
    # TBPTT memory is flat in T, full BPTT grows. Flat within 2 %: an allocation of a few
    # KB can land at another point of the run (CI once saw 2 KB), while keeping even one
    # carried state (B x H floats) per chunk would add far more over the extra chunks.
    mem = {(r["impl"], r["mode"], r["T"]): r["peak_bytes"] for r in data["memory_vs_T"]}
    Ts = sorted({r["T"] for r in data["memory_vs_T"]})
    first, last = mem[("tbptt_ext", "TBPTT", Ts[0])], mem[("tbptt_ext", "TBPTT", Ts[-1])]
    state_bytes = data["memory_vs_T"][0]["B"] * data["memory_vs_T"][0]["H"] * 4
    assert abs(last - first) <= 0.02 * first < (Ts[-1] - Ts[0]) // 8 * state_bytes, (first, last)
    assert mem[("tbptt_ext", "full BPTT", Ts[-1])] > 2 * mem[("tbptt_ext", "full BPTT", Ts[0])]
    for name in ["results.csv", "results.md", "speedup_LSTM_float32.png", "speedup_GRU_float32.png",
                 "memory_vs_T.png", "k_sweep.png"]:
        assert (tmp_path / name).stat().st_size > 0, name


def test_bench_cpu_quick():
    out = subprocess.run([sys.executable, str(BENCH / "bench_cpu.py"), "--quick"], check=True,
                         capture_output=True, text=True).stdout
    assert "geometric-mean speedup" in out


def test_bench_features_quick():
    out = subprocess.run([sys.executable, str(BENCH / "bench_features.py"), "--quick"], check=True,
                         capture_output=True, text=True).stdout
    assert "Reset masks" in out and "geometric-mean overhead of the record" in out


def test_bench_main_job_runs():
    out = subprocess.run([sys.executable, str(BENCH / "bench_main_job.py"), "--repeats", "4", "--warmup", "0",
                          "--batch", "4", "--bptt", "8", "--hidden", "16", "--embed", "8"],
                         check=True, capture_output=True, text=True).stdout
    assert "speedup (torch.nn time / tbptt_ext time)" in out and "by means (the throughput of a run)" in out
    assert "update by update" in out and "middle half" in out


def test_time_interleaved_alternates_the_order():
    sys.path.insert(0, str(BENCH))
    try:
        from bench_cpu import time_interleaved
    finally:
        sys.path.remove(str(BENCH))
    calls = []

    class Runner:
        def __init__(self, name):
            self.name = name

        def step(self):
            calls.append(self.name)

    medians, times = time_interleaved([Runner("a"), Runner("b")], repeats=4, warmup=1, raw=True)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(medians) == 2 and all(len(t) == 4 for t in times)


def test_bench_cuda_runs_on_cpu_tiny_grid(tmp_path):
    cmd = [sys.executable, str(BENCH / "bench_cuda.py"), "--device", "cpu", "--cells", "LSTM,GRU", "--shapes", "2x16",
           "--dtypes", "float32", "--k", "4", "--repeats", "2", "--warmup", "1", "--out", str(tmp_path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    assert "fwd+bwd speedup (torch.nn time / tbptt_ext time): geometric mean" in out
    assert "forward-only speedup: geometric mean" in out and "error ratio <= 2" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["environment"]["torch"] and data["environment"]["device"] == "cpu"
    assert sorted(row["cell"] for row in data["rows"]) == ["GRU", "LSTM"]
    for row in data["rows"]:
        assert [r["impl"] for r in row["results"]] == ["torch.nn", "tbptt_ext"]
        for r in row["results"]:
            assert r["status"] == "ok", r["status"]
            assert r["fwd_bwd_ms"] > 0 and r["fwd_ms"] > 0 and len(r["fwd_bwd_ms_all"]) == 2
            errors = r["rel_errors"]["default"]
            assert all(math.isfinite(errors[what]) and errors[what] < 1e-3 for what in ("output", "grads"))
        tbptt = row["results"][1]
        assert tbptt["speedup"] > 0 and tbptt["fwd_speedup"] > 0
        assert all(math.isfinite(v) for v in tbptt["error_ratios"]["default"].values())
    assert (tmp_path / "results.md").stat().st_size > 0


def test_cuda_memory_probe_replays_the_allocator_trace_to_its_peak():
    """benchmarks/cuda_memory_probe.py's replay (the GPU part needs a GPU): blocks alive when
    the allocated bytes peak, freed blocks left out, a free of an unknown block ignored."""
    sys.path.insert(0, str(BENCH))
    from cuda_memory_probe import describe_frames, peak_live_blocks

    mib = 2**20
    events = [
        dict(action="alloc", addr=1, size=4 * mib, frames=[dict(name="at::native::mm", filename="??", line=0)]),
        dict(action="alloc", addr=2, size=10 * mib),
        dict(action="free_requested", addr=1, size=4 * mib),
        dict(action="free_completed", addr=1, size=4 * mib),  # the same free again: no effect
        dict(action="alloc", addr=3, size=3 * mib),  # 13 MiB: below the first peak of 14 MiB
        dict(action="segment_alloc", addr=9, size=64 * mib),  # not a block: ignored
        dict(action="free_requested", addr=42, size=1),  # never allocated during the trace: ignored
        dict(action="alloc", addr=4, size=2 * mib),  # 15 MiB: the peak
        dict(action="free_requested", addr=2, size=10 * mib),
    ]
    peak, blocks = peak_live_blocks(events)
    assert peak == 15 * mib
    assert [b["addr"] for b in blocks] == [2, 3, 4]
    assert peak_live_blocks([]) == (0, [])
    # innermost first, as the allocator records them
    frames = [dict(name="at::native::empty_cuda(c10::ArrayRef<long>)", filename="??", line=0),
              dict(name="at::_ops::empty_memory_format::redispatch(x)", filename="??", line=0),
              dict(name="at::_ops::empty_memory_format::call(x)", filename="??", line=0),
              dict(name="tbptt::chunk_forward<tbptt::LSTMCell>(x)", filename="??", line=0),
              dict(name="tbptt::ChunkOps<tbptt::cuda::CudaBackend>::lstm_forward(y)", filename="??", line=0),
              dict(name="at::_ops::lstm_chunk_forward::call(z)", filename="??", line=0),
              dict(name="apply", filename="/x/site-packages/torch/autograd/function.py", line=9),
              dict(name="forward", filename="/w/tbptt_ext/functions.py", line=64),
              dict(name="forward", filename="/w/tbptt_ext/modules.py", line=230),
              dict(name="forward_backward", filename="/w/benchmarks/bench_cuda.py", line=246),
              dict(name="PyEval", filename="??", line=0)]
    assert describe_frames(frames) == ("at::_ops::empty_memory_format <- at::_ops::lstm_chunk_forward <- "
                                       "tbptt::chunk_forward<tbptt::LSTMCell> <- functions.py:64 forward <- "
                                       "modules.py:230 forward")
    torch_only = [dict(name="f", filename="/x/site-packages/torch/nn/modules/module.py", line=3)]
    assert describe_frames(torch_only) == "module.py:3 f"
    assert describe_frames([]) == "(no frame recorded)"


def test_cuda_profile_runs_on_cpu_and_sums_busy_intervals():
    """benchmarks/cuda_profile.py on the CPU (no GPU columns): a table per implementation;
    and its GPU-busy measure, the length of a union of intervals."""
    cmd = [sys.executable, str(BENCH / "cuda_profile.py"), "--device", "cpu", "--points", "LSTM:float32:2x8",
           "--k", "3", "--iters", "2", "--top", "3"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    assert "=== LSTM float32 B=2 H=8" in out
    assert "torch.nn: wall" in out and "tbptt_ext: wall" in out and "host event (self CPU time)" in out
    assert "lstm_chunk_forward" in out or "lstm_chunk_backward" in out or "LSTMChunk" in out
    sys.path.insert(0, str(BENCH))
    try:
        import cuda_profile
    finally:
        sys.path.remove(str(BENCH))
    assert cuda_profile.busy_ms([(0, 10), (5, 20), (30, 40), (35, 38)]) == pytest.approx(0.030)
    assert cuda_profile.busy_ms([]) == 0
    no_gpu = subprocess.run([sys.executable, str(BENCH / "cuda_profile.py"), "--device", "cuda"],
                            capture_output=True, text=True)
    if not torch.cuda.is_available():
        assert no_gpu.returncode != 0 and "cuda_profile.py: --device cuda" in no_gpu.stderr
