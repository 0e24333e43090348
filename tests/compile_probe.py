"""Subprocess body of compile_test: trains under XLA with --xla_dump_to set.

Usage: python -m tests.compile_probe WINDOW STEPS UNIT  (WINDOW: int or "exact";
UNIT: BackwardSGD's xla_unit)
Prints the number of Python traces of train_step as "TRACES n".
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bsgd  # noqa: E402


class CountingSequential(keras_bsgd.Sequential):
    traces = 0

    def train_step(self, data):
        CountingSequential.traces += 1
        return super().train_step(data)


def main(window, steps, xla_unit):
    model = CountingSequential(
        [keras.Input((3,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(0.05, momentum=0.5, window=window, xla_unit=xla_unit),
        loss="mse",
        jit_compile=True,
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
    print("TRACES", CountingSequential.traces)


if __name__ == "__main__":
    arg = sys.argv[1]
    main(None if arg == "exact" else int(arg), int(sys.argv[2]), sys.argv[3])
