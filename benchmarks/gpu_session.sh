#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in one call from the repository
# root: build from source, the GPU tests, compute-sanitizer on every kernel, and the
# GPU benchmark. Logs and results go to $OUT (default /tmp/tbptt_gpu).
#   bash benchmarks/gpu_session.sh            # all
#   QUICK=1 bash benchmarks/gpu_session.sh    # benchmark on a small grid
set -uo pipefail
OUT="${OUT:-/tmp/tbptt_gpu}"
mkdir -p "$OUT"
export MAX_JOBS="${MAX_JOBS:-16}" TBPTT_EXT_BUILD_CUDA=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

echo "== build (editable, so that the repository's tbptt_ext imports with its _C from any directory)"
python3 -m pip install --no-build-isolation -e . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
python3 -c "import tbptt_ext; print('compiled backends:', sorted(tbptt_ext.compiled_backends()))"

echo "== GPU tests"
timeout 420 python3 -m pytest -q tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" | tail -25

echo "== compute-sanitizer"
for tool in memcheck racecheck synccheck; do
  (cd tests && timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 9 python3 cuda_sanitize.py) \
    > "$OUT/sanitize_$tool.log" 2>&1
  echo "$tool: exit $? ($(grep -c 'ERROR SUMMARY' "$OUT/sanitize_$tool.log") summaries; $(grep 'ERROR SUMMARY' "$OUT/sanitize_$tool.log" | tail -1))"
done

echo "== CUDA paths against cuDNN: the issue-10 grid (forward + backward and forward alone, memory, accuracy)"
timeout 300 python3 benchmarks/bench_cuda.py --device cuda --paths auto,latency,throughput,stepwise \
  --repeats "${REPEATS:-20}" --out "$OUT/bench_cuda" 2>&1 | tail -70

echo "== benchmark (TBPTT loop)"
if [ -n "${QUICK:-}" ]; then
  python3 benchmarks/run.py --device cuda --batch 1,8,32,128 --hidden 256 --repeats 10 --out "$OUT/bench" \
    2>&1 | tail -40
else
  python3 benchmarks/run.py --device cuda --out "$OUT/bench" 2>&1 | tail -80
fi
