#!/usr/bin/env bash
# Streams per GPU at p99 < 40 ms on every GPU path (benchmarks/gpu_bench.py); writes gpu_bench.{json,md} to $OUT or benchmarks/results.
cd "$(dirname "$0")/.." && PYTHONUNBUFFERED=1 exec "${PYTHON:-python3}" -m benchmarks.gpu_bench --out "${OUT:-benchmarks/results}" "$@"
