#!/usr/bin/env bash
# What a session with a lent GPU runs, from the repository root, in stages with their
# own time limits; logs and results go to $OUT (default /tmp/tbptt_gpu).
#
# One device command may run 600 s and a session has about 15 device-minutes in all
# (machine start included), and a machine left idle goes back after ~30 s, so a second
# call starts bare and builds again (~50 s). The default (build, smoke, tests) fits one
# call; run sanitize and bench_cuda as calls of their own, each with build first:
#   bash benchmarks/gpu_session.sh                                   # build smoke tests (560 s at most)
#   STAGES="build sanitize" bash benchmarks/gpu_session.sh           # compute-sanitizer (570 s at most)
#   STAGES="build bench_cuda" bash benchmarks/gpu_session.sh         # the issue-10 table (580 s at most)
#   STAGES="build smoke" PATHS="throughput" bash benchmarks/gpu_session.sh
# STAGES=all runs everything but bench_loop in one call: for one or two paths (PATHS=...)
# it fits a 600-s command, for all four it does not.
# Stages (STAGES, spaces or commas, run in this order):
#   build       editable build from source
#   smoke       each path in PATHS on its own against the float64 reference, stopping at
#               its first failure; the later stages run only the paths that passed
#   tests       tests/test_cuda.py on those paths
#   sanitize    compute-sanitizer memcheck, racecheck, synccheck over every kernel
#   bench_cuda  benchmarks/bench_cuda.py: every path against cuDNN on issue 10's grid
#   bench_loop  benchmarks/run.py: the TBPTT loop against torch.nn
# QUICK=1: small grids in the benchmarks.
set -uo pipefail
OUT="${OUT:-/tmp/tbptt_gpu}"
mkdir -p "$OUT"
# OMP_NUM_THREADS: the tests' CPU float64 references run in several processes at once
# (smoke paths in parallel, pytest-xdist); with all 16 threads each they oversubscribed
# the cores and four smoke runs overran 75 s on an H200 machine (2026-11-27).
export MAX_JOBS="${MAX_JOBS:-16}" TBPTT_EXT_BUILD_CUDA=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
STAGES=" $(echo "${STAGES:-build smoke tests}" | tr ',' ' ') "
STAGES="${STAGES/ all / build smoke tests sanitize bench_cuda }"
read -r -a PATH_LIST <<< "$(echo "${PATHS:-auto persistent latency throughput stepwise}" | tr ',' ' ')"
want() { [[ "$STAGES" == *" $1 "* ]]; }
# The device tool brings back at most 8 files from $OUT: more are packed into one archive
# when the script ends (a run killed from outside leaves them as they are).
pack_logs() {
  if [ "$(find "$OUT" -type f | wc -l)" -gt 8 ]; then
    tar -czf /tmp/tbptt_gpu_logs.tar.gz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/tbptt_gpu_logs.tar.gz "$OUT/logs.tar.gz"
  fi
}
trap pack_logs EXIT
for stage in $STAGES; do
  case "$stage" in build|smoke|tests|sanitize|bench_cuda|bench_loop) ;; *) echo "unknown stage '$stage'"; exit 2;; esac
done
# pytest-timeout, where installed, names a test that hangs (e.g. at a barrier).
PYTEST_TIMEOUT=()
python3 -c "import pytest_timeout" 2>/dev/null && PYTEST_TIMEOUT=(--timeout 90 --timeout-method=thread)
limit() { timeout -s INT -k 20 "$@"; }  # SIGINT first: pytest still prints its summary

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

if want build; then
  echo "== build (editable, so that the repository's tbptt_ext imports with its _C from any directory)"
  limit 180 python3 -m pip install --no-build-isolation -e . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  python3 -c "import tbptt_ext; print('compiled backends:', sorted(tbptt_ext.compiled_backends()))"
fi

