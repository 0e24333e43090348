"""The GPU run's Python entry points (scripts/bench_gpu.sh) in their tiny CPU modes.

Both are backend-neutral: they run on the suite's backend (`KERAS_BACKEND`),
each in a subprocess, as the script runs them.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from keras_bsgd.benchmarks import step_bench
from keras_bsgd.benchmarks import step_report
from keras_bsgd.benchmarks import step_timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUN_KEYS = {
    "model", "input_shape", "batch_size", "params", "t_sgd_s", "t_sgd_min_s", "sgd_samples_s",
    "windowed", "exact", "exact_run", "R", "R_exact", "compile_s", "first_step_s", "skipped",
}
SETTING_KEYS = {"grad_evals", "steps_timed", "t_s", "t_min_s", "t_sgd_s", "R", "samples_s"}


def _python(*args, timeout):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT})


def test_windowed_and_exact_evals_follow_the_design():
    # docs/design.md §1: min(k, w) maps, plus the anchor's once k > w; exact: k.
    assert [step_timing.windowed_evals(2, k) for k in (1, 2, 3, 4)] == [1, 3, 6, 9]
    assert step_timing.windowed_evals(1, 3) == 1 + 2 + 2
    assert step_timing.exact_evals(4) == 10


def test_synthetic_stream_cycles_fixed_batches():
    x, y = step_timing.synthetic_stream((3,), 2, steps=step_timing.NUM_BATCHES + 1)
    assert x.shape == (2 * (step_timing.NUM_BATCHES + 1), 3) and x.dtype == "float32"
    assert y.dtype == "int32" and y.max() < step_timing.NUM_CLASSES
    assert (x[-2:] == x[:2]).all()  # batch 17 is batch 1 again


def test_step_clock_names_the_steps_it_has():
    clock = step_timing.StepClock(model=None)
    clock.begin, clock.ends = 0.0, [1.0, 1.5]
    assert (clock.first_step_s, clock.step_s(2)) == (1.0, 0.5)
    with pytest.raises(ValueError, match="Received: step=3"):
        clock.step_s(3)


@pytest.mark.slow
def test_tiny_step_timing_writes_every_key_and_finite_ratios(tmp_path):
    proc = _python("-m", "keras_bsgd.benchmarks.step_bench", "--tiny", "--out", str(tmp_path),
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / step_bench.JSON_NAME).read_text())
    assert result["finished"] and not result["skipped"]
    config = step_bench.CONFIGS["tiny"]
    assert [[r["model"], r["batch_size"]] for r in result["runs"]] == [
        [name, batch] for name, _, batch, _ in config["runs"]
    ]
    for run in result["runs"]:
        assert RUN_KEYS <= set(run), RUN_KEYS - set(run)
        assert not run["skipped"], run["skipped"]
        assert sorted(run["R"]) == sorted(f"w={w}" for w in config["windows"])
        assert sorted(run["R_exact"]) == sorted(f"k={k}" for k in config["depths"])
        for record in run["windowed"] + run["exact"]:
            assert SETTING_KEYS <= set(record)
            assert record["steps_timed"] == config["steps"]
            assert math.isfinite(record["R"]) and record["R"] > 0
        for record in run["windowed"] + [run["exact_run"]]:
            assert record["grad_evals_counted"] == record["grad_evals_expected"]
        assert all(math.isfinite(v) for v in run["compile_s"].values())
    markdown = (tmp_path / step_bench.MARKDOWN_NAME).read_text()
    assert markdown == step_report.to_markdown(result) + "\n"
    assert "R_exact = " in markdown


@pytest.mark.slow
def test_reference_check_passes_and_reports_every_case(tmp_path):
    path = tmp_path / "reference_check.json"
    proc = _python("-m", "tests.reference_check", "--steps", "12", "--json", str(path),
                   timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = json.loads(path.read_text())["cases"]
    from tests import reference_check

    assert sorted(cases) == sorted(reference_check.CASES)
    assert all(c["ok"] and c["max_abs_error"] < reference_check.TOLERANCE for c in cases.values())
