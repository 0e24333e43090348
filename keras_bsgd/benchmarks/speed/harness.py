"""`benchmark` and `bench_model`: every setting of every model, timed side by side with SGD."""

import datetime
import gc
import math
import os
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

import keras_bsgd
from keras_bsgd.benchmarks.models import MODELS
from keras_bsgd.benchmarks.speed.config import DEFAULTS
from keras_bsgd.benchmarks.speed.config import INPUT_SHAPES
from keras_bsgd.benchmarks.speed.config import LEARNING_RATE
from keras_bsgd.benchmarks.speed.config import NUM_BATCHES
from keras_bsgd.benchmarks.speed.config import NUM_CLASSES
from keras_bsgd.benchmarks.speed.machine import machine_info
from keras_bsgd.benchmarks.speed.memory import PeakMemory
from keras_bsgd.benchmarks.speed.memory import buffer_memory
from keras_bsgd.benchmarks.speed.memory import memory_capacity
from keras_bsgd.benchmarks.speed.targets import check_targets
from keras_bsgd.benchmarks.speed.timing import Deadline
from keras_bsgd.benchmarks.speed.timing import compile_time
from keras_bsgd.benchmarks.speed.timing import cost_model
from keras_bsgd.benchmarks.speed.timing import summarize
from keras_bsgd.benchmarks.speed.timing import time_call
from keras_bsgd.benchmarks.speed.timing import warm_up


def _data(input_shape, batch_size, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((NUM_BATCHES, batch_size, *input_shape), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, (NUM_BATCHES, batch_size), dtype=np.int32)
    # One element per (static-shape) batch, cycled forever.
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat(), (x, y)


def _build(name, input_shape, seed):
    keras.utils.set_random_seed(seed)
    return MODELS[name](input_shape, NUM_CLASSES)


def _compile(model, optimizer, steps_per_execution):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
        steps_per_execution=steps_per_execution,
    )
    return model


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
    deadline = deadline or Deadline(None)
    input_shape = INPUT_SHAPES[name]
    dataset, batches = _data(input_shape, batch_size, seed)
    memory = PeakMemory().start()
    skipped = []
    out = {"model": name, "batch_size": batch_size, "input_shape": list(input_shape)}

    # Plain Keras SGD: compiled first, so one-time XLA start-up lands here.
    sgd_spe = sgd_steps_per_execution
    sgd = _compile(_build(name, input_shape, seed),
                   keras.optimizers.SGD(LEARNING_RATE), sgd_spe)
    out["params"] = int(sgd.count_params())
    compile_s = {"sgd": compile_time(sgd, dataset, sgd_spe)}
    sgd_iterator = iter(dataset)
    warm_up(sgd, sgd_iterator)
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
        compile_s["exact"] = compile_time(exact_model, dataset, 1)
        exact_iterator = iter(dataset)
        calls = []
        for _ in range(2):
            exact_model.optimizer.iterations.assign(0)
            calls.append(time_call(exact_model, exact_iterator))
        step_s = min(calls)
        warm_up(exact_model, exact_iterator)  # steps 2, 3, ...: cheap
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
        compile_s[f"w={window}"] = compile_time(make_bsgd(window, 1), dataset, 1)
        model = make_bsgd(window, spe)
        model.fit(dataset, steps_per_epoch=spe, epochs=1, verbose=0, shuffle=False)
        iterator = iter(dataset)
        # Warm-up on this iterator while steps are still cheap (k <= w).
        warm_up(model, iterator)
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
        seconds = time_call(sgd, sgd_iterator) / sgd_spe
        sgd_samples.append(seconds)
        return seconds

    sgd_samples = []
    keys = list(timed)
    # An untimed round first: the first calls after other work are slower.
    warm_up(sgd, sgd_iterator)
    for key in keys:
        time_call(timed[key]["model"], timed[key]["iterator"])

    records = {key: [] for key in keys}  # (seconds per step, SGD seconds per step)
    spent, done, before = dict.fromkeys(keys, 0.0), set(), None
    for _ in range(repeats):
        active = [key for key in keys if key not in done]
        if not active or (before is not None and deadline.passed()):
            break
        before = sgd_step_s() if before is None else before
        for key in active:
            entry = timed[key]
            seconds = time_call(entry["model"], entry["iterator"])
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
            summarize(records[key], window + 1, window=window,
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
            time_call(model, iterator)
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
                seconds = time_call(model, iterator)
                after = sgd_step_s()
                spent_k += seconds
                # Without fast-forward, steps past depth k are rescaled to k.
                pairs.append((seconds * depth / step, (before + after) / 2))
                before = after
            out["exact"].append(summarize(pairs, depth, depth=depth))
            log(f"[{name} b{batch_size}] R_exact(k={depth}) = {out['exact'][-1]['R']:.3f}  "
                f"(t = {1e3 * out['exact'][-1]['t_s']:.1f} ms/step)")
        del model, exact_model
    out["cost_model"] = {}
    for kind in ("windowed", "exact"):
        if len({r["grad_evals"] for r in out[kind]}) >= 2:
            out["cost_model"][kind] = cost_model(out[kind])
    out["t_sgd_all_s"] = statistics.median(sgd_samples)
    out["t_sgd_min_s"] = min(sgd_samples)
    out["R"] = {f"w={r['window']}": r["R"] for r in out["windowed"]}
    out["R_exact"] = {f"k={r['depth']}": r["R"] for r in out["exact"]}
    out["memory"] = {**memory.peak(), "buffer_bytes": buffer_bytes}
    out["skipped"] = skipped
    sgd = None  # frees the model before gc.collect() (sgd_step_s holds the name, not a copy)
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
        models: Names from `INPUT_SHAPES` (models of
            `keras_bsgd.benchmarks.models.MODELS`).
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
    unknown = [name for name in models if name not in INPUT_SHAPES]
    if unknown:
        raise ValueError(
            f"Unknown model. Expected names from {sorted(INPUT_SHAPES)}. Received: {unknown}"
        )
    log = log or (lambda *a, **k: None)
    start = time.perf_counter()
    deadline = Deadline(time_limit_s)
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
        memory_batch_size, (32, 32, 3), memory_capacity(windows), memory_steps,
        memory_examples,
    )
    result["targets"] = check_targets(result)
    result["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    result["wall_time_s"] = time.perf_counter() - start
    return result
