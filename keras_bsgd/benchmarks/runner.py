"""`compare`: backward-SGD against practitioners' baselines, from one shared warm start."""

import dataclasses
import math
import os
import time

import keras
import numpy as np

import keras_bsgd
from keras_bsgd import datasets
from keras_bsgd.benchmarks import digit_images
from keras_bsgd.benchmarks import methods as methods_lib
from keras_bsgd.benchmarks import metrics
from keras_bsgd.benchmarks import models
from keras_bsgd.benchmarks import plots
from keras_bsgd.benchmarks import report
from keras_bsgd.benchmarks.counter import GradientCounter
from keras_bsgd.benchmarks.evaluation import IterateProbe
from keras_bsgd.benchmarks.recorder import StepRecorder
from keras_bsgd.benchmarks.recorder import weights_sha256
from keras_bsgd.benchmarks.stream import BatchStream

DEFAULTS = {
    "dataset": "bsgd_digits",
    "model": "mlp",
    "batch_size": 16,
    "learning_rate": 0.1,
    "momentum": 0.0,
    "weight_decay": 0.01,
    "forward_steps": 5000,
    "steps": 1000,
    "eval_every": 10,
    # Windowed backward-SGD behaved as forward SGD in every run of docs/results.md;
    # `windows=(16,)` brings it back (30 s of the default's 3 minutes).
    "windows": (),
    "seeds": (0, 1, 2),
    "exact": True,
    "baselines": True,
    "schedule_free_learning_rates": methods_lib.SCHEDULE_FREE_GRID,
    "validation_fraction": 0.1,
    "output": "bsgd_compare",
    "data_dir": None,
    "jit_compile": True,
    "eval_batch_size": 1000,
}
"""`compare`'s defaults, which the command line shows and uses (docs/results.md
says how they were chosen: a warm start inside the basin, with weight decay so
that the maps contract, in about 3 minutes on 2 CPU cores)."""


@dataclasses.dataclass
class ComparisonResult:
    """What `compare` returns.

    Args:
        output: The output folder.
        paths: Written files by kind (`steps_csv`, `evaluations_csv`,
            `runs_json`, `summary_json`, `summary_md`, `plot`).
        summary: The summary dict written to `summary.json`.
        runs: Per-run dicts with `method`, `seed`, `steps`, `evals`,
            `summary`, and the weight fingerprints `warm_start_sha256` (the
            shared warm start) and `start_sha256` (what the run's first step
            started from).
        wall_time_s: Wall time of the whole comparison.
    """

    output: str
    paths: dict
    summary: dict
    runs: list
    wall_time_s: float


BATCH_NORM_EXAMPLES = 512
"""Training examples whose batch statistics an averaged iterate's BatchNormalization gets."""


def _data(config):
    """`(spec, train, validation, test)` of the configured dataset, as NumPy arrays."""
    name, data_dir = config["dataset"], config["data_dir"]
    rendered = name in digit_images.DATASETS
    spec = digit_images.DATASETS[name] if rendered else datasets.info(name)
    source = "bsgd_digits" if rendered else name
    # The same arrays on every backend: TFDS' on TensorFlow, NumPy's (equal bitwise) on JAX.
    train = datasets.load_arrays(source, "train", data_dir)
    test = datasets.load_arrays(source, "test", data_dir)
    if rendered:
        train = digit_images.render(name, train[0], "train"), train[1]
        test = digit_images.render(name, test[0], "test"), test[1]
    if keras.backend.backend() == "jax":
        # JAX without x64 holds int64 labels as int32 (and warns); the values are the same.
        train, test = (train[0], train[1].astype("int32")), (test[0], test[1].astype("int32"))
    train, validation = _split(train, config["validation_fraction"])
    return spec, train, validation, test


def _build(model_name, spec):
    """A `keras_bsgd.Model` around a benchmark model, with a gradient counter on its logits."""
    base = models.build(model_name, spec.input_shape, spec.num_classes)
    counter = GradientCounter(name="gradient_counter")
    model = keras_bsgd.Model(base.inputs, counter(base.outputs[0]), name=base.name)
    return model, counter


def _compile(model, optimizer, config):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=config["jit_compile"],
    )
    if isinstance(optimizer, keras.optimizers.ScheduleFreeAdamW):
        # Keras 3.15's TensorFlow trainer builds the optimizer while it traces
        # the train step, and ScheduleFreeAdamW's build (copying the weights
        # into its `momentum` z) then does not take: z starts at 0 and the
        # first step sends the weights to ~0. Built here, eagerly, it does.
        # (JAX's trainer builds it eagerly itself: the same z either way.)
        optimizer.build(model.trainable_variables)


