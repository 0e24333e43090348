"""MultiWorkerMirroredStrategy: 2 worker processes on 127.0.0.1 equal one device."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.tensorflow

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


WINDOWS = ["3", "exact"]


def launch(output, tf_config=None):
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    output.mkdir()
    return subprocess.Popen(
        [sys.executable, "-m", "tests.multiworker_probe", str(output), *WINDOWS],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Output folders of the two workers and of the one-device reference.

    Each process trains every window: a TensorFlow start-up costs seconds.
    """
    root = tmp_path_factory.mktemp("multiworker")
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = [
        launch(root / f"worker{i}",
               {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        for i in range(2)
    ]
    single = launch(root / "single")
    try:
        for proc in procs + [single]:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-4000:]
    finally:
        for proc in procs + [single]:
            proc.kill()
    return root


@pytest.mark.slow
@pytest.mark.parametrize("window", WINDOWS)
def test_two_workers_match_one_device(window, runs):
    expected = np.load(runs / "single" / f"{window}.npz")
    for i in range(2):
        got = np.load(runs / f"worker{i}" / f"{window}.npz")
        for key in expected.files:
            a, b = got[key], expected[key]
            assert np.linalg.norm(a - b) / np.linalg.norm(b) <= 1e-5, (i, key)
