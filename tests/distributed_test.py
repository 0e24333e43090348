"""MirroredStrategy on 2 logical CPUs: same trajectory as one device (subprocess)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The cases start a TensorFlow process with 2 logical CPUs (about 2 minutes).
pytestmark = [pytest.mark.slow, pytest.mark.tensorflow]


def probe(module, *args):
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=dict(os.environ, KERAS_BACKEND="tensorflow"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.split("RESULT ")[1].splitlines()[0])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    # Every case runs in one process: each TensorFlow start-up costs seconds.
    return probe("tests.distributed_probe", "all", str(tmp_path_factory.mktemp("distributed")))


def case(results, name):
    """The results of one probe case; its traceback fails the test if it raised."""
    result = results[name]
    assert "error" not in result, result.get("error")
    return result


@pytest.mark.parametrize("xla", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("window", ["3", "exact"])
def test_mirrored_matches_one_device(window, xla, results):
    # Under XLA each replica's forward and backward pass is compiled alone.
    result = case(results, f"{window}-{'xla' if xla else 'graph'}")
    assert result["steps"] == 20 and result["iterations"] == 20
    assert result["max_error"] <= 1e-5, result
    # Replicas hold identical weights/optimizer state and their own shards.
    assert result["replica_spread"] == 0.0
    assert result["shards_ok"]


@pytest.mark.parametrize("window", ["3", "exact"])
def test_checkpoints_from_two_replicas_resume_on_two_and_on_one(window, results):
    result = case(results, f"{window}-resume")
    assert result["two_replicas"] <= 1e-5, result
    assert result["one_device"] <= 1e-5, result
    assert result["tf_two_replicas"] <= 1e-5, result
    assert result["tf_one_device"] <= 1e-5, result


def test_unsupported_combinations_are_refused_before_any_step(results):
    result = case(results, "refusals")
    assert "steps_per_execution=2" in result["steps_per_execution"]
    assert "mixed_bfloat16" in result["mixed_float16"]
    assert "synchronized=True" in result["synchronized_batchnorm_under_xla"]
    assert all(result[k] for k in result if k.endswith("_unchanged"))


def test_replay_every_and_forward_steps_on_two_replicas_match_one_device(results):
    result = case(results, "scheduled")
    for window in ("3", "exact"):
        assert result[f"max_error_{window}"] <= 1e-5, result
        single, mirrored = result[f"evaluations_{window}"]
        assert single == mirrored > 0