def _warm_up(model_name, spec, initial, stream, config, on_step):
    """The shared warm-up: `forward_steps` steps of Keras SGD from `initial`.

    Returns the weights it reaches (all of them, non-trainable included) and
    its training time.
    """
    steps = config["forward_steps"]
    if steps == 0:
        return initial, 0.0
    model, _ = _build(model_name, spec)
    model.set_weights(initial)
    _compile(model, keras.optimizers.SGD(
        config["learning_rate"], momentum=config["momentum"],
        weight_decay=config["weight_decay"],
    ), config)
    x, y = stream.chunk(0, steps)
    callbacks = []
    if on_step:
        callbacks.append(keras.callbacks.LambdaCallback(on_batch_end=lambda *_, **__: on_step()))
    started = time.perf_counter()
    model.fit(x, y, batch_size=stream.batch_size, epochs=1, shuffle=False, verbose=0,
              callbacks=callbacks)
    wall = time.perf_counter() - started
    if int(model.optimizer.iterations) != steps:
        raise RuntimeError(f"The warm-up ran {int(model.optimizer.iterations)} steps, not {steps}.")
    return model.get_weights(), wall


def _probe(model, method, x, config):
    return IterateProbe(
        model, x, config["eval_batch_size"], average=methods_lib.evaluated_average(method),
        jit_compile=config["jit_compile"], recalibration_x=config["_batch_norm_x"],
    )


def _split(train, fraction):
    """`(train, validation)`: a fixed `fraction` of the training examples held out."""
    x, y = train
    held = int(round(fraction * len(x)))
    if not held:
        return train, None
    # One fixed draw for every seed and method: the held-out examples are never trained on.
    order = np.random.default_rng(0).permutation(len(x))
    keep, out = np.sort(order[held:]), np.sort(order[:held])
    return (x[keep], y[keep]), (x[out], y[out])


def _choose_schedule_free_rate(model_name, spec, warm, stream, validation, config, on_step):
    """`schedule_free_adamw`'s learning rate: the grid's best on the held-out split.

    Each rate of the grid runs the `steps` steps from the warm start `warm`
    on the stream; the one whose averaged iterate `x` has the lowest
    held-out loss at the last step wins (the test set is never looked at).
    """
    grid = [float(r) for r in config["schedule_free_learning_rates"]]
    if len(grid) == 1:
        return grid[0], {}
    losses = {}
    for rate in grid:
        model, _ = _build(model_name, spec)
        model.set_weights(warm)
        _compile(model, methods_lib.schedule_free(
            rate, config["learning_rate"], config["weight_decay"]), config)
        callbacks = []
        if on_step:
            callbacks.append(keras.callbacks.LambdaCallback(
                on_batch_end=lambda *_, **__: on_step()))
        x, y = stream.chunk(config["forward_steps"], config["steps"])
        model.fit(x, y, batch_size=stream.batch_size, epochs=1, shuffle=False, verbose=0,
                  callbacks=callbacks)
        logits = _probe(model, methods_lib.SCHEDULE_FREE, validation[0], config).read()[1]
        loss = metrics.cross_entropy_and_accuracy(logits, validation[1])[0]
        losses[rate] = loss if np.isfinite(loss) else math.inf
    return min(grid, key=losses.get), {str(rate): loss for rate, loss in losses.items()}


