#!/usr/bin/env bash
# Speed benchmark of keras_bsgd on one GPU (prepared, not yet run: no GPU was available when it
# was written). Synthetic CIFAR-shaped data (32x32x3, float32) for a ResNet-18 (CIFAR stem,
# BatchNorm) and 784-dim vectors for the MLP 784-1024-1024-10, batch 32 and 128, everything with
# jit_compile=True: Keras SGD (steps_per_execution=64) against BackwardSGD windows 1, 4, 16, 64
# and exact mode at depths 16, 64, 256. See docs/performance.md for what is measured.
#
# Budget: under 5 minutes in total. The MLP goes first (fast to compile), then ResNet-18, each at
# batch 32, then 128. Each run compiles 6 training programs (SGD, exact, 4 windows); whatever has not
# started when --time-limit-s runs out is skipped and listed as skipped in the report, and
# `timeout` stops the process for good before 5 minutes. The JSON is rewritten after every
# model and batch size, so a hard stop keeps what was finished.
#
# Usage: scripts/bench_gpu.sh [output folder, default bench_gpu]
#   PYTHON=python3 scripts/bench_gpu.sh /tmp/bench
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-bench_gpu}
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=2
export TF_FORCE_GPU_ALLOW_GROWTH=true  # so the allocator's peak is what the run used

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -c "import tensorflow as tf; g = tf.config.list_physical_devices('GPU'); print('GPUs:', g); assert g, 'TensorFlow sees no GPU'"

status=0
timeout --signal=INT --kill-after=10 280 "$PY" -m keras_bsgd.benchmarks.speed \
  --models mlp_1024 resnet18 --batch-sizes 32 128 \
  --windows 1 4 16 64 --depths 16 64 256 \
  --repeats 3 --budget-s 10 --time-limit-s 200 \
  --output "$OUT/performance_gpu.md" --json "$OUT/speed_gpu.json" || status=$?
if [ "$status" -ne 0 ]; then
  echo "bench_gpu.sh: the benchmark stopped with status $status (124: time limit);" \
       "finished runs are in $OUT/speed_gpu.json" >&2
fi
exit "$status"
