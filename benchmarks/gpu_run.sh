#!/usr/bin/env bash
# The one prepared script for a lent GPU (issue 14 item 7, issue 15 item 6): streams per GPU on every GPU path
# (benchmarks/gpu_bench.py) and the speed of the real `msync train` run on the GPU
# (benchmarks/train_speed.py: batches 64 and 256, each drawn inline and by the prefetch worker). Every part has
# its own time limit and writes its files to $OUT (default benchmarks/results/gpu) even when another part fails;
# about 5 minutes on an H100/H200-class GPU. Settings: TRAIN_DEVICE (cuda), TRAIN_BATCHES (64,256), TRAIN_PREFETCH
# (0,2), TRAIN_STEPS (30), TRAIN_TIMEOUT_S (80 per row: a slow machine's set-up alone can take longer),
# TRAIN_SPEED_LIMIT_S (300), GPU_BENCH_LIMIT_S (200), GPU_BENCH_BUDGET_S (50 per backend).
#
#   bash benchmarks/gpu_run.sh                         # data from ../shared/data
#   MSYNC_DATA=/path/to/subset bash benchmarks/gpu_run.sh
#
# On a machine without the project's packages, put wheels in .whl/ (soundfile, cffi, pycparser, soxr, librosa and
# its pure-Python needs): they are installed into /tmp/site first. Without a GPU, gpu_bench writes a report saying
# so and the training rows are skipped unless TRAIN_DEVICE=cpu.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
{
  date -u; uname -a; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$PY" -c 'import torch, numpy; print("torch", torch.__version__, "cuda", torch.version.cuda, "numpy", numpy.__version__)'
  "$PY" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())' 2>&1
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
echo "== gpu_bench"
timeout "${GPU_BENCH_LIMIT_S:-200}" "$PY" -m benchmarks.gpu_bench --out "$OUT" --budget-s "${GPU_BENCH_BUDGET_S:-50}" \
  || echo "gpu_bench: exit $?"
echo "== train_speed"
TRAIN_DEVICE="${TRAIN_DEVICE:-cuda}"
if [ "${TRAIN_DEVICE#cuda}" != "$TRAIN_DEVICE" ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  echo "train_speed: skipped, no CUDA GPU here (TRAIN_DEVICE=cpu measures this machine instead)"
else
  timeout "${TRAIN_SPEED_LIMIT_S:-300}" "$PY" -m benchmarks.train_speed --device "$TRAIN_DEVICE" \
    --batches "${TRAIN_BATCHES:-64,256}" --prefetch "${TRAIN_PREFETCH:-0,2}" --steps "${TRAIN_STEPS:-30}" --log-every 5 \
    --timeout-s "${TRAIN_TIMEOUT_S:-80}" --data "${MSYNC_DATA:-../shared/data}" --out "$OUT" || echo "train_speed: exit $?"
fi
ls -la "$OUT"
