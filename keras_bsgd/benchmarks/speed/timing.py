"""Timing primitives of the speed benchmark: one synchronized call, warm-up, compile time,
and the statistics of repeated measurements."""

import statistics
import time

import keras
import numpy as np

import keras_bsgd


def sync(logs):
    """Waits for a train function's results: the loss, as a Python float."""
    return float(keras.ops.convert_to_numpy(logs["loss"]))


def time_call(model, iterator):
    """Seconds for one `train_function` call (one execution), synchronized."""
    start = time.perf_counter()
    logs = model.train_function(iterator)
    sync(logs)
    return time.perf_counter() - start


def warm_up(model, iterator, calls=3, seconds=1.0):
    """A few untimed calls on `iterator`: at least one, at most `calls`, stopping after `seconds`."""
    start = time.perf_counter()
    for _ in range(calls):
        sync(model.train_function(iterator))
        if time.perf_counter() - start > seconds:
            break


def summarize(pairs, grad_evals, **fields):
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


def cost_model(results):
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


class Deadline:
    """The end of a time limit of `limit_s` seconds from now; `None` or 0: no limit."""

    def __init__(self, limit_s):
        self.end = None if not limit_s else time.perf_counter() + limit_s

    def passed(self):
        return self.end is not None and time.perf_counter() > self.end


def compile_time(model, dataset, steps):
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
