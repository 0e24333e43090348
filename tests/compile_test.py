"""The step function compiles once per run, and its size does not grow with the window."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bsgd

pytestmark = pytest.mark.tensorflow

ROOT = pathlib.Path(__file__).resolve().parents[1]


# The XLA program: the whole step, or one map's pass (what "auto" picks on CPU
# for a model with convolutions), called from the anchor advance and the
# replay loop alike.
XLA_PROGRAMS = {"step": "one_step_on_data", "map": "_map_gradients"}
WINDOWS = ["exact", "4"]


@pytest.fixture(scope="module")
def compile_results(tmp_path_factory):
    """Every case of the probe in one process, with XLA dumping every module it compiles."""
    dump_dir = tmp_path_factory.mktemp("xla_dump")
    env = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={dump_dir}", KERAS_BACKEND="tensorflow")
    cases = [f"{window}:{unit}" for window in WINDOWS for unit in XLA_PROGRAMS]
    cases += [f"{window}:{unit}:4:6" for window in WINDOWS for unit in XLA_PROGRAMS]
    out = subprocess.run(
        [sys.executable, "-m", "tests.compile_probe", str(dump_dir), "45", *cases],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("RESULT ")[1].splitlines()[0])


@pytest.mark.parametrize("schedule", ["", ":4:6"], ids=["every_step", "replay_every4_forward6"])
@pytest.mark.parametrize("xla_unit", list(XLA_PROGRAMS))
@pytest.mark.parametrize("window", WINDOWS)
def test_xla_compiles_once_over_45_steps(window, xla_unit, schedule, compile_results):
    # With replay_every=4 and forward_steps=6, whether a step replays is a
    # tensor, not a retrace; the last step (45) replays through the
    # epoch-end replay function, compiled once with the whole-step unit.
    result = compile_results[f"{window}:{xla_unit}{schedule}"]
    assert "error" not in result, result.get("error")
    compilations = result["compilations"]
    for unit, program in XLA_PROGRAMS.items():
        assert compilations.get(program, 0) == (unit == xla_unit), program
    replays_at_epoch_end = bool(schedule) and xla_unit == "step"
    assert compilations.get("replay_to_current_step", 0) == replays_at_epoch_end
    assert compilations.get("must_be_constant_probe", 0) == 3
    # Traced once (twice at most: tf.function's variable-creation retrace).
    assert 1 <= result["traces"] <= 2


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


@pytest.mark.parametrize("jit_compile", [True, False])
def test_under_xla_the_steps_ops_record_no_library_frames(jit_compile):
    """TensorFlow keeps what XLA-compiled ops record of their stacks for the process' life.

    Under XLA the step's ops record the caller's frames only (`op_traces`),
    which halved what each compiled model keeps (docs/performance.md,
    "Memory"); without XLA nothing is kept, and error messages keep every frame.
    """
    from keras_bsgd.backend.tensorflow import step as step_module

    model = keras_bsgd.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse", jit_compile=jit_compile
    )
    x, y = np.ones((4, 3), "float32"), np.ones((4, 2), "float32")
    model.fit(x, y, batch_size=4, verbose=0)
    traced = tf.function(model.train_step, autograph=False)
    graph = traced.get_concrete_function((tf.constant(x), tf.constant(y))).graph
    frames = {frame.filename for op in graph.get_operations() for frame in op.traceback}
    assert (step_module.__file__ in frames) is not jit_compile
