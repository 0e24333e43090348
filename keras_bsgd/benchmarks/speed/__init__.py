"""Speed and memory of backward-SGD against Keras SGD, measured side by side.

`python -m keras_bsgd.benchmarks.speed [--tiny] [--output docs/performance.md]`

For every model and batch size, in one process, after warm-up, with
`jit_compile=True` everywhere:

* `t_sgd`: seconds per batch of `keras.optimizers.SGD` on a plain
  `keras.Model` of the same architecture, same initial weights and same
  batches, with `steps_per_execution=64` (its best case);
* `t(w)`: seconds per step of `BackwardSGD(window=w)` in steady state (k > w),
  where a step costs `w + 1` gradient evaluations, and
  `R(w) = t(w) / ((w + 1) * t_sgd)`;
* `t(k)`: seconds of the exact-mode step at buffer depth k (k gradient
  evaluations), and `R_exact(k) = t(k) / (k * t_sgd)`;
* compile time: the first one-step `fit()` of a fresh model with
  `steps_per_execution=1` minus the same `fit()` repeated from step 1 once
  compiled (SGD: one execution of its timed model);
* memory: the peak resident set size of the process (Linux `VmHWM`, reset per
  model) and the replay buffer's bytes (`model.replay_buffer.nbytes`).

Timed models are called through their compiled `train_function` (what
`fit()` calls once per execution), so `fit()`'s per-epoch setup is not in the
step times. Windowed and exact models are *fast-forwarded* by default: one
real step builds the buffer and saves the anchor, every buffer slot is filled
with a real batch, and `optimizer.iterations` is set to `k - 1`. The trainer's
work at step k depends only on k and the buffer capacity (it replays
`min(k, capacity)` slots), so the step timed is the step at depth k, without
paying the k(k-1)/2 gradient evaluations that lead there. `--no-fast-forward`
runs every step for real instead.

That is the TensorFlow benchmark. On JAX (`KERAS_BACKEND=jax` or `--backend
jax`) the step times come from `keras_bsgd.benchmarks.step_timing` instead:
every step inside `fit()`, without fast-forward (`keras_bsgd.benchmarks.
speed.jax_timing`); the buffer-memory section, which measures TensorFlow's
`keras_bsgd.ReplayBuffer`, stays TensorFlow's.
"""

# Imported on first use: the TensorFlow harness must not load on JAX.
import importlib

_EXPORTS = {
    "PROG": "keras_bsgd.benchmarks.speed.cli",
    "build_parser": "keras_bsgd.benchmarks.speed.cli",
    "main": "keras_bsgd.benchmarks.speed.cli",
    "DEFAULTS": "keras_bsgd.benchmarks.speed.config",
    "INPUT_SHAPES": "keras_bsgd.benchmarks.speed.config",
    "TINY": "keras_bsgd.benchmarks.speed.config",
    "bench_model": "keras_bsgd.benchmarks.speed.harness",
    "benchmark": "keras_bsgd.benchmarks.speed.harness",
    "machine_info": "keras_bsgd.benchmarks.speed.machine",
    "BEGIN": "keras_bsgd.benchmarks.speed.markdown",
    "END": "keras_bsgd.benchmarks.speed.markdown",
    "MEMORY_BEGIN": "keras_bsgd.benchmarks.speed.markdown",
    "MEMORY_END": "keras_bsgd.benchmarks.speed.markdown",
    "memory_markdown": "keras_bsgd.benchmarks.speed.markdown",
    "to_markdown": "keras_bsgd.benchmarks.speed.markdown",
    "write_memory_section": "keras_bsgd.benchmarks.speed.markdown",
    "write_report": "keras_bsgd.benchmarks.speed.markdown",
    "PeakMemory": "keras_bsgd.benchmarks.speed.memory",
    "buffer_memory": "keras_bsgd.benchmarks.speed.memory",
    "memory_summary_lines": "keras_bsgd.benchmarks.speed.summary",
    "summary_lines": "keras_bsgd.benchmarks.speed.summary",
    "COMPILE_RATIO_TARGET": "keras_bsgd.benchmarks.speed.targets",
    "R_TARGET": "keras_bsgd.benchmarks.speed.targets",
    "check_targets": "keras_bsgd.benchmarks.speed.targets",
    "JAX_BEGIN": "keras_bsgd.benchmarks.speed.jax_timing",
    "JAX_END": "keras_bsgd.benchmarks.speed.jax_timing",
}
_ALIASES = {"JAX_BEGIN": "BEGIN", "JAX_END": "END"}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), _ALIASES.get(name, name))


__all__ = [
    "JAX_BEGIN",
    "JAX_END",
    "BEGIN",
    "COMPILE_RATIO_TARGET",
    "DEFAULTS",
    "END",
    "INPUT_SHAPES",
    "MEMORY_BEGIN",
    "MEMORY_END",
    "PROG",
    "R_TARGET",
    "TINY",
    "PeakMemory",
    "bench_model",
    "benchmark",
    "buffer_memory",
    "build_parser",
    "check_targets",
    "machine_info",
    "main",
    "memory_markdown",
    "memory_summary_lines",
    "summary_lines",
    "to_markdown",
    "write_memory_section",
    "write_report",
]