if want smoke; then
  echo "== smoke: each path against the float64 reference (float32), in parallel, each stopping at its first failure"
  for path in "${PATH_LIST[@]}"; do
    (TBPTT_EXT_TEST_CUDA_PATHS="$path" limit 90 python3 -m pytest -q -x "${PYTEST_TIMEOUT[@]}" tests/test_cuda.py \
       -k "test_ops_match_float64_reference and float32" > "$OUT/smoke_$path.log" 2>&1; echo "exit $?" >> "$OUT/smoke_$path.log") &
  done
  wait
  passed=()
  for path in "${PATH_LIST[@]}"; do
    status=$(tail -1 "$OUT/smoke_$path.log")
    echo "$path: $([ "$status" = "exit 0" ] && echo passed || echo "FAILED ($status)") - $(tail -2 "$OUT/smoke_$path.log" | head -1)"
    [ "$status" = "exit 0" ] && passed+=("$path")
  done
  [ ${#passed[@]} = 0 ] && { echo "no path passed the smoke test"; exit 1; }
  PATH_LIST=("${passed[@]}")
fi
PATHS_CSV="$(IFS=,; echo "${PATH_LIST[*]}")"
export TBPTT_EXT_TEST_CUDA_PATHS="$PATHS_CSV"

if want tests; then
  echo "== GPU tests on $PATHS_CSV"
  # pytest-xdist, where installed: all five paths took 42 s with -n 10 on an H200 machine
  XDIST=(); python3 -c "import xdist" 2>/dev/null && XDIST=(-n 10)
  limit 200 python3 -m pytest -q "${XDIST[@]}" "${PYTEST_TIMEOUT[@]}" tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" | tail -25
fi

if want sanitize; then
  echo "== compute-sanitizer on $PATHS_CSV"
  # memcheck over everything; racecheck and synccheck only on our kernels (unfiltered,
  # racecheck reported hazards inside cuBLAS's own nvjet GEMM kernels and ran past 200 s),
  # forward and backward kernels in two runs. All five runs at once, each in its own limit.
  runs=("memcheck:" "racecheck:_forward_kernel" "racecheck:_backward_kernel" "synccheck:_forward_kernel"
        "synccheck:_backward_kernel")
  for run in "${runs[@]}"; do
    tool=${run%%:*}; kernels=${run#*:}; filter=(); [ -n "$kernels" ] && filter=(--kernel-name "kns=$kernels")
    (cd tests && limit 170 compute-sanitizer --tool "$tool" "${filter[@]}" --error-exitcode 9 python3 cuda_sanitize.py) \
      > "$OUT/sanitize_$tool$kernels.log" 2>&1 &
  done
  wait
  for run in "${runs[@]}"; do
    tool=${run%%:*}; kernels=${run#*:}; log="$OUT/sanitize_$tool$kernels.log"
    if grep -q "Device not supported" "$log"; then
      echo "$tool $kernels: compute-sanitizer does not support this device here (not a kernel error)"
    else
      echo "$tool $kernels: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|SYNCCHECK SUMMARY|Internal Sanitizer Error' "$log" | tail -2 | tr '\n' ' ')"
    fi
  done
fi

if want bench_cuda; then
  echo "== CUDA paths against cuDNN: the issue-10 grid (forward + backward and forward alone, memory, accuracy)"
  if [ -n "${QUICK:-}" ]; then grid=(--shapes 8x256,128x1024 --repeats 10); else grid=(--repeats 20); fi
  limit 400 python3 benchmarks/bench_cuda.py --device cuda --paths "$PATHS_CSV" "${grid[@]}" \
    --out "$OUT/bench_cuda" 2>&1 | tail -70
fi

if want bench_loop; then
  echo "== benchmark (TBPTT loop)"
  if [ -n "${QUICK:-}" ]; then
    limit 300 python3 benchmarks/run.py --device cuda --batch 1,8,32,128 --hidden 256 --repeats 10 \
      --out "$OUT/bench" 2>&1 | tail -40
  else
    limit 420 python3 benchmarks/run.py --device cuda --out "$OUT/bench" 2>&1 | tail -80
  fi
fi
