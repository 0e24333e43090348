"""Subprocess body of the multi-worker test: one worker of a MultiWorkerMirroredStrategy.

Usage: TF_CONFIG=... python -m tests.multiworker_probe OUTPUT_DIR WINDOW...
Trains once per WINDOW (an int, or "exact") and saves OUTPUT_DIR/WINDOW.npz.
Without TF_CONFIG it trains on one device (the reference runs).
"""

import contextlib
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bsgd  # noqa: E402
from tests.regression_stream import stream  # noqa: E402

STEPS, BATCH = 12, 8


def build(window):
    keras.utils.set_random_seed(0)
    model = keras_bsgd.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)]
    )
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, momentum=0.5, window=window), loss="mse")
    return model


def main(output_dir, windows):
    # One strategy for all the runs: a process joins its cluster once.
    if "TF_CONFIG" in os.environ:
        scope = tf.distribute.MultiWorkerMirroredStrategy().scope
    else:
        scope = contextlib.nullcontext
    for window in windows:
        with scope():
            model = build(None if window == "exact" else int(window))
        model.fit(stream(STEPS, BATCH), verbose=0)
        np.savez(
            os.path.join(output_dir, f"{window}.npz"),
            *[keras.ops.convert_to_numpy(v) for v in model.trainable_variables],
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
