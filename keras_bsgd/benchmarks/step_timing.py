"""Per-step time of BackwardSGD against Keras SGD, measured inside `fit()` on any backend.

Backend-neutral (Keras, NumPy and `time` only), so that it runs on a machine
with JAX and no TensorFlow. Every model is compiled with `jit_compile=True`
and trained by `fit()` on a fixed synthetic NumPy stream; a `StepClock`
callback takes a timestamp at the end of every step once the step has
finished (it reads the loss, which waits for the compiled step). A step's
time is the interval between two consecutive timestamps of one `fit()`, so
it includes Keras' per-step host work (the data adapter, the callbacks),
which a user's `fit()` pays too. The first step of each `fit()` is never a
timed step; the first step of a model's first `fit()` holds its compile time.

For one model at one batch size (`time_model`):

* `t_sgd`: the median step of `keras.optimizers.SGD` (same learning rate,
  same initial weights, same batches), timed in short `fit()`s before and
  after every BackwardSGD `fit()`; each ratio uses the mean of the two SGD
  medians around it, so a change in machine speed between settings cancels.
* `t(w)`: the median step of `BackwardSGD(window=w)` in steady state (steps
  `w + 1 ... w + m`, each `w + 1` gradient evaluations), and
  `R(w) = t(w) / ((w + 1) * t_sgd)`, as in `keras_bsgd.benchmarks.speed`.
* `t(k)`: exact mode (`window=None`) in one run with `max_steps` the deepest
  depth timed plus `m`: the steps at depths `k ... k + m - 1` rescaled to
  depth `k` (a step at depth `j` costs `j` gradient evaluations), and
  `R_exact(k) = t(k) / (k * t_sgd)`.

Unlike the TensorFlow speed benchmark this one does not fast-forward (it
writes no buffer slots): every step up to depth `k` runs for real, so a
setting whose projected cost does not fit the time left is skipped and
listed as such.
"""

import gc
import statistics
import time
import traceback

import keras
import numpy as np

import keras_bsgd

NUM_CLASSES = 10
NUM_BATCHES = 16  # distinct batches, cycled (as in keras_bsgd.benchmarks.speed)
LEARNING_RATE = 0.01  # keras_bsgd.benchmarks.speed's


class _Failed(Exception):
    """A setting raised; recorded in the result's `errors` and `skipped`."""


class Deadline:
    """The end of a time limit of `limit_s` seconds from now; `None`: no limit."""

    def __init__(self, limit_s=None):
        self.end = None if limit_s is None else time.perf_counter() + limit_s

    def left(self):
        """Seconds left (`inf` without a limit; negative once passed)."""
        return float("inf") if self.end is None else self.end - time.perf_counter()

    def passed(self):
        return self.left() < 0


class StepClock(keras.callbacks.Callback):
    """Records when each step of one `fit()` has finished.

    Args:
        model: The model being fit, stopped (`stop_training`) once
            `deadline` has passed. Held apart from `self.model`, which on
            JAX writes the whole training state back to the variables.
        deadline: A `Deadline`, or `None`.
    """

    def __init__(self, model, deadline=None):
        super().__init__()
        self._target = model
        self._deadline = deadline
        self.begin = None
        self.ends = []

    def on_train_batch_begin(self, batch, logs=None):
        if self.begin is None:
            self.begin = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        # JAX and TensorFlow dispatch asynchronously: the loss is ready once
        # the compiled step has run (Keras has usually read it already).
        keras.ops.convert_to_numpy(logs["loss"])
        self.ends.append(time.perf_counter())
        if self._deadline is not None and self._deadline.passed():
            self._target.stop_training = True

    @property
    def first_step_s(self):
        """Seconds of the first step (with tracing and compilation, if any)."""
        return self.ends[0] - self.begin

    def step_s(self, step):
        """Seconds of the 1-based `step` (at least 2) of this `fit()`."""
        if not 2 <= step <= len(self.ends):
            raise ValueError(
                f"Expected a step between 2 and {len(self.ends)}. Received: step={step}"
            )
        return self.ends[step - 1] - self.ends[step - 2]


def synthetic_stream(input_shape, batch_size, steps, seed=0):
    """`steps` batches cycling `NUM_BATCHES` fixed random batches.

    Args:
        input_shape: Shape of one example.
        batch_size: Examples per batch.
        steps: Batches in the stream.
        seed: Seed of the batches (the same seed gives the same stream).

    Returns:
        `(x, y)`: float32 inputs in [0, 1) of shape
        `(steps * batch_size, *input_shape)` and int32 labels in
        [0, NUM_CLASSES).
    """
    rng = np.random.default_rng(seed)
    size = NUM_BATCHES * batch_size
    x = rng.random((size, *input_shape), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size, dtype=np.int32)
    index = np.arange(steps * batch_size) % size
    return x[index], y[index]


