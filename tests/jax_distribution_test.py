"""`keras.distribution.DataParallel` on 2 virtual CPU devices equals one device (JAX)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.jax


def test_data_parallel_equals_one_device_with_the_ring_sharded_on_the_batch_axis():
    probe = os.path.join(os.path.dirname(__file__), "jax_distribution_probe.py")
    root = os.path.dirname(os.path.dirname(__file__))
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run(
        [sys.executable, probe], capture_output=True, text=True, env=env, timeout=600, cwd=root
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 4
    for result in results:
        assert result["gap"] <= 1e-5, result
        assert result["per_device"] * 2 == result["whole"], result  # each device: half the ring
