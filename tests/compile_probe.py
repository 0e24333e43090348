"""Subprocess body of compile_test: trains under XLA with --xla_dump_to set.

Usage: python -m tests.compile_probe DUMP_DIR STEPS WINDOW:UNIT[:E:W]...  (WINDOW:
int or "exact"; UNIT: compile()'s xla_unit; E, W: BackwardSGD's replay_every and
forward_steps, default 1 and 0)
Runs the cases one after the other and prints, for each, the XLA modules it
compiled per function name and the number of Python traces of train_step, as
one JSON line: "RESULT {case: {"compilations": {...}, "traces": n}}" (a case
that raises: {case: {"error": traceback}}).
"""

import collections
import json
import os
import pathlib
import sys
import traceback

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bsgd  # noqa: E402

# Function names whose XLA modules compile_test counts.
PROGRAMS = (
    "one_step_on_data",
    "_map_gradients",
    "replay_to_current_step",
    "must_be_constant_probe",
)


class CountingSequential(keras_bsgd.Sequential):
    traces = 0

    def train_step(self, data):
        CountingSequential.traces += 1
        return super().train_step(data)


def main(window, steps, xla_unit, replay_every=1, forward_steps=0):
    CountingSequential.traces = 0
    model = CountingSequential(
        [keras.Input((3,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(
            0.05,
            momentum=0.5,
            window=window,
            replay_every=replay_every,
            forward_steps=forward_steps,
        ),
        loss="mse",
        jit_compile=True,
        xla_unit=xla_unit,
    )
    rng = np.random.default_rng(0)
    x = rng.random((steps * 4, 3), "float32")
    y = rng.random((steps * 4, 1), "float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4, drop_remainder=True)
    model.fit(ds, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == steps

    # A known recompiling pattern: a slice whose start is a traced tensor is a
    # "must-be-constant" operand, so XLA compiles once per distinct value. It
    # shows that the dump directory does count every compilation.
    buf = tf.Variable(tf.zeros((4, 2)))

    @tf.function(jit_compile=True)
    def must_be_constant_probe(i):
        return tf.slice(buf, tf.stack([i, 0]), [1, 2])

    for i in range(3):
        must_be_constant_probe(tf.constant(i))
    return CountingSequential.traces


def compilations(dump_dir, since):
    """XLA modules dumped since the dump files `since`, per name of PROGRAMS (one file each)."""
    new = [
        p.name
        for p in pathlib.Path(dump_dir).iterdir()
        if p.name.endswith(".before_optimizations.txt") and p.name not in since
    ]
    return collections.Counter(name for name in PROGRAMS for file in new if name in file)


if __name__ == "__main__":
    dump_dir, steps = sys.argv[1], int(sys.argv[2])
    results = {}
    # One process for every case: TensorFlow's start-up costs seconds. Each
    # case's models and tf.functions are its own, so XLA compiles them anew.
    for case in sys.argv[3:]:
        window, xla_unit, *schedule = case.split(":")
        keras.backend.clear_session()
        before = set(os.listdir(dump_dir))
        try:
            window = None if window == "exact" else int(window)
            traces = main(window, steps, xla_unit, *map(int, schedule))
        except Exception:
            results[case] = {"error": traceback.format_exc()}
            continue
        results[case] = {"compilations": compilations(dump_dir, before), "traces": traces}
    print("RESULT " + json.dumps(results))
