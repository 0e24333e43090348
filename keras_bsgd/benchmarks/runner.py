"""`compare`: forward SGD against exact and windowed backward-SGD on one batch stream."""

import dataclasses
import os
import time

import keras
import numpy as np
import tensorflow as tf

import keras_bsgd
from keras_bsgd import datasets
from keras_bsgd.benchmarks import metrics
from keras_bsgd.benchmarks import models
from keras_bsgd.benchmarks import plots
from keras_bsgd.benchmarks import report
from keras_bsgd.benchmarks.counter import GradientCounter
from keras_bsgd.benchmarks.recorder import StepRecorder
from keras_bsgd.benchmarks.stream import BatchStream

FORWARD = "forward_sgd"
EXACT = "backward_exact"


def window_method(window):
    """The method name of windowed backward-SGD with `window`.

    Example:

    >>> window_method(8)
    'backward_w8'
    """
    return f"backward_w{window}"


@dataclasses.dataclass
class ComparisonResult:
    """What `compare` returns.

    Args:
        output: The output folder.
        paths: Written files by kind (`steps_csv`, `evaluations_csv`,
            `runs_json`, `summary_json`, `summary_md`, `plot`).
        summary: The summary dict written to `summary.json`.
        runs: Per-run dicts with `method`, `seed`, `steps`, `evals`, `summary`.
        wall_time_s: Wall time of the whole comparison.
    """

    output: str
    paths: dict
    summary: dict
    runs: list
    wall_time_s: float


def _optimizers(learning_rate, momentum, steps, windows, exact):
    methods = {FORWARD: lambda: keras.optimizers.SGD(learning_rate, momentum=momentum)}
    if exact:
        methods[EXACT] = lambda: keras_bsgd.BackwardSGD(
            learning_rate, momentum=momentum, max_steps=steps
        )
    for window in windows:
        methods[window_method(window)] = lambda w=window: keras_bsgd.BackwardSGD(
            learning_rate, momentum=momentum, window=w
        )
    return methods


def _as_numpy(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds.batch(4096)])
    return np.concatenate(xs), np.concatenate(ys)


def _build(model_name, spec):
    """A `keras_bsgd.Model` around a benchmark model, with a gradient counter on its logits."""
    base = models.build(model_name, spec.input_shape, spec.num_classes)
    counter = GradientCounter(name="gradient_counter")
    model = keras_bsgd.Model(base.inputs, counter(base.outputs[0]), name=base.name)
    return model, counter


