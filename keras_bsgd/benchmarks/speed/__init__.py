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
"""

from keras_bsgd.benchmarks.speed.cli import PROG
from keras_bsgd.benchmarks.speed.cli import build_parser
from keras_bsgd.benchmarks.speed.cli import main
from keras_bsgd.benchmarks.speed.config import DEFAULTS
from keras_bsgd.benchmarks.speed.config import INPUT_SHAPES
from keras_bsgd.benchmarks.speed.config import TINY
from keras_bsgd.benchmarks.speed.harness import bench_model
from keras_bsgd.benchmarks.speed.harness import benchmark
from keras_bsgd.benchmarks.speed.machine import machine_info
from keras_bsgd.benchmarks.speed.markdown import BEGIN
from keras_bsgd.benchmarks.speed.markdown import END
from keras_bsgd.benchmarks.speed.markdown import MEMORY_BEGIN
from keras_bsgd.benchmarks.speed.markdown import MEMORY_END
from keras_bsgd.benchmarks.speed.markdown import memory_markdown
from keras_bsgd.benchmarks.speed.markdown import to_markdown
from keras_bsgd.benchmarks.speed.markdown import write_memory_section
from keras_bsgd.benchmarks.speed.markdown import write_report
from keras_bsgd.benchmarks.speed.memory import PeakMemory
from keras_bsgd.benchmarks.speed.memory import buffer_memory
from keras_bsgd.benchmarks.speed.summary import memory_summary_lines
from keras_bsgd.benchmarks.speed.summary import summary_lines
from keras_bsgd.benchmarks.speed.targets import COMPILE_RATIO_TARGET
from keras_bsgd.benchmarks.speed.targets import R_TARGET
from keras_bsgd.benchmarks.speed.targets import check_targets

__all__ = [
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
