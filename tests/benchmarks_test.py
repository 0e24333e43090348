"""Tests of keras_bsgd.benchmarks: a tiny forward-vs-backward comparison."""

import json
import math
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_bsgd import benchmarks  # noqa: E402
from keras_bsgd.benchmarks import models  # noqa: E402

STEPS = 12
WINDOWS = (1, 4)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return benchmarks.compare(
        dataset="bsgd_digits",
        batch_size=16,
        learning_rate=0.2,
        steps=STEPS,
        windows=WINDOWS,
        seeds=(0,),
        eval_every=5,
        output=str(tmp_path_factory.mktemp("compare")),
        data_dir=str(tmp_path_factory.mktemp("tfds")),
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
        lines = f.read().splitlines()
    assert len(lines) == 1 + STEPS * (2 + len(WINDOWS))


def test_summary_json_keys_and_values(result):
    with open(result.paths["summary_json"]) as f:
        summary = json.load(f)
    methods = ["forward_sgd", "backward_exact", "backward_w1", "backward_w4"]
    assert list(summary["methods"]) == methods
    assert summary["config"]["steps"] == STEPS
    for method in methods:
        stats = summary["methods"][method]
        assert set(stats) == set(benchmarks.metrics.RUN_METRICS)
        assert 0.0 <= stats["final_test_accuracy"]["mean"] <= 1.0
        assert math.isfinite(stats["final_test_loss"]["mean"])
        assert stats["test_loss_std_last25"]["mean"] >= 0.0
        assert stats["iterate_distance_mean_last25"]["mean"] > 0.0
        assert stats["wall_time_s"]["mean"] > 0.0
        assert stats["peak_rss_mb"]["mean"] > 0.0
        assert stats["final_test_accuracy"]["std"] == 0.0  # one seed
    with open(result.paths["summary_md"]) as f:
        table = f.read()
    assert all(f"| {m} |" in table for m in methods)


def test_rows_are_plausible(result):
    for run in result.runs:
        assert [r["step"] for r in run["steps"]] == list(range(1, STEPS + 1))
        assert [r["step"] for r in run["evals"]] == [0, 5, 10, 12]
        for row in run["steps"]:
            assert math.isfinite(row["train_loss"]) and row["train_loss"] > 0
            assert math.isfinite(row["iterate_distance"])
        for row in run["evals"]:
            assert 0.0 <= row["test_accuracy"] <= 1.0
            assert math.isfinite(row["test_loss"])


def test_same_initial_weights(result):
    initial = {r["method"]: r["evals"][0]["test_loss"] for r in result.runs}
    assert len(set(initial.values())) == 1, initial


@pytest.mark.parametrize(
    "method, window, forward",
    [("forward_sgd", None, True), ("backward_exact", None, False),
     ("backward_w1", 1, False), ("backward_w4", 4, False)],
)
def test_gradient_evaluations_match_the_formulas(result, method, window, forward):
    counted = [r["grad_evals"] for r in _run(result, method)["steps"]]
    expected = np.cumsum(
        [benchmarks.expected_grad_evals(k, window, forward) for k in range(1, STEPS + 1)]
    )
    assert counted == expected.tolist()
    if method == "backward_exact":
        assert counted[-1] == STEPS * (STEPS + 1) // 2


def test_window_one_is_forward_sgd(result):
    forward, windowed = _run(result, "forward_sgd"), _run(result, "backward_w1")
    for key in ("train_loss", "iterate_distance"):
        np.testing.assert_allclose(
            [r[key] for r in windowed["steps"]], [r[key] for r in forward["steps"]],
            rtol=1e-4, atol=1e-6,
        )
    np.testing.assert_allclose(
        [r["test_loss"] for r in windowed["evals"]], [r["test_loss"] for r in forward["evals"]],
        rtol=1e-4,
    )


def test_exact_differs_from_forward(result):
    forward, exact = _run(result, "forward_sgd"), _run(result, "backward_exact")
    # Step 1 is the same map from the same start; later steps differ.
    assert forward["steps"][0]["iterate_distance"] == pytest.approx(
        exact["steps"][0]["iterate_distance"], rel=1e-4
    )
    assert forward["evals"][-1]["test_loss"] != exact["evals"][-1]["test_loss"]


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


def test_summarize_and_aggregate():
    steps = [{"step": k, "iterate_distance": float(k), "grad_evals": k * k,
              "wall_time_s": 0.5 * k, "rss_mb": 10.0 + k} for k in range(1, 9)]
    evals = [{"step": k, "grad_evals": k * k, "test_loss": float(k),
              "test_accuracy": k / 10} for k in (0, 2, 4, 6, 8)]
    s = benchmarks.summarize_run(steps, evals, forward_budget=20)
    assert s["iterate_distance_mean_last25"] == 7.5  # steps 7 and 8
    assert s["test_loss_std_last25"] == 1.0  # evaluations at steps 6 and 8
    assert s["accuracy_at_forward_budget"] == 0.4  # step 4: 16 <= 20 < 36
    assert s["grad_evals"] == 64 and s["wall_time_s"] == 4.0 and s["peak_rss_mb"] == 18.0
    agg = benchmarks.aggregate([s, {**s, "grad_evals": 66}])
    assert agg["grad_evals"] == {"mean": 65.0, "std": pytest.approx(math.sqrt(2))}


def test_models_build():
    assert models.build("mlp", (8, 8, 1), 10).output_shape == (None, 10)
    assert models.resnet18(width=4).output_shape == (None, 10)
    assert models.resnet50(num_classes=100, width=2).output_shape == (None, 100)
    with pytest.raises(ValueError, match="Received: name='vgg'"):
        models.build("vgg", (8,), 10)


def test_invalid_compare_arguments(tmp_path):
    with pytest.raises(ValueError, match="Received: windows=\\(0,\\)"):
        benchmarks.compare(windows=(0,), output=str(tmp_path))
    with pytest.raises(ValueError, match="Received: name='nope'"):
        benchmarks.compare(dataset="nope", output=str(tmp_path))


def test_compare_on_a_prepared_image_dataset(tmp_path):
    import tensorflow_datasets as tfds

    # tfds' mock stands in for a prepared cifar10: the real-dataset path, offline.
    with tfds.testing.mock_data(num_examples=16):
        result = benchmarks.compare(
            dataset="cifar10", model="linear", batch_size=4, steps=4, windows=(2,),
            eval_every=2, output=str(tmp_path),
        )
    assert result.summary["config"]["train_examples"] == 16
    assert result.summary["methods"]["backward_exact"]["grad_evals"]["mean"] == 10
