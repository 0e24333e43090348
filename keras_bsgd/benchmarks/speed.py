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

import argparse
import datetime
import gc
import json
import math
import os
import platform
import re
import resource
import shlex
import statistics
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import keras_bsgd
from keras_bsgd.benchmarks import models as benchmark_models

PROG = "python -m keras_bsgd.benchmarks.speed"

R_TARGET = 1.10
"""Target for `R(w)` (w >= 4) and `R_exact(k)` (k >= 16) on CPU."""

COMPILE_RATIO_TARGET = 2.0
"""Target for compile time at the largest window over that at the smallest (w = 1)."""

DEFAULTS = {
    "models": ["mlp", "cnn"],
    "batch_sizes": [32],
    "windows": [1, 4, 16, 64],
    "depths": [16, 64, 256],
    "sgd_steps_per_execution": 64,
    "bsgd_steps_per_execution": None,
    "repeats": 5,
    "budget_s": 30.0,
    "fast_forward": True,
    "memory_steps": 10_000,
    "memory_batch_size": 128,
    "memory_examples": 50_000,
    "time_limit_s": None,
    "seed": 0,
}
"""The full benchmark: about 5.5 minutes on 2 (shared) CPU cores."""

TINY = {
    **DEFAULTS,
    "models": ["mlp_tiny"],
    "batch_sizes": [8],
    "windows": [1, 4],
    "depths": [2, 4],
    "sgd_steps_per_execution": 8,
    "repeats": 2,
    "budget_s": 2.0,
    "memory_steps": 100,
    "memory_examples": 1_000,
}
"""A smoke-test configuration: one small MLP, a few seconds of timing."""


def mlp(input_shape=(784,), num_classes=10):
    """The benchmark MLP: 784-1024-1024-10 with ReLU, logits output."""
    return benchmark_models.mlp(input_shape, num_classes, (1024, 1024), name="mlp")


def mlp_tiny(input_shape=(784,), num_classes=10):
    """A 784-32-10 MLP for smoke tests."""
    return benchmark_models.mlp(input_shape, num_classes, (32,), name="mlp_tiny")


def small_cnn(input_shape=(32, 32, 3), num_classes=10):
    """A small CNN for 32x32x3 images: two 3x3 conv (16, 32 filters) + pool blocks, a dense head.

    Example:

    >>> small_cnn().count_params()
    25578
    """
    inputs = keras.Input(input_shape)
    x = inputs
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


MODELS = {
    "mlp": ((784,), mlp),
    "mlp_tiny": ((784,), mlp_tiny),
    "cnn": ((32, 32, 3), small_cnn),
    "resnet18": ((32, 32, 3), lambda shape, n: benchmark_models.resnet18(shape, n)),
}
"""Benchmark models by name: `(input_shape, builder(input_shape, num_classes))`."""

NUM_CLASSES = 10
NUM_BATCHES = 16  # distinct batches, cycled
LEARNING_RATE = 0.01


# ---------------------------------------------------------------- machine ---


