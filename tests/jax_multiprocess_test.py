"""`keras.distribution.DataParallel` across 2 processes on 127.0.0.1 (`jax.distributed`) equals one device (JAX)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.jax, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(process, processes, port):
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="jax")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    return subprocess.Popen(
        [sys.executable, "-m", "tests.jax_multiprocess_probe", str(process), str(processes), str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )


def result(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    (line,) = [line for line in out.splitlines() if line.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


def max_gap(a, b):
    return max(float(np.abs(np.array(u) - np.array(v)).max()) for u, v in zip(a, b, strict=True))


def test_two_processes_equal_one_device_each_holding_its_part_of_the_ring():
    port = free_port()
    workers = [start(i, 2, port) for i in range(2)]
    try:
        two = [result(w) for w in workers]
    finally:
        for worker in workers:  # a failed process leaves the other waiting for it
            worker.kill()
    one = result(start(0, 1, 0))
    for config, (single, first, second) in enumerate(zip(one, *two, strict=True)):
        assert max_gap(first["weights"], second["weights"]) == 0.0, config
        assert max_gap(single["weights"], first["weights"]) <= 1e-5, config
        # Each process holds half of every buffered batch, not the whole ring.
        assert first["ring_bytes"] * 2 == single["ring_bytes"], (config, first, single)
