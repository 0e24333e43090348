"""MirroredStrategy on 2 logical CPUs: same trajectory as one device (subprocess)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Each case starts a TensorFlow process with 2 logical CPUs (10-40 s).
pytestmark = pytest.mark.slow


def probe(module, *args):
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=dict(os.environ, KERAS_BACKEND="tensorflow"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.split("RESULT ")[1].splitlines()[0])


@pytest.mark.parametrize("xla", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("window", ["3", "exact"])
def test_mirrored_matches_one_device(window, xla):
    # Under XLA each replica's forward and backward pass is compiled alone.
    result = probe("tests.distributed_probe", window, *(["xla"] if xla else []))
    assert result["steps"] == 20 and result["iterations"] == 20
    assert result["max_error"] <= 1e-5, result
    # Replicas hold identical weights/optimizer state and their own shards.
    assert result["replica_spread"] == 0.0
    assert result["shards_ok"]


@pytest.mark.parametrize("window", ["3", "exact"])
def test_checkpoints_from_two_replicas_resume_on_two_and_on_one(window, tmp_path):
    result = probe("tests.distributed_probe", window, str(tmp_path / "run.keras"))
    assert result["two_replicas"] <= 1e-5, result
    assert result["one_device"] <= 1e-5, result
    assert result["tf_two_replicas"] <= 1e-5, result
    assert result["tf_one_device"] <= 1e-5, result


def test_unsupported_combinations_are_refused_before_any_step():
    result = probe("tests.distributed_probe", "refusals")
    assert "steps_per_execution=2" in result["steps_per_execution"]
    assert "mixed_bfloat16" in result["mixed_float16"]
    assert "synchronized=True" in result["synchronized_batchnorm_under_xla"]
    assert all(result[k] for k in result if k.endswith("_unchanged"))
