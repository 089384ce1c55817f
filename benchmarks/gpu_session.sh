#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in one call from the repository
# root, in stages with their own time limits; logs and results go to $OUT (default
# /tmp/tbptt_gpu). Stages (STAGES, in this order):
#   build       editable build from source
#   smoke       every path once against the float64 reference (fails fast, ~1 min)
#   tests       tests/test_cuda.py on every path in PATHS
#   sanitize    compute-sanitizer memcheck, racecheck, synccheck over every kernel
#   bench_cuda  benchmarks/bench_cuda.py: every path against cuDNN on issue 10's grid
#   bench_loop  benchmarks/run.py: the TBPTT loop against torch.nn (not in the default)
#   bash benchmarks/gpu_session.sh
#   STAGES="build smoke" PATHS="throughput" bash benchmarks/gpu_session.sh
#   QUICK=1: small grids in the benchmarks
set -uo pipefail
OUT="${OUT:-/tmp/tbptt_gpu}"
mkdir -p "$OUT"
export MAX_JOBS="${MAX_JOBS:-16}" TBPTT_EXT_BUILD_CUDA=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

STAGES="${STAGES:-build smoke tests sanitize bench_cuda}"
PATHS="${PATHS:-persistent latency throughput stepwise}"
export TBPTT_EXT_TEST_CUDA_PATHS="${PATHS// /,}"
want() { [[ " $STAGES " == *" $1 "* ]]; }

if want build; then
  echo "== build (editable, so that the repository's tbptt_ext imports with its _C from any directory)"
  timeout 300 python3 -m pip install --no-build-isolation -e . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  python3 -c "import tbptt_ext; print('compiled backends:', sorted(tbptt_ext.compiled_backends()))"
fi

if want smoke; then
  echo "== smoke: each path in ($PATHS) against the float64 reference, stopping at the first failure"
  timeout 180 python3 -m pytest -q -x tests/test_cuda.py -k "test_ops_match_float64_reference and float32" \
    2>&1 | tee "$OUT/smoke.log" | tail -15
fi

if want tests; then
  echo "== GPU tests"
  timeout 480 python3 -m pytest -q tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" | tail -25
fi

if want sanitize; then
  echo "== compute-sanitizer"
  for tool in memcheck racecheck synccheck; do
    (cd tests && timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 9 python3 cuda_sanitize.py) \
      > "$OUT/sanitize_$tool.log" 2>&1
    echo "$tool: exit $? ($(grep -c 'ERROR SUMMARY' "$OUT/sanitize_$tool.log") summaries; $(grep 'ERROR SUMMARY' "$OUT/sanitize_$tool.log" | tail -1))"
  done
fi

if want bench_cuda; then
  echo "== CUDA paths against cuDNN: the issue-10 grid (forward + backward and forward alone, memory, accuracy)"
  if [ -n "${QUICK:-}" ]; then grid=(--shapes 8x256,128x1024 --repeats 10); else grid=(--repeats 20); fi
  timeout 420 python3 benchmarks/bench_cuda.py --device cuda --paths "auto,${PATHS// /,}" "${grid[@]}" \
    --out "$OUT/bench_cuda" 2>&1 | tail -70
fi

if want bench_loop; then
  echo "== benchmark (TBPTT loop)"
  if [ -n "${QUICK:-}" ]; then
    timeout 300 python3 benchmarks/run.py --device cuda --batch 1,8,32,128 --hidden 256 --repeats 10 \
      --out "$OUT/bench" 2>&1 | tail -40
  else
    timeout 420 python3 benchmarks/run.py --device cuda --out "$OUT/bench" 2>&1 | tail -80
  fi
fi
