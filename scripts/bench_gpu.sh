#!/usr/bin/env bash
# keras_bsgd on one GPU with JAX and without TensorFlow: the trajectory against the float64
# reference, then the step timing of BackwardSGD against Keras SGD. See docs/performance.md, section "GPU".
#
# For a machine with Python 3.12, jax + CUDA, numpy, h5py, rich, absl-py and no network: keras
# 3.15.1, namex 0.1.0 and optree 0.20.0 are installed offline from the wheels in .whl/ (when
# keras does not import), into /tmp/site; the library is used from this checkout (PYTHONPATH).
#
#   1. nvidia-smi and jax.devices();
#   2. python -m tests.reference_check: exact mode with momentum, window 4 with Nesterov,
#      replay_every=3, forward_steps=3, 20 steps each on the reference MLP, with
#      JAX_DEFAULT_MATMUL_PRECISION=highest; fails above 1e-5 max abs error;
#   3. python -m keras_bsgd.benchmarks.step_bench: t_sgd, R(w) for w = 1, 4, 16, 64 and
#      R_exact(k) for k = 16, 64, 256 for mlp_1024 and resnet18 at batch 32 and 128 (default
#      matmul precision, as a user's run), each model and batch size within its share of the
#      time left; what does not fit is listed as skipped.
#
# Everything runs under hard `timeout`s: the whole script ends within TOTAL_S seconds (default
# 450: 7.5 minutes). Output (4 files): bench_gpu.log, reference_check.json, step_timing.json
# and step_timing.md, the JSON and Markdown rewritten after each model and batch size.
#
# Usage: scripts/bench_gpu.sh [--tiny] [output folder; default $OUT, else bench_gpu]
#   --tiny (or TINY=1): the CPU dry run (tiny models, windows 1 4, depth 16; about 1-2 min)
#   PYTHON=.venv-jax/bin/python scripts/bench_gpu.sh --tiny /tmp/tiny
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
TINY=${TINY:-0}
if [ "${1:-}" = "--tiny" ]; then TINY=1; shift; fi
DIR=${1:-${OUT:-bench_gpu}}
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-$([ "$TINY" = 1 ] && echo 240 || echo 450)}
mkdir -p "$DIR"
exec > >(tee -a "$DIR/bench_gpu.log") 2>&1

export KERAS_BACKEND=jax
export PYTHONPATH="/tmp/site:.${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=2

left() { echo $((TOTAL_S - (SECONDS - START))); }

if ! "$PY" -c "import keras" 2>/dev/null; then
  echo "== installing keras, namex, optree from .whl/ (offline)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
fi

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
timeout 60 "$PY" -c "import jax, keras; print('jax', jax.__version__, jax.devices()); \
print('keras', keras.__version__, keras.backend.backend())"

status=0
echo "== reference check ($(left) s left)"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout --signal=INT --kill-after=5 \
  $([ "$TINY" = 1 ] && echo 150 || echo 90) \
  "$PY" -m tests.reference_check --json "$DIR/reference_check.json" || status=$?
[ "$status" -eq 0 ] || echo "bench_gpu.sh: reference check failed (status $status)"

# The Python deadline leaves 40 s for a compile or step that runs past it; `timeout` the rest.
budget=$(( $(left) - 10 ))
echo "== step timing ($budget s left)"
timing=0
timeout --signal=INT --kill-after=5 "$budget" \
  "$PY" -m keras_bsgd.benchmarks.step_bench $([ "$TINY" = 1 ] && echo --tiny) \
  --out "$DIR" --time-limit-s $((budget - 40)) || timing=$?
if [ "$timing" -ne 0 ]; then
  echo "bench_gpu.sh: step timing stopped with status $timing (124: time limit);" \
       "what finished is in $DIR/step_timing.json"
  status=$timing
fi
echo "== done in $((SECONDS - START)) s (status $status)"
exit "$status"
