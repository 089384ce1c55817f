#!/usr/bin/env bash
# What a session with a lent GPU runs, from the repository root, in stages with their
# own time limits; logs and results go to $OUT (default /tmp/tbptt_gpu).
#
# One device command may run 600 s and a session has about 15 device-minutes in all
# (machine start included: room for two or three calls), and a machine left idle goes
# back after ~30 s, so a second call starts bare and builds again (~55 s on an H200
# machine). Measured there (2026-11-27): build 54 s, smoke of five paths in parallel
# < 90 s, tests on five paths under pytest-xdist 42 s. Every stage's time limit is also
# cut to one deadline, BUDGET_S seconds after the start (default 560), so that a call
# always ends by itself, its summaries printed and its logs packed; a stage reached with
# under 10 s left is skipped (exit 125). Calls, each with build first:
#   bash benchmarks/gpu_session.sh                                   # build smoke tests (about 3 min)
#   STAGES="build memory race_probe" bash benchmarks/gpu_session.sh  # the memory and racecheck questions
#   STAGES="build sanitize" bash benchmarks/gpu_session.sh           # compute-sanitizer
#   STAGES="build bench_cuda" bash benchmarks/gpu_session.sh         # the issue-10 table
#   STAGES="build smoke" PATHS="throughput" bash benchmarks/gpu_session.sh
# STAGES=all (build smoke tests sanitize bench_cuda) needs more than one call's deadline.
# Stages (STAGES, spaces or commas, run in this order):
#   build       editable build from source
#   smoke       each path in PATHS against the float64 reference, all paths at once, each
#               stopping at its first failure; the later stages run only the paths that passed
#   tests       tests/test_cuda.py on those paths
#   sanitize    compute-sanitizer over tests/cuda_sanitize.py (not `auto`, which only runs
#               the other paths' kernels): memcheck over every kernel and synccheck on ours
#               together, then racecheck alone on ours, forward and backward kernels in turn
#   memory      benchmarks/cuda_memory_probe.py: the blocks alive at the peak of one chunk
#               (LSTM and GRU bf16 B=512 H=256, cuDNN and tbptt_ext)
#   race_probe  racecheck on the configurations where it stopped: first with no kernel
#               instrumented (a failure there is the tool's: the other filters are skipped),
#               then on our forward and on our backward kernels; then on ours (filter tbptt)
#               in float64 on each path, where no cuBLAS Hopper GEMM kernel runs (on an
#               H200 racecheck failed inside those whatever was instrumented, 2026-11-27)
#   profile     benchmarks/cuda_profile.py: kernel by kernel and host against GPU time of one
#               chunk, cuDNN and tbptt_ext (PROFILE_POINTS: CELL:DTYPE:BxH list; paths: BENCH_PATHS)
#   bench_cuda  benchmarks/bench_cuda.py: every path against cuDNN on issue 10's grid
#   bench_loop  benchmarks/run.py: the TBPTT loop against torch.nn
# QUICK=1: small grids in the benchmarks. BENCH_SHAPES (BxH list) and BENCH_PATHS narrow
# bench_cuda to those shapes (20 repeats) and paths (default: those that passed).
set -uo pipefail
OUT="${OUT:-/tmp/tbptt_gpu}"
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: sanitize_run writes to it from tests/
# One deadline for the whole script, inside the device tool's 600-s command limit, so that
# it always ends by itself (summaries printed, logs packed) instead of being killed.
DEADLINE=$(( SECONDS + ${BUDGET_S:-560} ))
# OMP_NUM_THREADS: the tests' CPU float64 references run in several processes at once
# (smoke paths in parallel, pytest-xdist); with all 16 threads each they oversubscribed
# the cores and four smoke runs overran 75 s on an H200 machine (2026-11-27).
export MAX_JOBS="${MAX_JOBS:-16}" TBPTT_EXT_BUILD_CUDA=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
STAGES=" $(echo "${STAGES:-build smoke tests}" | tr ',' ' ') "
STAGES="${STAGES/ all / build smoke tests sanitize bench_cuda }"
for stage in $STAGES; do
  case "$stage" in build|smoke|tests|sanitize|race_probe|memory|profile|bench_cuda|bench_loop) ;; *) echo "unknown stage '$stage'"; exit 2;; esac
