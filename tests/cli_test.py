"""Tests of the `keras-bsgd` command line (`python -m keras_bsgd`), on either backend."""

import json
import os
import subprocess
import sys

import keras
import pytest

from keras_bsgd import cli
from keras_bsgd import datasets

from keras_bsgd import native_logs
from keras_bsgd.benchmarks import runner

from keras_bsgd.benchmarks import backend_choice

BACKEND = keras.backend.backend()
OTHER = "jax" if BACKEND == "tensorflow" else "tensorflow"

# No TF_CPP_MIN_LOG_LEVEL: the command line must hide TensorFlow's C++ logs itself.
ENV = {k: v for k, v in os.environ.items() if k != native_logs.LEVEL}
ENV["KERAS_BACKEND"] = BACKEND


def _run(*args, timeout=120, env=None):
    return subprocess.run(
        [sys.executable, "-m", "keras_bsgd", *args],
        capture_output=True, text=True, env=env or ENV, timeout=timeout,
    )


def test_compare_tiny_run(tmp_path):
    output = tmp_path / "out"
    done = _run(
        "compare", "--backend", BACKEND, "--forward-steps", "4", "--steps", "6", "--batch-size", "8",
        "--windows", "2", "--no-baselines", "--weight-decay", "0", "--seeds", "0",
        "--eval-every", "3", "--output", str(output), "--data-dir", str(tmp_path / "tfds"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # No C++ log line (absl's "I0000 00:00:..." or its InitializeLog notice).
    assert "absl::InitializeLog" not in done.stderr, done.stderr[-3000:]
    assert not any(native_logs.drop_native_lines(line) == "" for line in
                   done.stderr.splitlines(keepends=True) if line.strip()), done.stderr[-3000:]
    assert "22/22" in done.stdout  # The progress bar: 4 warm-up steps + 3 methods x 6.
    assert f"Report:   {output / 'summary.md'}" in done.stdout
    assert f"Plots:    {output / 'comparison.png'}" in done.stdout
    assert "| backward_w2 |" in done.stdout
    with open(output / "summary.json") as f:
        summary = json.load(f)
    assert list(summary["methods"]) == ["forward_sgd", "backward_exact", "backward_w2"]
    assert summary["methods"]["backward_exact"]["grad_evals"]["mean"] == 3 + 6  # replays
    assert summary["config"]["forward_steps"] == 4
    assert summary["config"]["weight_decay"] is None
    assert summary["config"]["backend"] == BACKEND
    assert f"Backend: {BACKEND} " in done.stdout
    assert (output / "comparison.png").stat().st_size > 0


@pytest.mark.skipif(not datasets.tfds_available(), reason="needs TensorFlow and TFDS installed")
def test_unprepared_dataset_is_a_clean_error(tmp_path):
    done = _run("compare", "--dataset", "cifar10", "--model", "resnet18",
                "--output", str(tmp_path / "out"), "--data-dir", str(tmp_path), "--quiet")
    assert done.returncode == 2
    assert "never downloads" in done.stderr and "Traceback" not in done.stderr


def _settings(*argv):
    return cli._compare_settings(cli._parser().parse_args(["compare", *argv]))


def test_parser_defaults_are_the_runners(capsys):
    expected = {k: v for k, v in runner.DEFAULTS.items() if k != "eval_batch_size"}
    assert _settings() == expected  # Not a command-line option: eval_batch_size.
    settings = _settings("--windows", "--no-exact", "--no-baselines", "--weight-decay", "0")
    assert settings["windows"] == [] and not settings["exact"] and not settings["baselines"]
    assert settings["weight_decay"] is None
    settings = _settings("--schedule-free-lr", "0.001", "--validation-fraction", "0.2")
    assert settings["schedule_free_learning_rates"] == [0.001]
    assert settings["validation_fraction"] == 0.2
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "compare" in capsys.readouterr().out


def test_regime_fills_the_options_not_given():
    from keras_bsgd.benchmarks import regimes

    settings = _settings("--regime", "paper_resnet")
    assert {k: settings[k] for k in regimes.REGIMES["paper_resnet"]} == (
        regimes.REGIMES["paper_resnet"])
    assert settings["output"] == runner.DEFAULTS["output"]  # Not in the regime: the default.
    cold = _settings("--regime", "paper_mlp", "--forward-steps", "0", "--seeds", "4")
    assert (cold["forward_steps"], cold["seeds"], cold["model"]) == (0, [4], "mlp_fashion")
    assert cold["weight_decay"] is None
    with pytest.raises(SystemExit):
        _settings("--regime", "nope")


def test_missing_bench_extra_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_missing_bench_modules", lambda: ["tensorflow_datasets", "sklearn"])
    assert cli.main(["compare"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("keras-bsgd compare:") and "tensorflow_datasets, sklearn" in line
    assert line.endswith("pip install 'keras-bsgd[bench]'")


def test_import_error_of_the_bench_extra_is_one_line(monkeypatch, capsys):
    def compare_without_tfds(args):
        raise ModuleNotFoundError("No module named 'tensorflow_datasets'",
                                  name="tensorflow_datasets")

    monkeypatch.setattr(cli, "_compare", compare_without_tfds)
    assert cli.main(["compare"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("keras-bsgd compare:") and "pip install 'keras-bsgd[bench]'" in line


def test_other_import_errors_propagate(monkeypatch):
    def broken(args):
        raise ModuleNotFoundError("No module named 'keras_bsgd.nope'", name="keras_bsgd.nope")

    monkeypatch.setattr(cli, "_compare", broken)
    with pytest.raises(ModuleNotFoundError, match="nope"):
        cli.main(["compare"])


def test_backend_flag_is_parsed_and_removed():
    assert backend_choice.pop_backend(["compare", "--backend", "jax", "--quiet"]) == (
        "jax", ["compare", "--quiet"])
    assert backend_choice.pop_backend(["bench", "--backend=tensorflow"]) == (
        "tensorflow", ["bench"])
    assert backend_choice.pop_backend(["compare"]) == (None, ["compare"])
    with pytest.raises(ValueError, match="Received: --backend 'torch'"):
        backend_choice.pop_backend(["compare", "--backend", "torch"])


@pytest.mark.parametrize("command", ["compare", "bench"])
def test_conflicting_backend_in_process_is_refused(command, capsys):
    # Keras is imported here: a call from Python cannot change its backend.
    assert cli.main([command, "--backend", OTHER]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"keras-bsgd {command}: error: --backend {OTHER} asked for")
    assert f"already imported with the {BACKEND} backend" in line
    assert f"Set KERAS_BACKEND={OTHER}" in line


def test_backend_flag_starts_the_command_line_again_on_that_backend():
    # KERAS_BACKEND names the other backend: --backend wins, the process starts again.
    # `bench --memory-only` is seconds on TensorFlow, and refused on JAX, by name.
    done = _run("bench", "--backend", BACKEND, "--tiny", "--memory-only", "--memory-examples",
                "10", env={**ENV, "KERAS_BACKEND": OTHER})
    if BACKEND == "tensorflow":
        assert done.returncode == 0, done.stderr[-3000:]
        assert "data_store_bytes(10 uint8" in done.stdout
    else:
        assert done.returncode == 2
        assert "--memory-only measures TensorFlow's" in done.stderr, done.stderr[-3000:]