def timed_fit(model, input_shape, batch_size, steps, seed=0, deadline=None):
    """One `fit()` of `steps` steps on the synthetic stream; returns its `StepClock`."""
    x, y = synthetic_stream(input_shape, batch_size, steps, seed)
    clock = StepClock(model, deadline)
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
              callbacks=[clock])
    return clock


def windowed_evals(window, steps):
    """Gradient evaluations of `steps` windowed steps from a fresh run (docs/design.md §1)."""
    return sum(min(k, window) + (k > window) for k in range(1, steps + 1))


def exact_evals(steps):
    """Gradient evaluations of `steps` exact-mode steps from a fresh run."""
    return steps * (steps + 1) // 2


def _counted_evals(model):
    """`model.gradient_evaluations`, or `None` where the trainer has none."""
    try:
        return int(model.gradient_evaluations)
    except (AttributeError, NotImplementedError):
        return None


def _compile(model, optimizer):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    return model


class _Setting:
    """Builds, times and sums up one model of one `time_model` call."""

    def __init__(self, build, input_shape, batch_size, seed, deadline):
        self.build, self.input_shape = build, input_shape
        self.batch_size, self.seed, self.deadline = batch_size, seed, deadline

    def model(self, optimizer, wrap=False):
        keras.utils.set_random_seed(self.seed)  # the same initial weights for every setting
        model = self.build()
        if wrap:
            model = keras_bsgd.wrap(model)
        return _compile(model, optimizer)

    def fit(self, model, steps):
        return timed_fit(model, self.input_shape, self.batch_size, steps, self.seed,
                         self.deadline)


def _summary(times, t_sgd, grad_evals, **fields):
    """Median and fastest step of `times` (seconds at the cost of `grad_evals`) and ratios."""
    t = statistics.median(times)
    return {
        **fields,
        "grad_evals": grad_evals,
        "steps_timed": len(times),
        "t_s": t,
        "t_min_s": min(times),
        "t_sgd_s": t_sgd,
        "R": t / (grad_evals * t_sgd),
        "samples_s": times,
    }


def time_model(build, input_shape, batch_size, windows, depths, steps=10, seed=0,
               time_limit_s=None, log=print):
    """Times SGD, windowed and exact BackwardSGD on one model at one batch size.

    Args:
        build: A function returning a fresh, uncompiled `keras.Model`
            (logits over `NUM_CLASSES` classes).
        input_shape: Shape of one example.
        batch_size: Examples per batch.
        windows: Windows `w` of windowed backward-SGD.
        depths: Exact-mode depths `k`.
        steps: Steps timed per setting (`m`); SGD times `steps` steps per
            `fit()` too.
        seed: Seed of the initial weights and the stream.
        time_limit_s: Seconds for the whole call; a setting whose projected
            cost does not fit what is left is skipped, and a `fit()` running
            past it stops. `None`: no limit.
        log: Progress printer (`None`: silent).

    Returns:
        A JSON-ready dict: `batch_size`, `params`, `t_sgd_s` (median of
        every SGD `fit()`), `sgd_samples_s`, `windowed` and `exact` (lists
        of dicts with `t_s`, `R`, `t_sgd_s`, `first_step_s`, `compile_s`,
        `grad_evals_counted` and `grad_evals_expected`), `R` and `R_exact`
        (by `"w=.."` / `"k=.."`), `compile_s`, `skipped` (strings with the
        reason).
    """
    if steps < 2:
        raise ValueError(f"`steps` must be at least 2. Received: steps={steps}")
    log = log or (lambda *args, **kwargs: None)
    deadline = Deadline(time_limit_s)
    setting = _Setting(build, input_shape, batch_size, seed, deadline)
    out = {"batch_size": batch_size, "windowed": [], "exact": [], "skipped": [],
           "compile_s": {}, "first_step_s": {}}

    sgd = setting.model(keras.optimizers.SGD(LEARNING_RATE))
    out["params"] = int(sgd.count_params())
    sgd_samples = []

    def sgd_step_s():
        clock = setting.fit(sgd, steps + 1)
        t = statistics.median(clock.step_s(k) for k in range(2, len(clock.ends) + 1))
        sgd_samples.append(t)
        return t, clock

    before, clock = sgd_step_s()
    out["first_step_s"]["sgd"] = clock.first_step_s
    out["compile_s"]["sgd"] = clock.first_step_s - before
    log(f"  b{batch_size}: {out['params']:,} parameters; SGD {1e3 * before:.3f} ms/step, "
        f"first step {clock.first_step_s:.2f} s")

    def projected_s(grad_evals):
        # Compile like the slowest so far; each gradient evaluation at least an SGD step.
        per_grad = max([before] + [r["t_s"] / r["grad_evals"] for r in out["windowed"]])
        return max(out["compile_s"].values()) + grad_evals * per_grad

    def run(name, total_steps, expected_evals, **settings):
        """One fit of `BackwardSGD(**settings)`: its clock and model (None, None: skipped)."""
        cost = projected_s(expected_evals)
        if cost > deadline.left():
            out["skipped"].append(f"{name} (projected {cost:.0f} s, {deadline.left():.0f} s left)")
            log(f"  b{batch_size}: {out['skipped'][-1]}: skipped")
            return None, None
        try:
            optimizer = keras_bsgd.BackwardSGD(LEARNING_RATE, **settings)
            model = setting.model(optimizer, wrap=True)
            return setting.fit(model, total_steps), model
        except Exception as error:  # one failing setting must not lose the others' times
            out["skipped"].append(f"{name} (error: {type(error).__name__}: {error})"[:500])
            out.setdefault("errors", {})[name] = traceback.format_exc()
            log(f"  b{batch_size}: {name} failed: {type(error).__name__}: {error}"[:500])
            raise _Failed from error

    for window in windows:
        total = window + steps
        try:
            clock, model = run(f"w={window}", total, windowed_evals(window, total),
                               window=window)
        except _Failed:
            continue
        if clock is None:
            continue
        timed = range(max(window + 1, 2), total + 1)
        if len(clock.ends) < total:  # stopped at the deadline
            out["skipped"].append(f"w={window} (stopped at the time limit)")
            continue
        after, _ = sgd_step_s()
        record = _summary([clock.step_s(k) for k in timed], (before + after) / 2, window + 1,
                          window=window)
        _add_run_facts(record, out, f"w={window}", clock, model, record["t_sgd_s"],
                       windowed_evals(window, total))
        out["windowed"].append(record)
        log(f"  b{batch_size}: R(w={window}) = {record['R']:.3f} "
            f"(t = {1e3 * record['t_s']:.2f} ms/step, first step {clock.first_step_s:.2f} s)")
        before = after
        del model
        gc.collect()

    _time_exact(setting, out, sorted(depths), steps, run, sgd_step_s, before, log)
    out["t_sgd_s"] = statistics.median(sgd_samples)
    out["t_sgd_min_s"] = min(sgd_samples)
    out["sgd_samples_s"] = sgd_samples
    out["R"] = {f"w={r['window']}": r["R"] for r in out["windowed"]}
    out["R_exact"] = {f"k={r['depth']}": r["R"] for r in out["exact"]}
    return out


