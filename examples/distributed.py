"""Backward-SGD under tf.distribute.MirroredStrategy on 2 logical CPUs.

    python examples/distributed.py               # windowed, window 4
    python examples/distributed.py --window 0    # exact backward-SGD

Runs out of the box on one CPU, split into two logical devices, and checks
that the trajectory equals a single-device run on the same global batches.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

# The split must happen before TensorFlow initializes its devices.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bsgd  # noqa: E402


def build(window):
    keras.utils.set_random_seed(0)
    model = keras_bsgd.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.BatchNormalization(synchronized=True),  # same stats as one device
            keras.layers.Dense(4),
        ]
    )
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(0.05, momentum=0.9, window=window or None),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=4, help="0: exact backward-SGD")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.steps * args.batch_size, 20)).astype("float32")
    y = (x[:, :4].argmax(axis=1)).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch_size, drop_remainder=True)

    strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    with strategy.scope():
        model = build(args.window)
    history = model.fit(data, verbose=0)

    single = build(args.window)
    single.fit(data, verbose=0)
    error = max(
        np.linalg.norm(a - b) / np.linalg.norm(b)
        for a, b in zip(model.get_weights(), single.get_weights())
    )
    print(
        f"replicas={strategy.num_replicas_in_sync} steps={args.steps} "
        f"loss={history.history['loss'][-1]:.4f} "
        f"accuracy={history.history['accuracy'][-1]:.3f} "
        f"max_relative_error_vs_one_device={error:.2e}"
    )


if __name__ == "__main__":
    main()
