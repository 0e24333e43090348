"""Tests of keras_bsgd.benchmarks: the warm-start comparison on a tiny run, on either backend."""

import json
import math
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_bsgd import benchmarks  # noqa: E402
from keras_bsgd import datasets  # noqa: E402
from keras_bsgd.benchmarks import metrics  # noqa: E402
from keras_bsgd.benchmarks import models  # noqa: E402
from keras_bsgd.benchmarks import report  # noqa: E402
from keras_bsgd.benchmarks import runner  # noqa: E402
from keras_bsgd.benchmarks.recorder import weights_sha256  # noqa: E402

needs_tfds = pytest.mark.skipif(not datasets.tfds_available(),
                                reason="needs TensorFlow and TFDS installed")

WARMUP, STEPS, EVERY, LR = 6, 8, 3, 0.2
WINDOWS = (1, 4)
SF_GRID = (1e-3, 1e-2)
METHODS = ["forward_sgd", "forward_sgd_decay", "forward_sgd_ema", "forward_sgd_polyak",
           "schedule_free_adamw", "backward_exact", "backward_w1", "backward_w4"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def result(tmp_path_factory, data_dir):
    return benchmarks.compare(
        batch_size=16, learning_rate=LR, weight_decay=0.01, forward_steps=WARMUP,
        steps=STEPS, eval_every=EVERY, windows=WINDOWS, seeds=(0,),
        schedule_free_learning_rates=SF_GRID,
        output=str(tmp_path_factory.mktemp("compare")), data_dir=data_dir,
    )


def _run(result, method):
    (run,) = [r for r in result.runs if r["method"] == method]
    return run


def test_files_present(result):
    names = {"steps.csv", "evaluations.csv", "runs.json", "summary.json",
             "summary.md", "comparison.png"}
    assert names <= set(os.listdir(result.output))
    for path in result.paths.values():
        assert os.path.getsize(path) > 0
    with open(result.paths["steps_csv"]) as f:
        assert len(f.read().splitlines()) == 1 + STEPS * len(METHODS)
    with open(result.paths["evaluations_csv"]) as f:
        assert len(f.read().splitlines()) == 1 + 4 * len(METHODS)  # steps 0, 3, 6, 8


def test_summary_json_schema(result):
    with open(result.paths["summary_json"]) as f:
        summary = json.load(f)
    assert set(summary) == {"config", "methods", "runs"}
    assert list(summary["methods"]) == METHODS
    config = summary["config"]
    assert (config["forward_steps"], config["steps"], config["weight_decay"]) == (
        WARMUP, STEPS, 0.01)
    assert config["methods"] == METHODS and config["eval_every"] == EVERY
    for method in METHODS:
        stats = summary["methods"][method]
        assert set(stats) == set(metrics.RUN_METRICS)
        for value in stats.values():
            assert set(value) == {"mean", "std"}
        assert 0.0 <= stats["final_test_accuracy"]["mean"] <= 1.0
        assert stats["param_movement_last_half"]["mean"] > 0.0
        assert stats["wall_time_s"]["mean"] > 0.0
        assert stats["final_test_accuracy"]["std"] == 0.0  # one seed
    assert [(r["method"], r["seed"]) for r in summary["runs"]] == [(m, 0) for m in METHODS]
    with open(result.paths["summary_md"]) as f:
        table = f.read()
    assert all(f"| {m} |" in table for m in METHODS)
    assert f"Warm start: {WARMUP} shared forward-SGD steps" in table


def test_every_method_starts_from_the_same_warm_start_bitwise(result, data_dir):
    starts = {r["method"]: r["start_sha256"] for r in result.runs}
    assert set(starts) == set(METHODS)
    assert len(set(starts.values())) == 1, starts
    assert all(r["start_sha256"] == r["warm_start_sha256"] for r in result.runs)
    # The warm start is W steps of Keras SGD on the stream's first batches,
    # from the seed's initial weights; rebuilt here independently.
    from keras_bsgd import datasets

    spec = datasets.info("bsgd_digits")
    train = datasets.load_arrays("bsgd_digits", "train", data_dir)
    train = runner._split(train, runner.DEFAULTS["validation_fraction"])[0]
    stream = benchmarks.BatchStream(*train, 16, WARMUP + STEPS, seed=0)
    keras.utils.set_random_seed(0)
    model, _ = runner._build("mlp", spec)
    initial = weights_sha256(model.get_weights())
    model.compile(optimizer=keras.optimizers.SGD(LR, weight_decay=0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    x, y = stream.chunk(0, WARMUP)
    model.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    warm = weights_sha256(model.get_weights())
    assert warm != initial
    assert set(starts.values()) == {warm}
    # Every method's first evaluation is the warm start itself.
    assert len({r["evals"][0]["test_loss"] for r in result.runs}) == 1


def test_cold_start_starts_from_the_initial_weights(tmp_path, data_dir):
    cold = benchmarks.compare(forward_steps=0, steps=2, eval_every=1, windows=(), exact=False,
                              baselines=False, seeds=(1,), output=str(tmp_path),
                              data_dir=data_dir)
    keras.utils.set_random_seed(1)
    from keras_bsgd import datasets

    model, _ = runner._build("mlp", datasets.info("bsgd_digits"))
    (run,) = cold.runs
    assert run["start_sha256"] == weights_sha256(model.get_weights())
    assert cold.summary["config"]["forward_steps"] == 0


def test_cosine_decay_learning_rate_at_first_and_last_step(result):
    rates = [r["learning_rate"] for r in _run(result, "forward_sgd_decay")["steps"]]
    assert rates[0] == pytest.approx(LR)
    # Step k uses lr * (1 + cos(pi * (k - 1) / N)) / 2: step N is the last before 0.
    last = LR * (1 + math.cos(math.pi * (STEPS - 1) / STEPS)) / 2
    assert rates[-1] == pytest.approx(last, rel=1e-5)  # float32
    assert all(a > b for a, b in zip(rates, rates[1:]))
    for method in ("forward_sgd", "forward_sgd_ema", "forward_sgd_polyak", "backward_exact",
                   "backward_w4"):
        assert [r["learning_rate"] for r in _run(result, method)["steps"]] == pytest.approx(
            [LR] * STEPS)
    chosen = result.summary["config"]["schedule_free_learning_rate"]
    assert [r["learning_rate"] for r in _run(result, "schedule_free_adamw")["steps"]] == (
        pytest.approx([chosen] * STEPS))


def test_probe_reads_the_ema_and_restores_the_training_weights():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5),
                  loss="mse")
    x = np.random.default_rng(0).normal(size=(12, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(12, 2)).astype("float32")
    probe = benchmarks.IterateProbe(model, x, batch_size=5, average="ema")
    flat = lambda: np.concatenate([v.numpy().ravel() for v in model.trainable_variables])  # noqa
    raw, read = [], []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            _ = self.model  # On JAX: fit()'s state into the variables the probe reads.
            raw.append(flat())
            read.append(probe.read()[0])
            np.testing.assert_array_equal(flat(), raw[-1])  # Restored bit for bit.

    model.fit(x, y, batch_size=4, shuffle=False, verbose=0, callbacks=[Watch()])
    average = raw[0]  # Keras: the average starts at the first iterate.
    for k, theta in enumerate(raw):
        if k:
            average = 0.5 * average + 0.5 * theta
        np.testing.assert_allclose(read[k], average, rtol=1e-6)
    # fit() ends by copying the average into the model: what the probe read last.
    np.testing.assert_array_equal(flat(), read[-1])


@pytest.mark.parametrize(
    "method, window, forward",
    [("forward_sgd", None, True), ("forward_sgd_ema", None, True),
     ("forward_sgd_polyak", None, True), ("schedule_free_adamw", None, True),
     ("backward_exact", None, False), ("backward_w1", 1, False), ("backward_w4", 4, False)],
)
def test_gradient_evaluations_match_the_formulas(result, method, window, forward):
    run = _run(result, method)
    counted = [r["grad_evals"] for r in run["steps"]]
    expected = np.cumsum([
        metrics.expected_grad_evals(k, window, forward, replay_every=EVERY, last_step=STEPS)
        for k in range(1, STEPS + 1)
    ])
    assert counted == expected.tolist()
    if not forward:
        assert run["library_grad_evals"] == counted[-1]  # model.gradient_evaluations
    if method == "backward_exact":
        assert counted[-1] == 3 + 6 + 8  # Replays at steps 3, 6 and the last, 8.


def test_window_one_is_forward_sgd(result):
    forward, windowed = _run(result, "forward_sgd"), _run(result, "backward_w1")
    for key in ("test_loss", "param_movement", "logit_rms_change"):
        np.testing.assert_allclose(
            [r[key] for r in windowed["evals"]], [r[key] for r in forward["evals"]],
            rtol=1e-4, atol=1e-6,
        )


def test_exact_and_baselines_differ_from_forward(result):
    forward = _run(result, "forward_sgd")["evals"][-1]["test_loss"]
    for method in ("forward_sgd_decay", "forward_sgd_ema", "forward_sgd_polyak",
                   "schedule_free_adamw", "backward_exact"):
        assert _run(result, method)["evals"][-1]["test_loss"] != forward, method


def test_run_summary_is_its_evaluation_rows_by_formula(result):
    for run in result.runs:
        evals, summary = run["evals"], run["summary"]
        assert [r["step"] for r in evals] == [0, 3, 6, 8]
        assert math.isnan(evals[0]["param_movement"]) and evals[-1]["distance_to_final"] == 0
        # Second half: steps >= 4, i.e. the evaluations at 6 and 8.
        a, b = evals[2], evals[3]
        assert summary["test_loss_std_last_half"] == pytest.approx(
            abs(a["test_loss"] - b["test_loss"]) / 2)
        assert summary["test_loss_mean_last_half"] == pytest.approx(
            (a["test_loss"] + b["test_loss"]) / 2)
        assert summary["param_movement_last_half"] == b["param_movement"]
        assert summary["logit_rms_change_last_half"] == b["logit_rms_change"]
        assert summary["distance_to_final_last_half"] == a["distance_to_final"]
        # Movement between the last two evaluations is the distance to the final.
        assert b["param_movement"] == pytest.approx(a["distance_to_final"])


def test_evaluation_columns_by_hand():
    iterates = [[0.0, 0.0], [3.0, 4.0], [3.0, 0.0]]
    logits = [[[0.0, 0.0]], [[2.0, 0.0]], [[2.0, 2.0]]]
    columns = metrics.evaluation_columns(iterates, logits)
    assert columns["param_movement"][1:] == [5.0, 4.0]
    assert columns["logit_rms_change"][1:] == [pytest.approx(math.sqrt(2)),
                                               pytest.approx(math.sqrt(2))]
    assert columns["distance_to_final"] == [3.0, 4.0, 0.0]
    loss, accuracy = metrics.cross_entropy_and_accuracy([[0.0, math.log(3.0)]], [1])
    assert loss == pytest.approx(math.log(4 / 3)) and accuracy == 1.0


def test_summarize_and_aggregate_by_hand():
    steps = [{"grad_evals": k * k, "wall_time_s": 0.5 * k} for k in range(1, 9)]
    evals = [{"step": k, "grad_evals": k * k, "test_loss": float(k), "test_accuracy": k / 10,
              "param_movement": 10.0 + k, "logit_rms_change": 0.1 * k,
              "distance_to_final": 8.0 - k} for k in (0, 2, 4, 6, 8)]
    s = metrics.summarize_run(steps, evals, forward_budget=20)
    assert s["test_loss_std_last_half"] == pytest.approx(np.std([4.0, 6.0, 8.0]))
    assert s["test_loss_mean_last_half"] == 6.0
    assert s["param_movement_last_half"] == 17.0  # steps 6 and 8 (both >= 4)
    # The geometric rate through (6, 16) and (8, 18): two steps multiply by 18/16.
    assert s["contraction_rate_last_half"] == pytest.approx((18 / 16) ** 0.5)
    assert s["half_life_steps_last_half"] == math.inf  # Growing: no contraction.
    assert s["logit_rms_change_last_half"] == pytest.approx(0.7)
    assert s["distance_to_final_last_half"] == 3.0  # steps 4 and 6: (4 + 2) / 2
    assert s["accuracy_at_forward_budget"] == 0.4  # step 4: 16 <= 20 < 36
    assert s["grad_evals"] == 64 and s["wall_time_s"] == 4.0
    assert math.isnan(metrics.summarize_run(steps, evals)["accuracy_at_forward_budget"])
    agg = metrics.aggregate([s, {**s, "grad_evals": 66, "half_life_steps_last_half": 50.0}])
    assert agg["grad_evals"] == {"mean": 65.0, "std": pytest.approx(math.sqrt(2))}
    half_life = agg["half_life_steps_last_half"]
    assert (half_life["mean"], half_life["infinite"], half_life["seeds"]) == (math.inf, 1, 2)
    assert report._cell(half_life, "half_life_steps_last_half") == (
        "∞ (no contraction in 1 of 2 seeds)")


def test_expected_grad_evals_with_replay_every():
    # Exact, E = 4, N = 10: replays at 4, 8 and 10.
    assert sum(metrics.expected_grad_evals(k, replay_every=4, last_step=10)
               for k in range(1, 11)) == 22
    # Window 3: the anchor reaches step 7 by the last replay (7 maps), and
    # each of the 3 replays applies 3 maps from it.
    per_step = [metrics.expected_grad_evals(k, 3, replay_every=4, last_step=10)
                for k in range(1, 11)]
    assert per_step == [0, 0, 0, 4, 0, 0, 0, 7, 0, 5] and sum(per_step) == 7 + 9


def test_batch_stream_is_seeded_and_full():
    x, y = np.arange(10), np.arange(10) * 2
    a = benchmarks.BatchStream(x, y, 4, steps=6, seed=3)
    b = benchmarks.BatchStream(x, y, 4, steps=6, seed=3)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert len(a.indices) == 24
    np.testing.assert_array_equal(np.sort(a.indices[:10]), np.arange(10))  # one epoch
    xs, ys = a.chunk(2, 3)
    assert xs.shape == (12,) and np.all(ys == 2 * xs)
    with pytest.raises(ValueError, match="Received: batch_size=11"):
        benchmarks.BatchStream(x, y, 11, steps=1, seed=0)


def test_models_build():
    assert models.build("mlp", (8, 8, 1), 10).output_shape == (None, 10)
    assert models.build("resnet18_w8", (32, 32, 3), 10).count_params() == 177602
    assert models.resnet18(width=4).output_shape == (None, 10)
    assert models.resnet50(num_classes=100, width=2).output_shape == (None, 100)
    with pytest.raises(ValueError, match="Received: name='vgg'"):
        models.build("vgg", (8,), 10)


@pytest.mark.parametrize("kwargs, message", [
    ({"windows": (0,)}, "Received: windows=\\(0,\\)"),
    ({"forward_steps": -1}, "Received: forward_steps=-1"),
    ({"eval_every": 0}, "Received: eval_every=0"),
    ({"weight_decay": -0.1}, "Received: weight_decay=-0.1"),
    ({"validation_fraction": 1.0}, "Received: validation_fraction=1.0"),
    ({"validation_fraction": 0.0}, "Received: validation_fraction=0.0"),
    ({"schedule_free_learning_rates": (0.01, 0.0)},
     "Received: schedule_free_learning_rates=\\(0.01, 0.0\\)"),
    ({"dataset": "nope"}, "Received: dataset='nope'"),
])
def test_invalid_compare_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        benchmarks.compare(output=str(tmp_path), **kwargs)


@needs_tfds
def test_compare_on_a_prepared_image_dataset(tmp_path):
    import tensorflow_datasets as tfds

    # tfds' mock stands in for a prepared cifar10: the real-dataset path, offline.
    with tfds.testing.mock_data(num_examples=16):
        result = benchmarks.compare(
            dataset="cifar10", model="linear", batch_size=4, forward_steps=2, steps=4,
            windows=(2,), baselines=False, eval_every=2, seeds=(0,), output=str(tmp_path),
        )
    config = result.summary["config"]
    assert (config["train_examples"], config["validation_examples"]) == (14, 2)  # 16, 10% out
    assert result.summary["methods"]["backward_exact"]["grad_evals"]["mean"] == 2 + 4


def test_fit_rate_recovers_a_geometric_rate():
    steps = np.arange(500, 1001, 10)
    rate, half_life, scale = benchmarks.fit_rate(steps, 3.0 * 0.998 ** steps)
    assert rate == pytest.approx(0.998, abs=1e-12)
    assert half_life == pytest.approx(math.log(2) / -math.log(0.998))
    assert scale == pytest.approx(3.0)
    # Multiplicative noise: still the rate, to within the noise's reach.
    noisy = 0.998 ** steps * np.exp(np.random.default_rng(0).normal(0, 0.05, len(steps)))
    assert benchmarks.fit_rate(steps, noisy).rate == pytest.approx(0.998, abs=2e-4)
    # A zero distance (no movement at float resolution) is left out, not a crash.
    assert benchmarks.fit_rate([1, 2, 3], [0.5, 0.25, 0.0]).rate == pytest.approx(0.5)
    constant = benchmarks.fit_rate(steps, np.ones(len(steps)))
    assert constant.rate == pytest.approx(1.0) and constant.half_life == math.inf
    assert math.isnan(benchmarks.fit_rate([1, 2], [1.0, 0.0]).rate)
    with pytest.raises(ValueError, match="Received: steps=2 values, distances=1 values"):
        benchmarks.fit_rate([1, 2], [1.0])


def _flat(model):
    return np.concatenate([v.numpy().ravel() for v in model.trainable_variables])


def _regression(seed=0):
    keras.utils.set_random_seed(seed)
    x = np.random.default_rng(0).normal(size=(12, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(12, 2)).astype("float32")
    return x, y


def test_probe_reads_the_uniform_average_and_restores_the_training_weights():
    x, y = _regression()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    probe = benchmarks.IterateProbe(model, x, batch_size=5, average="uniform")
    before, _ = probe.read()  # No step yet: the weights themselves.
    np.testing.assert_array_equal(before, _flat(model))
    raw, read = [], []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw.append(_flat(self.model))
            probe.observe()
            read.append(probe.read()[0])
            np.testing.assert_array_equal(_flat(self.model), raw[-1])  # Bit for bit.

    model.fit(x, y, batch_size=2, shuffle=False, verbose=0, callbacks=[Watch()])
    for k in range(len(raw)):
        expected = np.mean(np.asarray(raw[: k + 1], "float64"), axis=0).astype("float32")
        np.testing.assert_array_equal(read[k], expected)
    assert not np.allclose(read[-1], raw[-1])  # The average is not the last iterate.


def _schedule_free_steps(optimizer, steps=6):
    """`(z, y)` after each of `steps` fixed-gradient steps of a schedule-free optimizer."""
    v = keras.Variable(np.array([1.0, -2.0, 0.5], "float32"))
    optimizer.build([v])
    (z,) = [u for u in optimizer.variables if u.name.endswith("_momentum")]
    rng = np.random.default_rng(0)
    zs, ys = [], []
    for _ in range(steps):
        optimizer.apply_gradients([(rng.normal(size=3).astype("float32"), v)])
        zs.append(np.array(z.numpy()))
        ys.append(np.array(v.numpy()))
    return np.array(zs), np.array(ys)


def test_schedule_free_x_is_the_mean_of_z():
    zs, ys = _schedule_free_steps(benchmarks.ScheduleFreeAdamW(0.05))
    x = (ys - 0.1 * zs) / 0.9  # y = (1 - beta_1) z + beta_1 x
    means = np.cumsum(zs, axis=0) / np.arange(1, len(zs) + 1)[:, None]
    np.testing.assert_allclose(x, means, rtol=1e-5, atol=1e-6)


@pytest.mark.tensorflow
def test_keras_schedule_free_on_tensorflow_still_reads_the_updated_z():
    # Why benchmarks.ScheduleFreeAdamW exists: when this fails, Keras reads z
    # before updating it on TensorFlow too, and the subclass can go.
    zs, ys = _schedule_free_steps(keras.optimizers.ScheduleFreeAdamW(0.05))
    x = (ys - 0.1 * zs) / 0.9
    means = np.cumsum(zs, axis=0) / np.arange(1, len(zs) + 1)[:, None]
    assert np.max(np.abs(x - means)) > 1e-3


@pytest.mark.jax
def test_keras_schedule_free_on_jax_needs_no_fix():
    # On JAX Keras' own step already reads z before its update (a value): the
    # subclass runs the same algorithm, to rounding.
    zs, ys = _schedule_free_steps(keras.optimizers.ScheduleFreeAdamW(0.05))
    ours = _schedule_free_steps(benchmarks.ScheduleFreeAdamW(0.05))
    np.testing.assert_allclose(ys, ours[1], rtol=1e-6, atol=1e-7)
    x = (ys - 0.1 * zs) / 0.9
    means = np.cumsum(zs, axis=0) / np.arange(1, len(zs) + 1)[:, None]
    np.testing.assert_allclose(x, means, rtol=1e-5, atol=1e-6)


def test_probe_reads_schedule_free_x_and_restores_the_training_weights():
    x, y = _regression()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = benchmarks.ScheduleFreeAdamW(0.05)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=True)
    optimizer.build(model.trainable_variables)
    probe = benchmarks.IterateProbe(model, x, batch_size=5, average="schedule_free")
    momentum = [v for v in optimizer.variables if v.name.endswith("_momentum")]
    zs, raw, read = [], [], []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            _ = self.model  # On JAX: fit()'s state into the variables read here.
            zs.append(np.concatenate([v.numpy().ravel() for v in momentum]))
            raw.append(_flat(self.model))
            read.append(probe.read()[0])
            np.testing.assert_array_equal(_flat(self.model), raw[-1])  # Bit for bit.

    model.fit(x, y, batch_size=2, shuffle=False, verbose=0, callbacks=[Watch()])
    for k in range(len(zs)):  # x_k, the mean of z_1..z_k, not the model's y.
        np.testing.assert_allclose(read[k], np.mean(zs[: k + 1], axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(read[-1], raw[-1])


def test_compile_builds_schedule_free_from_the_weights():
    # Keras 3.15's TensorFlow fit() would start z at 0 and zero the weights in one step.
    x, y = _regression()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, bias_initializer="ones")])
    start = _flat(model)
    runner._compile(model, benchmarks.ScheduleFreeAdamW(1e-4), {"jit_compile": True})
    model.compile(optimizer=model.optimizer, loss="mse")
    model.fit(x[:2], y[:2], batch_size=2, verbose=0)
    np.testing.assert_allclose(_flat(model), start, atol=2e-4)


def test_probe_recomputes_batch_norm_statistics_for_an_average():
    x, y = _regression()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                              keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    calibration = np.random.default_rng(2).normal(size=(7, 3)).astype("float32")
    probe = benchmarks.IterateProbe(model, x, batch_size=5, average="uniform",
                                    recalibration_x=calibration)
    class Observe(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            _ = self.model  # On JAX: fit()'s state into the variables the probe reads.
            probe.observe()

    model.fit(x, y, batch_size=4, shuffle=False, verbose=0, callbacks=[Observe()])
    state = [v.numpy() for v in model.variables]
    _, logits = probe.read()
    for variable, value in zip(model.variables, state):  # Statistics restored too, bit for bit.
        np.testing.assert_array_equal(variable.numpy(), value)
    # By hand: the average's weights, the calibration batch's statistics.
    kernel, bias, gamma, beta, kernel2, bias2 = probe._uniform.mean()
    hidden = calibration @ kernel + bias
    mean, variance = hidden.mean(axis=0), hidden.var(axis=0)
    normed = (x @ kernel + bias - mean) / np.sqrt(variance + 1e-3) * gamma + beta
    np.testing.assert_allclose(logits, normed @ kernel2 + bias2, rtol=1e-4, atol=1e-5)


def test_validation_split_is_fixed_and_disjoint():
    x, y = np.arange(50) * 10, np.arange(50)
    (train_x, train_y), (held_x, held_y) = runner._split((x, y), 0.2)
    assert len(held_x) == 10 and len(train_x) == 40
    assert not set(train_y) & set(held_y) and set(train_y) | set(held_y) == set(range(50))
    np.testing.assert_array_equal(train_x, train_y * 10)
    again = runner._split((x, y), 0.2)
    np.testing.assert_array_equal(again[1][1], held_y)
    assert runner._split((x, y), 0.0) == ((x, y), None)


def test_schedule_free_rate_is_the_best_held_out(result):
    config = result.summary["config"]
    sweep = config["schedule_free_sweep"]
    losses = {float(r): loss for r, loss in sweep["held_out_loss"].items()}
    assert sorted(losses) == sorted(SF_GRID) and sweep["seed"] == 0
    assert config["schedule_free_learning_rate"] == min(losses, key=losses.get)
    assert config["validation_examples"] == round(0.1 * 1437)
    assert config["train_examples"] == 1437 - config["validation_examples"]
    with open(result.paths["summary_md"]) as f:
        text = f.read()
    assert "| schedule_free_adamw | " + f"{config['schedule_free_learning_rate']:g} (Adam" in text
    assert "held out of every run" in text


def test_digit_images_render_the_digits_at_the_papers_shapes():
    from keras_bsgd.benchmarks import digit_images

    rng = np.random.default_rng(0)
    digits = rng.uniform(0, 1, (5, 8, 8, 1)).astype("float32")
    small = digit_images.render("digits_28x28", digits, "train")
    assert small.shape == (5, 28, 28, 1) and small.dtype == np.float32
    # A bilinear resize keeps the mean brightness of each digit (to within its edges).
    np.testing.assert_allclose(small.mean(axis=(1, 2, 3)), digits.mean(axis=(1, 2, 3)), atol=0.03)
    colour = digit_images.render("digits_32x32x3", digits, "train")
    assert colour.shape == (5, 32, 32, 3) and 0 <= colour.min() and colour.max() <= 1
    np.testing.assert_array_equal(colour, digit_images.render("digits_32x32x3", digits, "train"))
    assert not np.array_equal(colour, digit_images.render("digits_32x32x3", digits, "test"))
    # A blank digit is its background colour, plus noise: one colour per image.
    blank = digit_images.render("digits_32x32x3", np.zeros((3, 8, 8, 1), "float32"), "test")
    assert np.all(blank.std(axis=(1, 2)) < 0.06)
    with pytest.raises(ValueError, match="Received: name='digits_9x9'"):
        digit_images.render("digits_9x9", digits, "train")


@needs_tfds
def test_resize_is_tensorflows_bitwise():
    import tensorflow as tf

    from keras_bsgd.benchmarks import digit_images

    digits = np.random.default_rng(0).uniform(0, 1, (7, 8, 8, 1)).astype("float32")
    for size in (24, 28, 5):
        expected = tf.image.resize(digits, (size, size), "bilinear").numpy()
        np.testing.assert_array_equal(digit_images.resize_bilinear(digits, size, size), expected)


def test_compare_on_a_rendered_task(tmp_path, data_dir):
    result = benchmarks.compare(
        dataset="digits_32x32x3", model="linear", forward_steps=2, steps=4, eval_every=2,
        windows=(), exact=False, baselines=False, seeds=(0,), output=str(tmp_path),
        data_dir=data_dir,
    )
    config = result.summary["config"]
    assert config["train_examples"] + config["validation_examples"] == 1437
    assert config["test_examples"] == 360
    assert result.runs[0]["evals"][0]["test_loss"] > 0


def test_report_names_the_backend(result):
    config = result.summary["config"]
    assert config["backend"] == keras.backend.backend() and config["backend_version"]
    with open(result.paths["summary_md"]) as f:
        assert f"Backend: {keras.backend.backend()} {config['backend_version']}" in f.read()


def test_gradient_counter_counts_backward_passes_inside_the_compiled_step():
    counter = benchmarks.GradientCounter()
    inputs = keras.Input((3,))
    model = keras.Model(inputs, counter(keras.layers.Dense(2)(inputs)))
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    x = np.ones((12, 3), "float32")
    model.fit(x, np.zeros((12, 2), "float32"), batch_size=4, verbose=0)
    model.predict(x, verbose=0)  # Forward passes do not count.
    assert int(counter.count) == 3
    assert not counter.weights  # Out of the model's state, which backward-SGD rewinds.


def test_comparison_figure_labels_and_contraction_legend():
    from keras_bsgd.benchmarks import plots

    steps = np.arange(0, 101, 10)

    def run(method, movement):
        rows = [{"step": int(k), "grad_evals": int(k), "test_loss": 1.0, "test_accuracy": 0.5,
                 "param_movement": math.nan if k == 0 else movement(k),
                 "logit_rms_change": 1.0, "distance_to_final": 1.0 + 100 - k} for k in steps]
        return {"method": method, "evals": rows}

    runs = [run("forward_sgd", lambda k: 1.0), run("backward_exact", lambda k: 0.99 ** k)]
    figure = plots.comparison_figure(runs, ["forward_sgd", "backward_exact"])
    assert [ax.get_ylabel() for ax in figure.axes] == [p[2] for p in plots._PANELS]
    legend = [t.get_text() for t in figure.axes[1].get_legend().get_texts()]
    assert legend == ["forward_sgd: ρ=1.00000/step, t½=∞",
                      "backward_exact: ρ=0.99000/step, t½=69"]


@pytest.mark.parametrize("frames, expected", [
    # Stacks as memray reported them for what TensorFlow keeps of a compiled model.
    (["operator new(unsigned long)",
      "tensorflow::FrozenStackTrace::FrozenStackTrace(absl::Span<tsl::StackFrame const>)",
      "tensorflow::(anonymous namespace)::StackTraceWrapper::LastUserFrame() const",
      "tensorflow::XlaCompilationDevice::Compute(tensorflow::OpKernel*)"],
     "stack traces of traced ops"),
    (["llvm::sys::Memory::allocateMappedMemory(unsigned long)",
      "xla::cpu::ContiguousSectionMemoryManager::reserveAllocationSpace(unsigned long)",
      "llvm::RuntimeDyldImpl::loadObjectImpl(llvm::object::ObjectFile const&)"],
     "XLA code generation and compiled code"),
    (["operator new(unsigned long)",
      "xla::HloDataflowAnalysis::NewHloValue(xla::HloInstruction*)",
      "xla::BufferAssigner::CreateAssignment(xla::HloModule const*)"],
     "XLA programs (HLO, analyses)"),
    (["tsl::port::AlignedMalloc(unsigned long, std::align_val_t)",
      "tensorflow::core::Arena::AllocNewBlock(unsigned long, unsigned int)",
      "tensorflow::Graph::AddNode(tensorflow::NodeDef)"],
     "TensorFlow runtime (graphs, functions)"),
    # A signature that only mentions a stack trace type is not one.
    (["operator new(unsigned long)",
      "tensorflow::KernelAndDeviceOp::Run(std::optional<tensorflow::ManagedStackTrace> const&)"],
     "TensorFlow runtime (graphs, functions)"),
    (["_PyCode_CreateLineArray", "_PyEval_EvalFrameDefault"], "Python"),
    (["malloc", "operator new(unsigned long)"], "other"),
])
def test_kept_memory_names_the_owner_by_the_innermost_known_frame(frames, expected):
    from keras_bsgd.benchmarks import kept_memory

    assert kept_memory.category(frames) == expected