def _time_exact(setting, out, depths, steps, run, sgd_step_s, before, log):
    """Exact mode: one run as deep as the time left allows, timed around each depth."""
    planned = list(depths)
    while planned:  # the deepest run whose projected cost fits
        total = planned[-1] + steps - 1
        try:
            clock, model = run(f"exact k<={planned[-1]}", total, exact_evals(total),
                               max_steps=total)
        except _Failed:
            return
        if clock is not None:
            break
        planned.pop()
    out["skipped"] += [f"exact k={k}" for k in depths if k not in planned]
    if not planned:
        return
    after, _ = sgd_step_s()
    for depth in planned:
        timed = range(max(depth, 2), depth + steps)
        if len(clock.ends) < timed[-1]:
            out["skipped"].append(f"exact k={depth} (stopped at the time limit)")
            continue
        # The step at depth j costs j gradient evaluations: rescaled to depth k.
        times = [clock.step_s(j) * depth / j for j in timed]
        record = _summary(times, (before + after) / 2, depth, depth=depth)
        out["exact"].append(record)
        log(f"  b{setting.batch_size}: R_exact(k={depth}) = {record['R']:.3f} "
            f"(t = {1e3 * record['t_s']:.2f} ms/step)")
    run_facts = {"max_steps": planned[-1] + steps - 1, "steps_run": len(clock.ends)}
    out["exact_run"] = _add_run_facts(run_facts, out, "exact", clock, model, (before + after) / 2,
                                      exact_evals(len(clock.ends)))


def _add_run_facts(record, out, key, clock, model, t_sgd, expected_evals):
    """The run's first step, compile time and gradient-evaluation count, in `record` and `out`.

    Returns:
        `record`, with `first_step_s`, `compile_s`, `grad_evals_counted`
        and `grad_evals_expected` added.
    """
    out["first_step_s"][key] = clock.first_step_s
    # The first step of a fresh run costs one gradient evaluation: about an SGD step.
    out["compile_s"][key] = clock.first_step_s - t_sgd
    record["first_step_s"] = clock.first_step_s
    record["compile_s"] = out["compile_s"][key]
    record["grad_evals_counted"] = _counted_evals(model)
    record["grad_evals_expected"] = expected_evals
    return record
