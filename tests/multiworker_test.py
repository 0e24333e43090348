"""MultiWorkerMirroredStrategy: 2 worker processes on 127.0.0.1 equal one device."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch(window, output, tf_config=None):
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.multiworker_probe", window, str(output)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("window", ["3", "exact"])
def test_two_workers_match_one_device(window, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = [
        launch(window, tmp_path / f"worker{i}.npz",
               {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        for i in range(2)
    ]
    single = launch(window, tmp_path / "single.npz")
    try:
        for proc in procs + [single]:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-4000:]
    finally:
        for proc in procs + [single]:
            proc.kill()
    expected = np.load(tmp_path / "single.npz")
    for i in range(2):
        got = np.load(tmp_path / f"worker{i}.npz")
        for key in expected.files:
            a, b = got[key], expected[key]
            assert np.linalg.norm(a - b) / np.linalg.norm(b) <= 1e-5, (i, key)