def _train(method, make_optimizer, model_name, spec, initial, stream, test, config, on_step):
    model, counter = _build(model_name, spec)
    model.set_weights(initial)
    model.compile(
        optimizer=make_optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=config["jit_compile"],
    )
    recorder = StepRecorder(counter, on_step=on_step)
    gpu = bool(tf.config.list_physical_devices("GPU"))
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    eval_rows = []

    def evaluate(step):
        loss, accuracy = model.evaluate(
            test[0], test[1], batch_size=config["eval_batch_size"], verbose=0
        )
        last = recorder.rows[-1] if recorder.rows else {"grad_evals": 0, "wall_time_s": 0.0}
        eval_rows.append(
            {
                "step": step,
                "grad_evals": last["grad_evals"],
                "wall_time_s": last["wall_time_s"],
                "test_loss": float(loss),
                "test_accuracy": float(accuracy),
            }
        )

    evaluate(0)
    done, steps, every = 0, config["steps"], config["eval_every"]
    while done < steps:
        count = min(every, steps - done)
        x, y = stream.chunk(done, count)
        model.fit(
            x, y, batch_size=stream.batch_size, epochs=1, shuffle=False,
            verbose=0, callbacks=[recorder],
        )
        done += count
        evaluate(done)
    if int(model.optimizer.iterations) != steps:
        raise RuntimeError(
            f"{method} ran {int(model.optimizer.iterations)} steps instead of {steps}."
        )
    run = {"method": method, "seed": stream.seed, "steps": recorder.rows, "evals": eval_rows}
    if gpu:
        run["peak_gpu_mb"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return run


def compare(
    dataset="bsgd_digits",
    model="mlp",
    batch_size=32,
    learning_rate=0.1,
    steps=200,
    windows=(8, 32),
    seeds=(0,),
    eval_every=10,
    output="bsgd_compare",
    data_dir=None,
    momentum=0.0,
    exact=True,
    jit_compile=True,
    eval_batch_size=1000,
    progress=False,
):
    """Trains one model with forward SGD and backward-SGD variants, and reports.

    For every seed, all methods start from the same initial weights and see
    the same stream of `steps` batches (a seeded reshuffle per epoch) with the
    same constant learning rate:

    * `forward_sgd`: `keras.optimizers.SGD`;
    * `backward_exact`: `keras_bsgd.BackwardSGD(window=None, max_steps=steps)`
      (cost quadratic in `steps`);
    * `backward_w{w}`: `keras_bsgd.BackwardSGD(window=w)` for each window.

    Every step records the train loss, `||theta_k - theta_{k-1}||`, the
    cumulative gradient evaluations (counted inside the compiled step) and
    the training time; every `eval_every` steps, the test loss and accuracy.
    The output folder receives `steps.csv`, `evaluations.csv`, `runs.json`,
    `summary.json`, `summary.md` and `comparison.png`.

    Args:
        dataset: A name of `keras_bsgd.datasets.DATASETS`.
            Defaults to `"bsgd_digits"`.
        model: A name of `keras_bsgd.benchmarks.models.MODELS`.
            Defaults to `"mlp"`.
        batch_size: Examples per batch. Defaults to `32`.
        learning_rate: The constant learning rate. Defaults to `0.1`.
        steps: Training steps per run. Defaults to `200`.
        windows: Windows of windowed backward-SGD. Defaults to `(8, 32)`.
        seeds: Seeds (initial weights and batch order). Defaults to `(0,)`.
        eval_every: Steps between test evaluations. Defaults to `10`.
        output: Output folder. Defaults to `"bsgd_compare"`.
        data_dir: TFDS data directory. Defaults to `None` (TFDS' default).
        momentum: SGD momentum, the same for every method. Defaults to `0.0`.
        exact: Whether to run exact backward-SGD. Defaults to `True`.
        jit_compile: Whether to XLA-compile the steps. Defaults to `True`.
        eval_batch_size: Batch size of evaluation. Defaults to `1000`.
        progress: Whether to show a progress bar. Defaults to `False`.

    Returns:
        A `ComparisonResult`.

    Example:

    >>> import tempfile
    >>> result = compare(steps=4, batch_size=8, windows=(2,), eval_every=2,
    ...                  output=tempfile.mkdtemp(), data_dir=tempfile.mkdtemp())
    >>> list(result.summary["methods"])
    ['forward_sgd', 'backward_exact', 'backward_w2']
    >>> result.summary["methods"]["backward_exact"]["grad_evals"]["mean"]
    10.0
    """
    windows = tuple(int(w) for w in windows)
    seeds = tuple(int(s) for s in seeds)
    if any(w < 1 for w in windows):
        raise ValueError(f"Every window must be a positive integer. Received: windows={windows}")
    if not seeds:
        raise ValueError(f"Give at least one seed. Received: seeds={seeds}")
    if eval_every < 1:
        raise ValueError(f"`eval_every` must be positive. Received: eval_every={eval_every}")
    spec = datasets.info(dataset)
    started = time.perf_counter()
    train = _as_numpy(datasets.load(dataset, "train", data_dir))
    test = _as_numpy(datasets.load(dataset, "test", data_dir))
    methods = _optimizers(learning_rate, momentum, steps, windows, exact)
    config = {
        "dataset": dataset, "model": model, "batch_size": batch_size,
        "learning_rate": learning_rate, "momentum": momentum, "steps": steps,
        "windows": list(windows), "exact": exact, "seeds": list(seeds),
        "eval_every": eval_every, "jit_compile": jit_compile,
        "eval_batch_size": eval_batch_size, "methods": list(methods),
        "train_examples": len(train[0]), "test_examples": len(test[0]),
    }
    bar = keras.utils.Progbar(steps * len(methods) * len(seeds)) if progress else None
    on_step = (lambda: bar.add(1)) if bar else None
    runs = []
    for seed in seeds:
        stream = BatchStream(*train, batch_size, steps, seed)
        keras.utils.set_random_seed(seed)
        initial = _build(model, spec)[0].get_weights()
        for method, make_optimizer in methods.items():
            runs.append(
                _train(method, make_optimizer, model, spec, initial, stream, test, config, on_step)
            )
    budgets = {r["seed"]: r["steps"][-1]["grad_evals"] for r in runs if r["method"] == FORWARD}
    for run in runs:
        run["summary"] = metrics.summarize_run(run["steps"], run["evals"], budgets[run["seed"]])
        if "peak_gpu_mb" in run:
            run["summary"]["peak_gpu_mb"] = run["peak_gpu_mb"]
    summary = {
        "config": config,
        "methods": {
            m: metrics.aggregate([r["summary"] for r in runs if r["method"] == m])
            for m in methods
        },
        "runs": [{"method": r["method"], "seed": r["seed"], **r["summary"]} for r in runs],
    }
    paths = report.write(output, config, runs, summary)
    paths["plot"] = plots.plot_comparison(
        runs, list(methods), os.path.join(output, "comparison.png"),
        title=f"{dataset} / {model}: batch {batch_size}, lr {learning_rate}, "
        f"{steps} steps, {len(seeds)} seed(s)",
    )
    return ComparisonResult(output, paths, summary, runs, time.perf_counter() - started)
