"""Subprocess body of the multi-worker test: one worker of a MultiWorkerMirroredStrategy.

Usage: TF_CONFIG=... python -m tests.multiworker_probe WINDOW OUTPUT.npz
Without TF_CONFIG it trains on one device (the reference run).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bsgd  # noqa: E402

STEPS, BATCH = 12, 8


def stream():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * BATCH, 4)).astype("float32")
    y = rng.normal(size=(STEPS * BATCH, 2)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH, drop_remainder=True)


def build(window):
    keras.utils.set_random_seed(0)
    model = keras_bsgd.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)]
    )
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, momentum=0.5, window=window), loss="mse")
    return model


def main(window, output):
    if "TF_CONFIG" in os.environ:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        with strategy.scope():
            model = build(window)
    else:
        model = build(window)
    model.fit(stream(), verbose=0)
    np.savez(output, *[keras.ops.convert_to_numpy(v) for v in model.trainable_variables])


if __name__ == "__main__":
    main(None if sys.argv[1] == "exact" else int(sys.argv[1]), sys.argv[2])
