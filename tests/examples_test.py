"""Smoke tests: every example runs in a tiny configuration."""

import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
ENV = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}

# Each example runs in its own TensorFlow process (10-20 s).
pytestmark = [pytest.mark.slow, pytest.mark.tensorflow]


def _run(script, *args):
    done = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, script), *args],
        capture_output=True, text=True, env=ENV, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("window", ["4", "0"])
def test_quickstart(window, tmp_path):
    out = _run("quickstart.py", "--steps", "8", "--window", window,
               "--data-dir", str(tmp_path))
    assert "steps=8 " in out and "test_accuracy=" in out


def test_tfds_compare(tmp_path):
    out = _run("tfds_compare.py", "--dataset", "mnist1d", "--forward-steps", "3", "--steps", "6",
               "--windows", "2", "--eval-every", "3", "--batch-size", "8",
               "--output", str(tmp_path / "out"), "--data-dir", str(tmp_path / "tfds"))
    assert "backward_exact: test acc" in out
    assert (tmp_path / "out" / "comparison.png").exists()


def test_stability_study(tmp_path):
    out = _run("stability_study.py", "--steps", "12", "--output", str(tmp_path))
    assert "Largest deviation from the closed forms" in out
    assert (tmp_path / "stability_study.png").exists()


@pytest.mark.parametrize("window", ["4", "0"])
def test_distributed(window):
    out = _run("distributed.py", "--window", window, "--steps", "10")
    assert "replicas=2 steps=10" in out
    error = float(out.split("max_relative_error_vs_one_device=")[1].split()[0])
    assert error <= 1e-5