def _train(method, make_optimizer, model_name, spec, warm, stream, test, config, on_step):
    """One method's `steps` steps from the warm start `warm`; evaluates every `eval_every`."""
    model, counter = _build(model_name, spec)
    model.set_weights(warm)
    # A fresh optimizer: momentum (and the EMA) start from zero for every method.
    _compile(model, make_optimizer(), config)
    probe = _probe(model, method, test[0], config)
    gpu = _tensorflow_gpu()
    if gpu:
        gpu.experimental.reset_memory_stats("GPU:0")
    eval_rows, iterates, logits = [], [], []

    backward = isinstance(model.optimizer, keras_bsgd.BackwardSGD)

    def evaluate(step):
        if backward and model.replayed_step != step:
            raise RuntimeError(
                f"{method} holds the iterate of step {model.replayed_step} at evaluation "
                f"step {step}: it must replay at every evaluation (replay_every)."
            )
        weights, test_logits = probe.read()
        loss, accuracy = metrics.cross_entropy_and_accuracy(test_logits, test[1])
        last = recorder.rows[-1] if recorder.rows else {"grad_evals": 0, "wall_time_s": 0.0}
        eval_rows.append({
            "step": step, "grad_evals": last["grad_evals"], "wall_time_s": last["wall_time_s"],
            "test_loss": loss, "test_accuracy": accuracy,
        })
        iterates.append(weights)
        logits.append(test_logits.astype("float32"))

    steps, every = config["steps"], config["eval_every"]
    recorder = StepRecorder(counter, steps, every, evaluate, on_step=on_step,
                            observe=probe.observe)
    evaluate(0)
    x, y = stream.chunk(config["forward_steps"], steps)
    # One fit() of N steps: backward-SGD replays at multiples of E and at the end.
    model.fit(x, y, batch_size=stream.batch_size, epochs=1, shuffle=False, verbose=0,
              callbacks=[recorder])
    if int(model.optimizer.iterations) != steps:
        raise RuntimeError(
            f"{method} ran {int(model.optimizer.iterations)} steps instead of {steps}."
        )
    for row, values in zip(eval_rows, _transpose(metrics.evaluation_columns(iterates, logits))):
        row.update(values)
    run = {
        "method": method, "seed": stream.seed, "steps": recorder.rows, "evals": eval_rows,
        "warm_start_sha256": weights_sha256(warm), "start_sha256": recorder.start_sha256,
    }
    if backward:  # The library's own count, beside the counter layer's.
        run["library_grad_evals"] = model.gradient_evaluations
    if gpu:
        run["peak_gpu_mb"] = gpu.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return run