def machine_info():
    """CPU model, core counts, accelerators, library versions and load, as a dict."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        if match:
            cpu = match.group(1).strip()
    except OSError:
        pass
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        memory_gb = psutil.virtual_memory().total / 2**30
    except ImportError:  # pragma: no cover - psutil is a dependency
        physical, memory_gb = None, None
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append(details.get("device_name", device.name))
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "memory_gb": None if memory_gb is None else round(memory_gb, 1),
        "gpus": gpus,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_bsgd": keras_bsgd.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


# ----------------------------------------------------------------- memory ---


def _read_status_kb(field):
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
        return int(match.group(1)) if match else None
    except OSError:
        return None


class PeakMemory:
    """Peak resident set size of the process over a phase (Linux `VmHWM`).

    `start()` resets the kernel's high-water mark (`/proc/self/clear_refs`);
    where that is not possible the peak is the process-lifetime peak from
    `getrusage`, and `resettable` is False. On a GPU the TensorFlow allocator's
    peak is tracked too.
    """

    def __init__(self):
        self.resettable = False
        self.rss_start = 0
        self._gpu = bool(tf.config.list_physical_devices("GPU"))

    def start(self):
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = _read_status_kb("VmHWM") is not None
        except OSError:
            self.resettable = False
        self.rss_start = _rss_bytes()
        if self._gpu:
            try:
                tf.config.experimental.reset_memory_stats("GPU:0")
            except (ValueError, RuntimeError):
                self._gpu = False
        return self

    def peak(self):
        """`{"peak_rss_bytes", "rss_start_bytes", "gpu_peak_bytes"?, "method"}`."""
        hwm = _read_status_kb("VmHWM")
        if hwm is not None:
            peak = hwm * 1024
            method = ("VmHWM (peak RSS) of the process, reset per model" if self.resettable
                      else "VmHWM (lifetime peak RSS) of the process")
        else:  # Linux reports ru_maxrss in kB, macOS in bytes.
            scale = 1 if sys.platform == "darwin" else 1024
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            method = "ru_maxrss (lifetime peak RSS) of the process"
        out = {"peak_rss_bytes": peak, "rss_start_bytes": self.rss_start, "method": method}
        if self._gpu:
            out["gpu_peak_bytes"] = tf.config.experimental.get_memory_info("GPU:0")["peak"]
        return out


def _rss_bytes():
    rss = _read_status_kb("VmRSS")
    if rss is not None:
        return rss * 1024
    import psutil

    return psutil.Process().memory_info().rss


def buffer_memory(batch_size=128, image_shape=(32, 32, 3), capacity=64, steps=10_000,
                  num_examples=50_000):
    """Replay-buffer bytes for CIFAR-shaped batches: measured, and projected to `steps`.

    Measured: the `nbytes` of real `keras_bsgd.ReplayBuffer`s of `capacity`
    slots holding uint8 or float32 image batches (int32 labels), or (index
    buffering) `batch_size` int32 example indices per slot, and of the
    `keras_bsgd.DataStore` of `num_examples` uint8 images with int32 labels
    that index buffering gathers from. Projected (arithmetic, not
    allocated): exact mode over `steps` steps.

    Returns:
        A dict with `measured` (a list of dicts), `data_store` and `projection`.
    """
    pixels = int(np.prod(image_shape))
    measured = []
    for dtype in ("uint8", "float32", "int32 indices"):
        spec = (
            tf.TensorSpec((batch_size,), "int32")
            if dtype == "int32 indices"
            else (
                tf.TensorSpec((batch_size, *image_shape), dtype),
                tf.TensorSpec((batch_size,), "int32"),
                None,
            )
        )
        buffer = keras_bsgd.ReplayBuffer(capacity, spec)
        measured.append({
            "dtype": dtype,
            "capacity": capacity,
            "batch_size": batch_size,
            "nbytes": buffer.nbytes,
            "bytes_per_slot": buffer.nbytes // capacity,
        })
        del buffer
        gc.collect()
    store = keras_bsgd.DataStore()
    store.add((
        np.zeros((num_examples, *image_shape), "uint8"),
        np.zeros((num_examples,), "int32"),
        None,
    ))
    data_store = {"num_examples": num_examples, "nbytes": store.nbytes}
    del store
    gc.collect()
    label_bytes = batch_size * 4
    lr_bytes = 4  # the frozen learning rate, one float32 per slot
    per_step = {
        "uint8": batch_size * pixels * 1 + label_bytes + lr_bytes,
        "float32": batch_size * pixels * 4 + label_bytes + lr_bytes,
        "int32 indices": batch_size * 4 + lr_bytes,
    }
    totals = {k: v * steps for k, v in per_step.items()}
    totals["int32 indices"] += data_store["nbytes"]
    return {
        "measured": measured,
        "data_store": data_store,
        "projection": {
            "steps": steps,
            "batch_size": batch_size,
            "image_shape": list(image_shape),
            "bytes_per_step": per_step,
            "bytes": {k: v * steps for k, v in per_step.items()},
            "total_bytes": totals,
        },
    }


# ----------------------------------------------------------------- timing ---


def _data(input_shape, batch_size, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((NUM_BATCHES, batch_size, *input_shape), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, (NUM_BATCHES, batch_size), dtype=np.int32)
    # One element per (static-shape) batch, cycled forever.
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat(), (x, y)


def _build(name, input_shape, seed):
    keras.utils.set_random_seed(seed)
    return MODELS[name][1](input_shape, NUM_CLASSES)


def _compile(model, optimizer, steps_per_execution):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
        steps_per_execution=steps_per_execution,
    )
    return model


def _sync(logs):
    return float(keras.ops.convert_to_numpy(logs["loss"]))


def _time_call(model, iterator):
    """Seconds for one `train_function` call (one execution), synchronized."""
    start = time.perf_counter()
    logs = model.train_function(iterator)
    _sync(logs)
    return time.perf_counter() - start


def _warm_up(model, iterator, calls=3, seconds=1.0):
    """A few untimed calls on `iterator`: at least one, at most `calls`, stopping after `seconds`."""
    start = time.perf_counter()
    for _ in range(calls):
        _sync(model.train_function(iterator))
        if time.perf_counter() - start > seconds:
            break


def _fill_buffer(model, batches):
    """Writes real batches into every slot of the model's replay buffer."""
    buffer = model.replay_buffer
    x, y = batches
    learning_rate = model.optimizer.current_learning_rate()
    for slot in range(buffer.capacity):
        i = slot % len(x)
        buffer.write(slot, (tf.constant(x[i]), tf.constant(y[i]), None), learning_rate)


def _bsgd_spe(window, sgd_spe, forced, step_s=None, max_call_s=2.0):
    """`steps_per_execution` of the BackwardSGD model with window `window`.

    About as many gradient evaluations per execution as SGD's
    (`ceil(sgd_spe / (w + 1))`), so per-call host overhead is amortized alike,
    but no more steps than fit in `max_call_s`, estimated from `step_s`, the
    time of one step 1 (at least one gradient evaluation).
    """
    if forced:
        return forced
    spe = max(1, math.ceil(sgd_spe / (window + 1)))
    if step_s:
        spe = min(spe, max(1, int(max_call_s / ((window + 1) * step_s))))
    return spe


def _summarize(pairs, grad_evals, **fields):
    """Median time and ratios of `(seconds per step, SGD seconds per step)` pairs."""
    times = [t for t, _ in pairs]
    sgd_times = [ts for _, ts in pairs]
    return {
        **fields,
        "grad_evals": grad_evals,
        "repeats": len(pairs),
        "t_s": statistics.median(times),
        "t_min_s": min(times),
        "t_sgd_s": statistics.median(sgd_times),
        "R": statistics.median(t / (grad_evals * ts) for t, ts in pairs),
        "R_of_minima": min(times) / (grad_evals * min(sgd_times)),
        "samples_s": [list(p) for p in pairs],
    }


