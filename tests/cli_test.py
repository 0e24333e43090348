"""Tests of the `keras-bsgd` command line (`python -m keras_bsgd`)."""

import json
import os
import subprocess
import sys

import pytest

from keras_bsgd import cli

ENV = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _run(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "keras_bsgd", *args],
        capture_output=True, text=True, env=ENV, timeout=timeout,
    )


def test_compare_tiny_run(tmp_path):
    output = tmp_path / "out"
    done = _run(
        "compare", "--steps", "6", "--batch-size", "8", "--windows", "2",
        "--seeds", "0", "--eval-every", "3", "--output", str(output),
        "--data-dir", str(tmp_path / "tfds"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Report:   {output / 'summary.md'}" in done.stdout
    assert f"Plots:    {output / 'comparison.png'}" in done.stdout
    assert "| backward_w2 |" in done.stdout
    with open(output / "summary.json") as f:
        summary = json.load(f)
    assert list(summary["methods"]) == ["forward_sgd", "backward_exact", "backward_w2"]
    assert summary["methods"]["backward_exact"]["grad_evals"]["mean"] == 21  # 6*7/2
    assert (output / "comparison.png").stat().st_size > 0


def test_unprepared_dataset_is_a_clean_error(tmp_path):
    done = _run("compare", "--dataset", "cifar10", "--model", "resnet18",
                "--output", str(tmp_path / "out"), "--data-dir", str(tmp_path), "--quiet")
    assert done.returncode == 2
    assert "never downloads" in done.stderr and "Traceback" not in done.stderr


def test_parser_defaults_and_help(capsys):
    args = cli._parser().parse_args(["compare"])
    assert args.dataset == "bsgd_digits" and args.windows == [8, 32] and args.exact
    args = cli._parser().parse_args(["compare", "--windows", "--no-exact"])
    assert args.windows == [] and not args.exact
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "compare" in capsys.readouterr().out


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