def _tensorflow_gpu():
    """`tf.config` where TensorFlow trains on a GPU (its peak memory is measured), else `None`.

    On JAX no peak is recorded: its allocator's peak cannot be reset per run.
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf.config if tf.config.list_physical_devices("GPU") else None


def backend_info():
    """The Keras backend that trains, and its version, as a dict for the report."""
    import importlib.metadata

    backend = keras.backend.backend()
    return {"backend": backend, "backend_version": importlib.metadata.version(backend),
            "keras_version": keras.__version__}


def _transpose(columns):
    """`{name: [v0, v1, ...]}` to `[{name: v0}, {name: v1}, ...]`."""
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*columns.values())]


def _validate(config):
    known = sorted(datasets.DATASETS) + sorted(digit_images.DATASETS)
    if config["dataset"] not in known:
        raise ValueError(
            f"Unknown dataset. Expected one of {known}. Received: dataset={config['dataset']!r}"
        )
    windows, seeds = config["windows"], config["seeds"]
    if any(w < 1 for w in windows):
        raise ValueError(
            f"Every window must be a positive integer. Received: windows={tuple(windows)}"
        )
    if not seeds:
        raise ValueError(f"Give at least one seed. Received: seeds={tuple(seeds)}")
    for name in ("steps", "eval_every"):
        if config[name] < 1:
            raise ValueError(
                f"`{name}` must be a positive integer. Received: {name}={config[name]}"
            )
    if config["forward_steps"] < 0:
        raise ValueError(
            "`forward_steps` must be 0 (a cold start) or a positive integer. "
            f"Received: forward_steps={config['forward_steps']}"
        )
    decay = config["weight_decay"]
    if decay is not None and decay < 0:
        raise ValueError(f"`weight_decay` must be >= 0 or None. Received: weight_decay={decay}")
    fraction, grid = config["validation_fraction"], config["schedule_free_learning_rates"]
    if not 0 <= fraction < 1:
        raise ValueError(
            f"`validation_fraction` must be in [0, 1). Received: validation_fraction={fraction}"
        )
    if not grid or any(not rate > 0 for rate in grid):
        raise ValueError(
            "Give at least one positive learning rate. "
            f"Received: schedule_free_learning_rates={tuple(grid)}"
        )
    if config["baselines"] and len(grid) > 1 and not fraction:
        raise ValueError(
            "Choosing schedule_free_adamw's learning rate needs a held-out split: give "
            "`validation_fraction` > 0 or a single learning rate. "
            f"Received: validation_fraction={fraction}"
        )


def _method_learning_rates(methods, config):
    """The learning rate each method uses, as the report writes it."""
    lr = f"{config['learning_rate']:g}"
    rates = {m: lr for m in methods}
    if methods_lib.FORWARD_DECAY in rates:
        rates[methods_lib.FORWARD_DECAY] = f"{lr} → 0 (cosine)"
    if methods_lib.SCHEDULE_FREE in rates:
        chosen = f"{config['schedule_free_learning_rate']:g} (Adam"
        rates[methods_lib.SCHEDULE_FREE] = (
            chosen + ", chosen on held-out)" if config["schedule_free_sweep"] else chosen + ")")
    return rates


def compare(
    dataset=DEFAULTS["dataset"],
    model=DEFAULTS["model"],
    batch_size=DEFAULTS["batch_size"],
    learning_rate=DEFAULTS["learning_rate"],
    momentum=DEFAULTS["momentum"],
    weight_decay=DEFAULTS["weight_decay"],
    forward_steps=DEFAULTS["forward_steps"],
    steps=DEFAULTS["steps"],
    eval_every=DEFAULTS["eval_every"],
    windows=DEFAULTS["windows"],
    seeds=DEFAULTS["seeds"],
    exact=DEFAULTS["exact"],
    baselines=DEFAULTS["baselines"],
    schedule_free_learning_rates=DEFAULTS["schedule_free_learning_rates"],
    validation_fraction=DEFAULTS["validation_fraction"],
    output=DEFAULTS["output"],
    data_dir=DEFAULTS["data_dir"],
    jit_compile=DEFAULTS["jit_compile"],
    eval_batch_size=DEFAULTS["eval_batch_size"],
    progress=False,
):
    """Trains one model by each method from a shared warm start, and reports.

    The protocol, for every seed: one initial model (`keras.utils.
    set_random_seed(seed)`), one stream of batches (a seeded reshuffle per
    epoch) from the training set less a held-out split
    (`validation_fraction`, one fixed draw), and one forward-SGD warm-up of
    `forward_steps` steps (`keras.optimizers.SGD` with the run's learning
    rate, momentum and weight decay; 0 gives a cold start). Every method
    then starts from a copy of the warm-up's weights `theta_W`, with a fresh
    optimizer (momentum and the averages start at zero), and runs the same
    `steps` following batches at the same learning rate, momentum and
    weight decay. The methods are those of
    `keras_bsgd.benchmarks.methods`: `forward_sgd`, `forward_sgd_decay`,
    `forward_sgd_ema`, `forward_sgd_polyak`, `schedule_free_adamw`,
    `backward_exact` and `backward_w{w}` for each window; backward-SGD
    replays every `eval_every` steps (`replay_every`), so the iterates
    evaluated are exact backward iterates and the cost is what is observed.
    `schedule_free_adamw` is Adam-based: its learning rate is the one of
    `schedule_free_learning_rates` whose run from the first seed's warm
    start has the lowest held-out loss at its last step.

    Every step records the train loss Keras logs, the learning rate, the
    cumulative gradient evaluations (counted inside the compiled step) and
    the training time. Every `eval_every` steps (and at the last), the
    evaluated iterate (an average for the EMA, Polyak and schedule-free
    methods, with BatchNormalization statistics recomputed for it) gives
    the test loss and accuracy, and the metrics of
    `keras_bsgd.benchmarks.metrics`. The output folder receives
    `steps.csv`, `evaluations.csv`, `runs.json`, `summary.json`,
    `summary.md` and `comparison.png`. A run holds its evaluated iterates
    in memory until it ends (evaluations x weights float32: 2 MB for the
    default MLP, about 4.5 GB for a ResNet-18 with the default 101
    evaluations; raise `eval_every` for large models).

    Args:
        dataset: A name of `keras_bsgd.datasets.DATASETS` or
            `keras_bsgd.benchmarks.digit_images.DATASETS`.
        model: A name of `keras_bsgd.benchmarks.models.MODELS`.
        batch_size: Examples per batch.
        learning_rate: The learning rate (the schedule's initial value).
        momentum: SGD momentum of the warm-up and of every method.
        weight_decay: Keras' decoupled weight decay of the warm-up and of
            every method, or `None`.
        forward_steps: `W`, the shared warm-up's steps (0: a cold start).
        steps: `N`, every method's steps after the warm-up.
        eval_every: `E`, steps between evaluations (and backward-SGD's
            `replay_every`).
        windows: Windows of windowed backward-SGD.
        seeds: Seeds (initial weights and batch order).
        exact: Whether to run `backward_exact`.
        baselines: Whether to run `forward_sgd_decay`, `forward_sgd_ema`,
            `forward_sgd_polyak` and `schedule_free_adamw`.
        schedule_free_learning_rates: The learning rates tried for
            `schedule_free_adamw` (one: used as given).
        validation_fraction: Fraction of the training examples held out of
            every run, to choose the schedule-free learning rate.
        output: Output folder.
        data_dir: TFDS data directory (`None`: TFDS' default).
        jit_compile: Whether to XLA-compile the steps.
        eval_batch_size: Batch size of the test-set forward passes.
        progress: Whether to show a progress bar. Defaults to `False`.

    Every default but `progress` is in `DEFAULTS`.

    Returns:
        A `ComparisonResult`.

    Example:

    >>> import tempfile
    >>> result = compare(forward_steps=4, steps=4, batch_size=8, windows=(2,),
    ...                  eval_every=2, seeds=(0,), baselines=False,
    ...                  output=tempfile.mkdtemp(), data_dir=tempfile.mkdtemp())
    >>> list(result.summary["methods"])
    ['forward_sgd', 'backward_exact', 'backward_w2']
    >>> result.summary["methods"]["backward_exact"]["grad_evals"]["mean"]
    6.0
    """
    settings = dict(locals())
    config = {k: settings[k] for k in DEFAULTS}
    config["windows"] = [int(w) for w in config["windows"]]
    config["seeds"] = [int(s) for s in config["seeds"]]
    config["schedule_free_learning_rates"] = [
        float(r) for r in config["schedule_free_learning_rates"]]
    _validate(config)
    config.update(backend_info())
    started = time.perf_counter()
    spec, train, validation, test = _data(config)
    W, N = config["forward_steps"], config["steps"]
    grid = config["schedule_free_learning_rates"]
    sweep = config["baselines"] and len(grid) > 1

    def methods_with(schedule_free_rate):
        return methods_lib.optimizers(
            config["learning_rate"], N, config["eval_every"], config["windows"],
            exact=config["exact"], baselines=config["baselines"],
            momentum=config["momentum"], weight_decay=config["weight_decay"],
            schedule_free_learning_rate=schedule_free_rate,
        )

    names = list(methods_with(grid[0]))
    config.update(methods=names, train_examples=len(train[0]), test_examples=len(test[0]),
                  validation_examples=len(validation[0]) if validation else 0,
                  warmup_wall_time_s=[], schedule_free_sweep={},
                  schedule_free_learning_rate=grid[0] if config["baselines"] else None)
    # BatchNormalization statistics of averaged iterates come from these training examples.
    config["_batch_norm_x"] = train[0][:BATCH_NORM_EXAMPLES]
    total = (W + N * len(names)) * len(config["seeds"]) + (N * len(grid) if sweep else 0)
    bar = keras.utils.Progbar(total) if progress else None
    on_step = (lambda: bar.add(1)) if bar else None
    runs, methods = [], None
    for seed in config["seeds"]:
        stream = BatchStream(*train, config["batch_size"], W + N, seed)
        keras.utils.set_random_seed(seed)
        initial = _build(config["model"], spec)[0].get_weights()
        warm, wall = _warm_up(config["model"], spec, initial, stream, config, on_step)
        config["warmup_wall_time_s"].append(wall)
        if methods is None:  # The first seed's warm start chooses the schedule-free rate.
            if sweep:
                rate, losses = _choose_schedule_free_rate(
                    config["model"], spec, warm, stream, validation, config, on_step)
                config.update(schedule_free_learning_rate=rate, schedule_free_sweep={
                    "seed": seed, "criterion": "held-out loss of x at the last step",
                    "held_out_loss": losses})
            methods = methods_with(config["schedule_free_learning_rate"])
        for method, make_optimizer in methods.items():
            runs.append(_train(
                method, make_optimizer, config["model"], spec, warm, stream, test, config, on_step
            ))
    del config["_batch_norm_x"]
    config["method_learning_rates"] = _method_learning_rates(names, config)
    budgets = {r["seed"]: r["steps"][-1]["grad_evals"] for r in runs
               if r["method"] == methods_lib.FORWARD}
    for run in runs:
        run["summary"] = metrics.summarize_run(run["steps"], run["evals"], budgets[run["seed"]])
        if "peak_gpu_mb" in run:
            run["summary"]["peak_gpu_mb"] = run["peak_gpu_mb"]
    summary = {
        "config": config,
        "methods": {
            m: metrics.aggregate([r["summary"] for r in runs if r["method"] == m])
            for m in names
        },
        "runs": [{"method": r["method"], "seed": r["seed"], **r["summary"]} for r in runs],
    }
    output = config["output"]
    paths = report.write(output, config, runs, summary)
    start = f"warm start after {W} forward steps" if W else "cold start"
    decay = config["weight_decay"] or 0
    paths["plot"] = plots.plot_comparison(
        runs, names, os.path.join(output, "comparison.png"),
        title=f"{config['dataset']} / {config['model']}: {start}, then {N} steps; batch "
        f"{config['batch_size']}, lr {config['learning_rate']}, weight decay {decay}, "
        f"{len(config['seeds'])} seed(s)",
    )
    return ComparisonResult(output, paths, summary, runs, time.perf_counter() - started)