done
read -r -a PATH_LIST <<< "$(echo "${PATHS:-auto persistent latency throughput stepwise}" | tr ',' ' ')"
want() { [[ "$STAGES" == *" $1 "* ]]; }
# The device tool brings back at most 8 files from $OUT: when the script ends, the files
# it wrote there are packed into one archive if they are more (a run killed from outside
# leaves them as they are). Only files this run created are packed and removed.
STARTED_AT=$(mktemp)
pack_logs() {
  local list archive
  list=$(mktemp); archive=$(mktemp --suffix=.tar.gz)
  find "$OUT" -type f -newer "$STARTED_AT" ! -name logs.tar.gz -printf '%P\n' > "$list"
  if [ "$(wc -l < "$list")" -gt 8 ]; then
    tar -czf "$archive" -C "$OUT" -T "$list" && (cd "$OUT" && xargs -d '\n' rm -f < "$list") && mv "$archive" "$OUT/logs.tar.gz"
  fi
  rm -f "$list" "$archive" "$STARTED_AT"
}
trap pack_logs EXIT
# pytest-timeout, where installed, names a test that hangs (e.g. at a barrier).
PYTEST_TIMEOUT=()
python3 -c "import pytest_timeout" 2>/dev/null && PYTEST_TIMEOUT=(--timeout 90 --timeout-method=thread)
# limit SECONDS CMD...: SIGINT first (pytest still prints its summary), SIGKILL 20 s later;
# never past DEADLINE (less the 20-s grace); exit 125 without running when under 10 s remain.
limit() {
  local s=$1 left=$(( DEADLINE - SECONDS - 20 )); shift
  (( left < s )) && s=$left
  (( s < 10 )) && { echo "skipped, ${left}s left before the deadline: $*"; return 125; }
  timeout -s INT -k 20 "$s" "$@"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

if want build; then
  echo "== build (editable, so that the repository's tbptt_ext imports with its _C from any directory)"
  limit 180 python3 -m pip install --no-build-isolation -e . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  python3 -c "import sys, torch, tbptt_ext; b = sorted(tbptt_ext.compiled_backends()); print('compiled backends:', b, 'cuda available:', torch.cuda.is_available()); sys.exit(not (torch.cuda.is_available() and 'cuda' in b))" \
    || { echo "no usable CUDA backend: every GPU test would be skipped"; exit 1; }
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

sanitize_run() {  # tool, kernel-name filter (empty: every kernel), log file, seconds
  local filter=(); [ -n "$2" ] && filter=(--kernel-name "kns=$2")
  (cd tests && limit "$4" compute-sanitizer --tool "$1" "${filter[@]}" --error-exitcode 9 \
     python3 cuda_sanitize.py > "$3" 2>&1; echo "exit $?" >> "$3")
}
sanitize_report() {  # tool, filter, log file
  if grep -q "Device not supported" "$3"; then
    echo "$1 $2: compute-sanitizer does not support this device here (not a kernel error)"
  else
    local ran; ran=$(grep -q "ran every kernel" "$3" && echo "every kernel ran" || echo "did NOT finish")
    echo "$1 $2: $(tail -1 "$3"), $ran; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|SYNCCHECK SUMMARY|Internal Sanitizer Error' "$3" | tail -2 | tr '\n' ' ')"
  fi
}
SANITIZE_PATHS=$(echo "$PATHS_CSV" | tr ',' '\n' | grep -vx auto | paste -sd, -)
if want sanitize && [ -z "$SANITIZE_PATHS" ]; then
  echo "== compute-sanitizer: skipped, no path but auto passed"
elif want sanitize; then
  echo "== compute-sanitizer on $SANITIZE_PATHS"
  export TBPTT_EXT_TEST_CUDA_PATHS="$SANITIZE_PATHS"
  # memcheck over every kernel (cuBLAS's too) and synccheck on ours (kernel names in
  # namespace tbptt), at once; then racecheck
  # alone on ours (unfiltered it reported hazards inside cuBLAS's own nvjet GEMM kernels
  # and ran past 200 s), forward and backward kernels in turn.
  sanitize_run memcheck "" "$OUT/sanitize_memcheck.log" 200 &
  sanitize_run synccheck tbptt "$OUT/sanitize_synccheck.log" 200 &
  wait
  sanitize_run racecheck _forward_kernel "$OUT/sanitize_racecheck_forward.log" 150
  sanitize_run racecheck _backward_kernel "$OUT/sanitize_racecheck_backward.log" 150
  sanitize_report memcheck "(all kernels)" "$OUT/sanitize_memcheck.log"
  sanitize_report synccheck tbptt "$OUT/sanitize_synccheck.log"
  sanitize_report racecheck _forward_kernel "$OUT/sanitize_racecheck_forward.log"
  sanitize_report racecheck _backward_kernel "$OUT/sanitize_racecheck_backward.log"
  export TBPTT_EXT_TEST_CUDA_PATHS="$PATHS_CSV"
fi

if want memory; then
  echo "== peak memory of one chunk: the blocks alive at the peak"
  for cell in LSTM GRU; do
    limit 150 python3 benchmarks/cuda_memory_probe.py --cell "$cell" > "$OUT/memory_$cell.log" 2>&1
    echo "$cell: exit $?"; cat "$OUT/memory_$cell.log"
  done
fi

if want race_probe; then
  echo "== racecheck probe: T=3 B=18 I=8 H=300, launches blocking, one configuration at a time"
  for config in latency:lstm:tanh:bfloat16 throughput:rnn:tanh:float32 stepwise:lstm:tanh:bfloat16; do
    IFS=: read -r path cell activation dtype <<< "$config"
    for filter in no_such_kernel _forward_kernel _backward_kernel; do
      one=$(mktemp)
      TBPTT_EXT_CUDA_PATH=$path CUDA_LAUNCH_BLOCKING=1 limit 60 compute-sanitizer --tool racecheck --error-exitcode 9 \
        --kernel-name "kns=$filter" python3 tests/cuda_race_probe.py "$cell" "$activation" "$dtype" > "$one" 2>&1
      rc=$?
      { echo "== $path $cell $dtype, kernels '$filter': exit $rc"; cat "$one"; } >> "$OUT/race_probe.log"
      echo "$path $cell $dtype, kernels '$filter': exit $rc - $(grep -E '^OK|Internal Sanitizer|RuntimeError|RACECHECK SUMMARY' "$one" | head -3 | tr '\n' ' ')"
      ok=$(grep -c '^OK' "$one"); rm -f "$one"
      if [ "$filter" = no_such_kernel ] && [ "$ok" = 0 ]; then
        echo "  fails with none of our kernels instrumented: the tool, not our kernels; other filters skipped"
        break
      fi
    done
  done
  f64_paths=()
  for config in latency:lstm persistent:lstm stepwise:lstm throughput:rnn; do  # in parallel
    IFS=: read -r path cell <<< "$config"
    f64_paths+=("$path")
    (TBPTT_EXT_CUDA_PATH=$path CUDA_LAUNCH_BLOCKING=1 limit 90 compute-sanitizer --tool racecheck --error-exitcode 9 \
       --kernel-name kns=tbptt python3 tests/cuda_race_probe.py "$cell" tanh float64 > "$OUT/race_f64_$path.log" 2>&1
     echo "exit $?" >> "$OUT/race_f64_$path.log") &
  done
  wait
  for path in "${f64_paths[@]}"; do
    echo "$path float64, kernels 'tbptt': $(grep -E '^OK|Internal Sanitizer|RuntimeError|RACECHECK SUMMARY|^exit' "$OUT/race_f64_$path.log" | tr '\n' ' ')"
  done
fi

if want profile; then
  echo "== profile: where one chunk's time goes, cuDNN and tbptt_ext"
  limit 120 python3 benchmarks/cuda_profile.py --paths "${BENCH_PATHS:-auto}" \
    ${PROFILE_POINTS:+--points "$PROFILE_POINTS"} 2>&1 | tee "$OUT/profile.log" | tail -150
fi

if want bench_cuda; then
  echo "== CUDA paths against cuDNN: the issue-10 grid (forward + backward and forward alone, memory, accuracy)"
  if [ -n "${BENCH_SHAPES:-}" ]; then grid=(--shapes "$BENCH_SHAPES" --repeats 20)
  elif [ -n "${QUICK:-}" ]; then grid=(--shapes 8x256,128x1024 --repeats 10); else grid=(--repeats 20); fi
  limit 400 python3 benchmarks/bench_cuda.py --device cuda --paths "${BENCH_PATHS:-$PATHS_CSV}" "${grid[@]}" \
    --out "$OUT/bench_cuda" 2>&1 | tee "$OUT/bench_cuda.log" | tail -70
fi

if want bench_loop; then
  echo "== benchmark (TBPTT loop)"
  if [ -n "${QUICK:-}" ]; then
    limit 300 python3 benchmarks/run.py --device cuda --batch 1,8,32,128 --hidden 256 --repeats 10 \
      --out "$OUT/bench" 2>&1 | tee "$OUT/bench_loop.log" | tail -40
  else
    limit 420 python3 benchmarks/run.py --device cuda --out "$OUT/bench" 2>&1 | tee "$OUT/bench_loop.log" | tail -80
  fi
fi
