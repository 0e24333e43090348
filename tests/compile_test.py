"""The step function compiles once per run, and its size does not grow with the window."""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bsgd

ROOT = pathlib.Path(__file__).resolve().parents[1]


def xla_compilations(dump_dir, function_name):
    """Number of XLA modules compiled for `function_name` (one dump file each)."""
    return len(
        [
            p
            for p in pathlib.Path(dump_dir).iterdir()
            if function_name in p.name and p.name.endswith(".before_optimizations.txt")
        ]
    )


# The XLA program: the whole step, or one map's pass (what "auto" picks on CPU
# for a model with convolutions), called from the anchor advance and the
# replay loop alike.
XLA_PROGRAMS = {"step": "one_step_on_data", "map": "_map_gradients"}


@pytest.mark.parametrize("xla_unit", list(XLA_PROGRAMS))
@pytest.mark.parametrize("window", ["exact", "4"])
def test_xla_compiles_once_over_45_steps(window, xla_unit, tmp_path):
    env = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={tmp_path}", KERAS_BACKEND="tensorflow")
    out = subprocess.run(
        [sys.executable, "-m", "tests.compile_probe", window, "45", xla_unit],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for unit, program in XLA_PROGRAMS.items():
        assert xla_compilations(tmp_path, program) == (unit == xla_unit), program
    assert xla_compilations(tmp_path, "must_be_constant_probe") == 3
    # Traced once (twice at most: tf.function's variable-creation retrace).
    traces = int(out.stdout.split("TRACES")[1])
    assert 1 <= traces <= 2


class CountingDense(keras.layers.Dense):
    """A Dense layer that counts how often its Python `call` runs."""

    calls = 0

    def call(self, inputs):
        CountingDense.calls += 1
        return super().call(inputs)


def model_traces_per_step_function(window):
    CountingDense.calls = 0
    model = keras_bsgd.Sequential([keras.Input((3,)), CountingDense(2)])
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=window), loss="mse")
    x = np.ones((32 * 4, 3), "float32")
    ds = tf.data.Dataset.from_tensor_slices((x, x[:, :2])).batch(4, drop_remainder=True)
    model.fit(ds, verbose=0)
    return CountingDense.calls


def test_model_is_traced_a_fixed_number_of_times_whatever_the_window():
    # A Python-unrolled replay would trace the model w times; the while_loop
    # traces it a fixed number of times, so compile time is flat in w.
    assert model_traces_per_step_function(2) == model_traces_per_step_function(32)
    assert model_traces_per_step_function(None) <= model_traces_per_step_function(2)