def _cost_model(results):
    """Least squares over every timed repeat: `t / t_sgd = fixed + per_grad * n`.

    `t_sgd` is the repeat's own (sandwiching) SGD time and `n` its gradient
    evaluations per step, so machine-load changes between repeats cancel.
    `fixed` is the per-step cost beyond the gradient evaluations and
    `per_grad` the cost of one replayed gradient evaluation, both in SGD steps.
    """
    n, y = [], []
    for r in results:
        for t, ts in r["samples_s"]:
            n.append(r["grad_evals"])
            y.append(t / ts)
    per_grad, fixed = np.polyfit(np.asarray(n, float), np.asarray(y, float), 1)
    return {"fixed_in_sgd_steps": float(fixed), "per_grad_in_sgd_steps": float(per_grad),
            "points": len(y)}


class _Deadline:
    def __init__(self, limit_s):
        self.end = None if not limit_s else time.perf_counter() + limit_s

    def passed(self):
        return self.end is not None and time.perf_counter() > self.end


def _compile_time(model, dataset, steps):
    """Seconds of `model`'s first `fit()` of `steps` steps beyond the same fit once compiled.

    BackwardSGD models are reset to step 1 (`iterations = 0`) before the
    second fit, so both fits run the same steps at the same cost.
    """
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    first = time.perf_counter() - start
    if isinstance(model.optimizer, keras_bsgd.BackwardSGD):
        model.optimizer.iterations.assign(0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return first - (time.perf_counter() - start)


def bench_model(
    name,
    batch_size,
    windows,
    depths,
    sgd_steps_per_execution=64,
    bsgd_steps_per_execution=None,
    repeats=5,
    budget_s=30.0,
    fast_forward=True,
    seed=0,
    deadline=None,
    log=print,
):
    """Times one model at one batch size. See `benchmark` for the arguments.

    Returns:
        A dict: `model`, `batch_size`, `params`, `t_sgd_s`, `windowed` and
        `exact` (lists of per-setting dicts with `t_s`, `R`, `repeats`), `R`
        and `R_exact` (by `"w=.."` / `"k=.."`), `compile_s`, `compile_ratio`,
        `memory`, `skipped`.
    """
    deadline = deadline or _Deadline(None)
    input_shape = MODELS[name][0]
    dataset, batches = _data(input_shape, batch_size, seed)
    memory = PeakMemory().start()
    skipped = []
    out = {"model": name, "batch_size": batch_size, "input_shape": list(input_shape)}

    # Plain Keras SGD: compiled first, so one-time XLA start-up lands here.
    sgd_spe = sgd_steps_per_execution
    sgd = _compile(_build(name, input_shape, seed),
                   keras.optimizers.SGD(LEARNING_RATE), sgd_spe)
    out["params"] = int(sgd.count_params())
    compile_s = {"sgd": _compile_time(sgd, dataset, sgd_spe)}
    sgd_iterator = iter(dataset)
    _warm_up(sgd, sgd_iterator)
    log(f"[{name} b{batch_size}] {out['params']:,} parameters; SGD compiled "
        f"in {compile_s['sgd']:.2f} s")

    def make_bsgd(window, spe, max_steps=None):
        model = keras_bsgd.wrap(_build(name, input_shape, seed))
        optimizer = keras_bsgd.BackwardSGD(LEARNING_RATE, window=window, max_steps=max_steps)
        return _compile(model, optimizer, spe)

    # Exact mode first: its step 1 (one forward, one gradient evaluation)
    # sizes the windowed models' steps_per_execution.
    buffer_bytes, exact_model, step_s = {}, None, None
    if depths and not deadline.passed():
        capacity = max(depths) + (0 if fast_forward else repeats)
        exact_model = make_bsgd(None, 1, max_steps=capacity)
        compile_s["exact"] = _compile_time(exact_model, dataset, 1)
        exact_iterator = iter(dataset)
        calls = []
        for _ in range(2):
            exact_model.optimizer.iterations.assign(0)
            calls.append(_time_call(exact_model, exact_iterator))
        step_s = min(calls)
        _warm_up(exact_model, exact_iterator)  # steps 2, 3, ...: cheap
        buffer_bytes[f"exact (capacity {capacity})"] = exact_model.replay_buffer.nbytes
        if fast_forward:
            _fill_buffer(exact_model, batches)
        log(f"[{name} b{batch_size}] exact mode compiled in {compile_s['exact']:.2f} s; "
            f"step 1 takes {1e3 * step_s:.1f} ms")
    elif depths:
        skipped.append("exact")
    out["bsgd_step1_s"] = step_s

    # Windowed models, largest window first (any one-time compilation cost
    # lands on it: a conservative compile ratio), brought to steady state k > w.
    timed = {}
    for window in sorted(windows, reverse=True):
        if deadline.passed():
            skipped.append(f"window {window}")
            continue
        spe = _bsgd_spe(window, sgd_spe, bsgd_steps_per_execution, step_s)
        # Compile time on a one-step model: with the timed model's many
        # steps per execution, their run time's noise would swamp it.
        compile_s[f"w={window}"] = _compile_time(make_bsgd(window, 1), dataset, 1)
        model = make_bsgd(window, spe)
        model.fit(dataset, steps_per_epoch=spe, epochs=1, verbose=0, shuffle=False)
        iterator = iter(dataset)
        # Warm-up on this iterator while steps are still cheap (k <= w).
        _warm_up(model, iterator)
        if fast_forward:
            _fill_buffer(model, batches)
            if int(model.optimizer.iterations) <= window:
                model.optimizer.iterations.assign(window + 1)
        while int(model.optimizer.iterations) <= window:
            model.train_function(iterator)
        buffer_bytes[f"w={window}"] = model.replay_buffer.nbytes
        timed[f"w={window}"] = {"model": model, "iterator": iterator, "spe": spe}
        log(f"[{name} b{batch_size}] w={window} compiled in {compile_s[f'w={window}']:.2f} s "
            f"(steps_per_execution={spe})")
    timed = {f"w={w}": timed[f"w={w}"] for w in windows if f"w={w}" in timed}
    out["compile_s"] = compile_s
    lo, hi = (f"w={min(windows)}", f"w={max(windows)}") if windows else (None, None)
    out["compile_ratio"] = (
        compile_s[hi] / compile_s[lo] if lo in compile_s and hi in compile_s else None
    )

    # Interleaved rounds, one execution of each setting per round, so a change
    # in machine load hits every setting alike. Every execution is sandwiched
    # between two SGD executions; its ratio uses their mean.
    def sgd_step_s():
        seconds = _time_call(sgd, sgd_iterator) / sgd_spe
        sgd_samples.append(seconds)
        return seconds

    sgd_samples = []
    keys = list(timed)
    # An untimed round first: the first calls after other work are slower.
    _warm_up(sgd, sgd_iterator)
    for key in keys:
        _time_call(timed[key]["model"], timed[key]["iterator"])

    records = {key: [] for key in keys}  # (seconds per step, SGD seconds per step)
    spent, done, before = dict.fromkeys(keys, 0.0), set(), None
    for _ in range(repeats):
        active = [key for key in keys if key not in done]
        if not active or (before is not None and deadline.passed()):
            break
        before = sgd_step_s() if before is None else before
        for key in active:
            entry = timed[key]
            seconds = _time_call(entry["model"], entry["iterator"])
            after = sgd_step_s()
            records[key].append((seconds / entry["spe"], (before + after) / 2))
            before = after
            spent[key] += seconds
            if spent[key] + seconds > budget_s:
                done.add(key)  # the next repeat would overrun the budget
    while len(sgd_samples) < repeats and not keys:  # no windows: SGD alone
        sgd_step_s()
    t_sgd = statistics.median(sgd_samples)
    out["t_sgd_s"] = t_sgd
    out["sgd_steps_per_execution"] = sgd_spe
    out["sgd_repeats"] = len(sgd_samples)
    out["windowed"] = []
    for window in windows:
        key = f"w={window}"
        if key not in timed:
            continue
        out["windowed"].append(
            _summarize(records[key], window + 1, window=window,
                       steps_per_execution=timed[key]["spe"])
        )
        log(f"[{name} b{batch_size}] R(w={window}) = {out['windowed'][-1]['R']:.3f}  "
            f"(t = {1e3 * out['windowed'][-1]['t_s']:.2f} ms/step, "
            f"t_sgd = {1e3 * t_sgd:.3f} ms)")
    for key in keys:
        del timed[key]
    gc.collect()

    # Exact mode: the step at buffer depth k, sandwiched between SGD
    # executions like the windowed steps.
    out["exact"] = []
    if exact_model is not None:
        model, iterator = exact_model, exact_iterator
        if fast_forward:  # an untimed call at full depth, as for the windowed models
            model.optimizer.iterations.assign(min(depths) - 1)
            _time_call(model, iterator)
        before = sgd_step_s()
        for depth in sorted(depths):
            if deadline.passed():
                skipped.append(f"exact k={depth}")
                continue
            pairs, spent_k = [], 0.0
            if not fast_forward:
                while int(model.optimizer.iterations) < depth - 1:
                    model.train_function(iterator)
            while len(pairs) < repeats and (not pairs or spent_k + seconds <= budget_s):
                step = int(model.optimizer.iterations) + 1
                if fast_forward:
                    model.optimizer.iterations.assign(depth - 1)
                    step = depth
                seconds = _time_call(model, iterator)
                after = sgd_step_s()
                spent_k += seconds
                # Without fast-forward, steps past depth k are rescaled to k.
                pairs.append((seconds * depth / step, (before + after) / 2))
                before = after
            out["exact"].append(_summarize(pairs, depth, depth=depth))
            log(f"[{name} b{batch_size}] R_exact(k={depth}) = {out['exact'][-1]['R']:.3f}  "
                f"(t = {1e3 * out['exact'][-1]['t_s']:.1f} ms/step)")
        del model, exact_model
    out["cost_model"] = {}
    for kind in ("windowed", "exact"):
        if len({r["grad_evals"] for r in out[kind]}) >= 2:
            out["cost_model"][kind] = _cost_model(out[kind])
    out["t_sgd_all_s"] = statistics.median(sgd_samples)
    out["t_sgd_min_s"] = min(sgd_samples)
    out["R"] = {f"w={r['window']}": r["R"] for r in out["windowed"]}
    out["R_exact"] = {f"k={r['depth']}": r["R"] for r in out["exact"]}
    out["memory"] = {**memory.peak(), "buffer_bytes": buffer_bytes}
    out["skipped"] = skipped
    del sgd
    gc.collect()
    return out


def benchmark(
    models=tuple(DEFAULTS["models"]),
    batch_sizes=tuple(DEFAULTS["batch_sizes"]),
    windows=tuple(DEFAULTS["windows"]),
    depths=tuple(DEFAULTS["depths"]),
    sgd_steps_per_execution=DEFAULTS["sgd_steps_per_execution"],
    bsgd_steps_per_execution=DEFAULTS["bsgd_steps_per_execution"],
    repeats=DEFAULTS["repeats"],
    budget_s=DEFAULTS["budget_s"],
    fast_forward=DEFAULTS["fast_forward"],
    memory_steps=DEFAULTS["memory_steps"],
    memory_batch_size=DEFAULTS["memory_batch_size"],
    memory_examples=DEFAULTS["memory_examples"],
    time_limit_s=DEFAULTS["time_limit_s"],
    seed=DEFAULTS["seed"],
    command=None,
    log=print,
    checkpoint=None,
):
    """Runs the speed and memory benchmark.

    Args:
        models: Names from `MODELS`.
        batch_sizes: Batch sizes; every model runs at each.
        windows: Windows `w` of windowed backward-SGD.
        depths: Exact-mode buffer depths `k`.
        sgd_steps_per_execution: `steps_per_execution` of the Keras SGD baseline.
        bsgd_steps_per_execution: `steps_per_execution` of the BackwardSGD
            models; `None` picks `ceil(sgd_steps_per_execution / (w + 1))` for
            window `w` (about the same gradient evaluations per execution) and
            1 in exact mode.
        repeats: Most timed repeats per setting (the median is reported).
        budget_s: A setting stops repeating once its timed seconds would pass
            this (it always gets one repeat).
        fast_forward: Jump to steady state / depth k instead of running every
            step before it (see the module docstring).
        memory_steps: Steps of the exact-mode memory projection.
        memory_batch_size: Batch size of the memory measurement and projection.
        memory_examples: Examples in the measured index-buffering data store.
        time_limit_s: Skip what remains once this many seconds have passed.
        seed: Seed of weights and data.
        command: The command line, recorded in the result.
        log: Progress printer (`None`: silent).
        checkpoint: Called with the partial result after each model and batch
            size (e.g. to save it before a hard time limit).

    Returns:
        A JSON-serializable dict: `command`, `date`, `machine`, `config`,
        `runs` (one `bench_model` dict per model and batch size),
        `buffer_memory`, `targets`, `wall_time_s`.
    """
    unknown = [name for name in models if name not in MODELS]
    if unknown:
        raise ValueError(
            f"Unknown model. Expected names from {sorted(MODELS)}. Received: {unknown}"
        )
    log = log or (lambda *a, **k: None)
    start = time.perf_counter()
    deadline = _Deadline(time_limit_s)
    config = {
        "models": list(models), "batch_sizes": list(batch_sizes),
        "windows": list(windows), "depths": list(depths),
        "sgd_steps_per_execution": sgd_steps_per_execution,
        "bsgd_steps_per_execution": bsgd_steps_per_execution,
        "repeats": repeats, "budget_s": budget_s, "fast_forward": fast_forward,
        "memory_steps": memory_steps, "memory_batch_size": memory_batch_size,
        "memory_examples": memory_examples,
        "time_limit_s": time_limit_s, "seed": seed, "jit_compile": True,
        "learning_rate": LEARNING_RATE, "distinct_batches": NUM_BATCHES,
        "data": "synthetic float32 inputs in [0, 1), int32 labels in [0, 10)",
    }
    result = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "config": config,
        "runs": [],
    }
    for name in models:
        for batch_size in batch_sizes:
            if deadline.passed():
                result.setdefault("skipped", []).append(f"{name} b{batch_size}")
                continue
            result["runs"].append(bench_model(
                name, batch_size, list(windows), list(depths),
                sgd_steps_per_execution=sgd_steps_per_execution,
                bsgd_steps_per_execution=bsgd_steps_per_execution,
                repeats=repeats, budget_s=budget_s, fast_forward=fast_forward,
                seed=seed, deadline=deadline, log=log,
            ))
            keras.backend.clear_session()
            if checkpoint:
                checkpoint(result)
    result["buffer_memory"] = buffer_memory(
        memory_batch_size, (32, 32, 3), _memory_capacity(windows), memory_steps,
        memory_examples,
    )
    result["targets"] = check_targets(result)
    result["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    result["wall_time_s"] = time.perf_counter() - start
    return result


def _memory_capacity(windows):
    return max(windows) if windows else 64


def check_targets(result):
    """Each target against the measurement: a list of dicts with `met` and `by`.

    `by` is the relative miss (0.25: 25% over the target); 0 when met.
    """
    checks = []
    for run in result["runs"]:
        where = f"{run['model']} b{run['batch_size']}"
        for r in run["windowed"]:
            if r["window"] >= 4:
                checks.append(_check(f"R(w={r['window']}) {where}", r["R"], R_TARGET))
        for r in run["exact"]:
            if r["depth"] >= 16:
                checks.append(_check(f"R_exact(k={r['depth']}) {where}", r["R"], R_TARGET))
        if run.get("compile_ratio") is not None:
            checks.append(_check(f"compile ratio {where}", run["compile_ratio"],
                                 COMPILE_RATIO_TARGET))
    return checks


def _check(name, value, target):
    met = value <= target
    return {"name": name, "value": value, "target": target, "met": met,
            "by": 0.0 if met else value / target - 1.0}


# ----------------------------------------------------------------- report ---

BEGIN = "<!-- speed:begin (generated by keras_bsgd.benchmarks.speed; edits here are overwritten) -->"
END = "<!-- speed:end -->"
MEMORY_BEGIN = "<!-- speed:memory:begin -->"
MEMORY_END = "<!-- speed:memory:end -->"


def _pct(fraction):
    """`0.003` -> `"0.3%"`, `0.12` -> `"12%"`."""
    return f"{100 * fraction:.1f}%" if fraction < 0.1 else f"{100 * fraction:.0f}%"


def _mb(n):
    return f"{n / 2**20:,.1f} MiB"


def _size(n):
    if n < 2**20:
        return f"{n / 2**10:,.1f} KiB"
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else _mb(n)


def to_markdown(result):
    """The measured tables as Markdown (the generated part of docs/performance.md)."""
    m, c = result["machine"], result["config"]
    gpu = ", ".join(m["gpus"]) if m["gpus"] else "none"
    lines = [
        BEGIN,
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}; wall time {result['wall_time_s']:.0f} s  ",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores "
        f"({m['physical_cores']} physical), {m['memory_gb']} GB RAM, GPU: {gpu}; "
        f"load average {m['load_average'][0]} at start, "
        f"{m.get('load_average_end', ['?'])[0]} at end  ",
        f"Software: TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"keras_bsgd {m['keras_bsgd']}, Python {m['python']}  ",
        f"Configuration: windows {c['windows']}, exact depths {c['depths']}, SGD "
        f"`steps_per_execution={c['sgd_steps_per_execution']}`, BackwardSGD "
        + (f"`steps_per_execution={c['bsgd_steps_per_execution']}`"
           if c["bsgd_steps_per_execution"] else
           f"`steps_per_execution=ceil({c['sgd_steps_per_execution']}/(w+1))`, capped so that "
           "one execution takes about 2 s at most")
        + f" (exact mode: 1), up to {c['repeats']} repeats per setting within "
        f"{c['budget_s']:.0f} s of timing, fast-forward {'on' if c['fast_forward'] else 'off'}, "
        f"`jit_compile=True`, {c['data']}, {c['distinct_batches']} distinct batches cycled.",
        "",
    ]
    for run in result["runs"]:
        t_sgd = run["t_sgd_s"]
        lines += [
            f"### {run['model']}, batch {run['batch_size']} "
            f"({run['params']:,} parameters, input {tuple(run['input_shape'])})",
            "",
            f"t_sgd = **{1e3 * t_sgd:.3f} ms** per batch (Keras SGD, median of "
            f"{run['sgd_repeats']} executions of {run['sgd_steps_per_execution']} steps "
            f"in the windowed rounds; over the whole model run: median "
            f"{1e3 * run['t_sgd_all_s']:.3f} ms, minimum {1e3 * run['t_sgd_min_s']:.3f} ms). "
            "Ratio: the median over repeats of t / (n × t_sgd), n the gradient "
            "evaluations per step and t_sgd the mean of the SGD executions timed just "
            "before and just after; ratio of minima: the same with the fastest t and "
            "the fastest of those SGD times.",
            "",
            "| setting | grad evals / step | steps / execution | repeats | t (ms / step) "
            "| ratio | ratio of minima | target | met |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in run["windowed"]:
            target = f"≤ {R_TARGET:.2f}" if r["window"] >= 4 else "—"
            met = ("yes" if r["R"] <= R_TARGET else f"no (+{_pct(r['R'] / R_TARGET - 1)})"
                   ) if r["window"] >= 4 else "—"
            lines.append(
                f"| window w={r['window']} | {r['grad_evals']} | {r['steps_per_execution']} | "
                f"{r['repeats']} | {1e3 * r['t_s']:.2f} | R = {r['R']:.3f} | "
                f"{r['R_of_minima']:.3f} | {target} | {met} |"
            )
        for r in run["exact"]:
            target = f"≤ {R_TARGET:.2f}" if r["depth"] >= 16 else "—"
            met = ("yes" if r["R"] <= R_TARGET else f"no (+{_pct(r['R'] / R_TARGET - 1)})"
                   ) if r["depth"] >= 16 else "—"
            lines.append(
                f"| exact, depth k={r['depth']} | {r['depth']} | 1 | {r['repeats']} | "
                f"{1e3 * r['t_s']:.1f} | R_exact = {r['R']:.3f} | {r['R_of_minima']:.3f} | "
                f"{target} | {met} |"
            )
        lines.append("")
        for kind, cm in run.get("cost_model", {}).items():
            lines.append(
                f"Cost model, {kind} (least squares over all {cm['points']} repeats of "
                f"t / t_sgd = fixed + per_grad × n): fixed = {cm['fixed_in_sgd_steps']:.2f} "
                f"SGD steps per step, per_grad = {cm['per_grad_in_sgd_steps']:.3f} SGD steps "
                "per gradient evaluation."
            )
            lines.append("")
        cs = run["compile_s"]
        ratio = run.get("compile_ratio")
        compile_cells = ", ".join(f"{k}: {v:.2f} s" for k, v in cs.items())
        ratio_text = (
            "—" if ratio is None else
            f"{ratio:.2f} (target ≤ {COMPILE_RATIO_TARGET:.0f}: "
            f"{'met' if ratio <= COMPILE_RATIO_TARGET else 'missed'})"
        )
        mem = run["memory"]
        lines += [
            "Compile time (a fresh model's first one-step `fit()`, `steps_per_execution=1`, "
            "minus the same `fit()` repeated from step 1 once compiled; SGD: one execution of "
            f"its timed model): {compile_cells}; "
            f"ratio of the largest window to the smallest: {ratio_text}.",
            "",
            f"Memory: peak RSS {_mb(mem['peak_rss_bytes'])} during this model's run "
            f"(RSS at its start {_mb(mem['rss_start_bytes'])}; {mem['method']})"
            + (f"; GPU allocator peak {_mb(mem['gpu_peak_bytes'])}" if "gpu_peak_bytes" in mem else "")
            + ". Replay buffers (`model.replay_buffer.nbytes`): "
            + ", ".join(f"{k}: {_mb(v)}" for k, v in mem["buffer_bytes"].items()) + ".",
            "",
        ]
        if run["skipped"]:
            lines += [f"Skipped (time limit): {', '.join(run['skipped'])}.", ""]
    lines += [memory_markdown(result["buffer_memory"]), "", "### Targets",
        "",
        "| check | measured | target | met | miss |",
        "|---|---|---|---|---|",
    ]
    for t in result["targets"]:
        lines.append(f"| {t['name']} | {t['value']:.3f} | ≤ {t['target']:.2f} | "
                     f"{'yes' if t['met'] else 'no'} | "
                     + ("— |" if t["met"] else f"+{_pct(t['by'])} |"))
    if result.get("skipped"):
        lines += ["", f"Skipped (time limit): {', '.join(result['skipped'])}."]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def memory_markdown(bm):
    """The replay-buffer memory section (what `--memory-only` rewrites), with its markers."""
    store, p = bm["data_store"], bm["projection"]
    lines = [
        MEMORY_BEGIN,
        "### Replay-buffer memory, CIFAR-shaped batches",
        "",
        "Measured: `keras_bsgd.ReplayBuffer` objects built for batches of "
        f"{bm['measured'][0]['batch_size']} images of 32x32x3 with int32 labels, or for "
        "their int32 example indices (index buffering):",
        "",
        "| slot contents | slots | `nbytes` | bytes / slot |",
        "|---|---|---|---|",
    ]
    for r in bm["measured"]:
        what = r["dtype"] if r["dtype"] == "int32 indices" else f"{r['dtype']} images"
        lines.append(f"| {what} | {r['capacity']} | {_size(r['nbytes'])} | "
                     f"{r['bytes_per_slot']:,} |")
    lines += [
        "",
        f"Measured: the `keras_bsgd.DataStore` that index buffering gathers from, for "
        f"{store['num_examples']:,} uint8 images of 32x32x3 with int32 labels"
        f"{' (CIFAR-10 train)' if store['num_examples'] == 50_000 else ''}: "
        f"{_size(store['nbytes'])} (`nbytes`), once per run whatever its length.",
        "",
        f"Projected by arithmetic (not allocated): exact mode over {p['steps']:,} steps at "
        f"batch {p['batch_size']}; every step stores its batch, labels (int32) and "
        "learning rate (float32), or only its example indices and learning rate:",
        "",
        "| what is stored per step | bytes / step | buffer total | with the data store |",
        "|---|---|---|---|",
    ]
    for k, v in p["bytes_per_step"].items():
        what = (f"{p['batch_size']} int32 example indices (index buffering: NumPy input, "
                "the default)" if k == "int32 indices" else f"the full batch, {k} images")
        lines.append(f"| {what} | {v:,} | {_size(p['bytes'][k])} | "
                     f"{_size(p['total_bytes'][k])} |")
    lines.append(MEMORY_END)
    return "\n".join(lines)


def _replace_block(text, begin, end, generated):
    head, rest = text.split(begin, 1)
    return head + generated.rstrip("\n") + rest.split(end, 1)[1]


def write_report(result, path):
    """Writes the generated tables into `path` between the speed markers.

    Text outside the markers (hand-written analysis) is kept; a new file gets a
    title and the tables.
    """
    generated = to_markdown(result)
    text = None
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if text and BEGIN in text and END in text:
        text = _replace_block(text, BEGIN, END, generated)
    else:
        text = "# Performance\n\n" + generated
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def summary_lines(result):
    """The ratios, compile times and memory as `key = value` lines (what `main` prints)."""
    lines = []
    for run in result["runs"]:
        where = f"{run['model']} b{run['batch_size']}"
        lines.append(f"{where}: t_sgd = {1e3 * run['t_sgd_s']:.3f} ms")
        lines += [f"{where}: R({k}) = {v:.3f}" for k, v in run["R"].items()]
        lines += [f"{where}: R_exact({k}) = {v:.3f}" for k, v in run["R_exact"].items()]
        lines += [f"{where}: compile_s({k}) = {v:.2f}" for k, v in run["compile_s"].items()]
        if run.get("compile_ratio") is not None:
            lines.append(f"{where}: compile_ratio = {run['compile_ratio']:.2f}")
        lines.append(f"{where}: peak_rss_mb = {run['memory']['peak_rss_bytes'] / 2**20:.1f}")
        lines += [f"{where}: buffer_bytes({k}) = {v}"
                  for k, v in run["memory"]["buffer_bytes"].items()]
    lines += memory_summary_lines(result["buffer_memory"])
    missed = [t for t in result["targets"] if not t["met"]]
    lines.append(f"targets met: {len(result['targets']) - len(missed)}/{len(result['targets'])}")
    return lines


def memory_summary_lines(bm):
    """The buffer-memory measurements and projection as `key = value` lines."""
    lines = [f"buffer_bytes({r['dtype']}, capacity {r['capacity']}, "
             f"batch {r['batch_size']}) = {r['nbytes']}" for r in bm["measured"]]
    lines.append(f"data_store_bytes({bm['data_store']['num_examples']} uint8 32x32x3 "
                 f"examples) = {bm['data_store']['nbytes']}")
    p = bm["projection"]
    lines += [f"exact_{p['steps']}_steps_bytes({k}) = {v}" for k, v in p["bytes"].items()]
    lines.append(f"exact_{p['steps']}_steps_bytes(int32 indices + data store) = "
                 f"{p['total_bytes']['int32 indices']}")
    return lines


# -------------------------------------------------------------------- CLI ---


def build_parser(prog=PROG):
    """The argument parser of `main` (also used by `keras-bsgd bench`)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Speed and memory of BackwardSGD against Keras SGD: R(w) = t(w) / ((w+1) t_sgd), "
            "R_exact(k) = t(k) / (k t_sgd), compile times, peak RSS, replay-buffer bytes."
        ),
    )
    d = DEFAULTS
    parser.add_argument("--tiny", action="store_true",
                        help="smoke-test configuration (about 20 s); other flags override it")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None,
                        help=f"default: {' '.join(d['models'])}")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help=f"default: {' '.join(map(str, d['batch_sizes']))}")
    parser.add_argument("--windows", type=int, nargs="*", default=None,
                        help=f"default: {' '.join(map(str, d['windows']))}")
    parser.add_argument("--depths", type=int, nargs="*", default=None,
                        help=f"exact-mode depths; default: {' '.join(map(str, d['depths']))}")
    parser.add_argument("--sgd-steps-per-execution", type=int, default=None,
                        help=f"default: {d['sgd_steps_per_execution']}")
    parser.add_argument("--bsgd-steps-per-execution", type=int, default=None,
                        help="default: ceil(sgd_steps_per_execution / (w + 1)), capped so that "
                        "one execution takes about 2 s")
    parser.add_argument("--repeats", type=int, default=None, help=f"default: {d['repeats']}")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"timing seconds per setting; default: {d['budget_s']}")
    parser.add_argument("--no-fast-forward", dest="fast_forward", action="store_false",
                        default=None, help="run every step up to steady state / depth k")
    parser.add_argument("--memory-steps", type=int, default=None,
                        help=f"steps of the memory projection; default: {d['memory_steps']}")
    parser.add_argument("--memory-examples", type=int, default=None,
                        help="examples in the measured index-buffering data store; default: "
                        f"{d['memory_examples']}")
    parser.add_argument("--memory-only", action="store_true",
                        help="measure only the buffer memory and rewrite only its section of "
                        "--output (seconds, no timing)")
    parser.add_argument("--time-limit-s", type=float, default=None,
                        help="skip what remains after this many seconds")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--output", default=None,
                        help="Markdown file to write the tables into (e.g. docs/performance.md)")
    parser.add_argument("--json", default=None, help="also write the full result as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv=None, prog=PROG):
    """Runs the benchmark from the command line; prints the ratios.

    Args:
        argv: Arguments without the program name (default: `sys.argv[1:]`).
        prog: Program name for help and the recorded command.

    Returns:
        0.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog).parse_args(argv)
    config = dict(TINY if args.tiny else DEFAULTS)
    for key in config:
        value = getattr(args, key, None)
        if value is not None:
            config[key] = value
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    def checkpoint(partial):
        if args.json:
            with open(args.json, "w") as f:
                json.dump(partial, f, indent=1)

    if args.memory_only:
        return _memory_only(config, args.output)
    result = benchmark(**config, command=" ".join([prog, *map(shlex.quote, argv)]), log=log,
                       checkpoint=checkpoint)
    print()
    for line in summary_lines(result):
        print(line)
    if args.output:
        write_report(result, args.output)
        print(f"Wrote {args.output}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"Wrote {args.json}")
    return 0


def _memory_only(config, output):
    bm = buffer_memory(config["memory_batch_size"], (32, 32, 3),
                       _memory_capacity(config["windows"]), config["memory_steps"],
                       config["memory_examples"])
    for line in memory_summary_lines(bm):
        print(line)
    if output:
        with open(output) as f:
            text = f.read()
        if MEMORY_BEGIN not in text or MEMORY_END not in text:
            raise ValueError(
                f"--memory-only rewrites the memory section of an existing report, and "
                f"{output} has none: run the full benchmark first. Received: --output {output}"
            )
        with open(output, "w") as f:
            f.write(_replace_block(text, MEMORY_BEGIN, MEMORY_END, memory_markdown(bm)))
        print(f"Wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
