"""Trains one model on one device and under `keras.distribution.DataParallel` on 2 virtual CPUs.

Run as a script (the device count must be set before JAX starts); prints a
JSON line per configuration: the largest weight difference, and the bytes of
the replay ring on each device against the whole ring's.
"""

import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bsgd  # noqa: E402

CONFIGS = [
    dict(window=3),
    dict(window=3, replay_every=2, forward_steps=2),
    dict(max_steps=30, replay_every=3),
    dict(max_steps=30, forward_steps=4, momentum=0.5),
]


def train(distribution, settings, x, y):
    keras.distribution.set_distribution(distribution)
    model = keras_bsgd.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(5, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(1)),
        keras.layers.Dense(2, kernel_initializer=keras.initializers.GlorotUniform(2)),
    ])
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, **settings), loss="mse")
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)  # 24 steps
    ring = [v.value for v in model.optimizer.variables if "replay_batch" in v.path]
    per_device = sum(r.addressable_shards[0].data.nbytes for r in ring)
    return [np.asarray(v.value) for v in model.trainable_variables], per_device, sum(r.nbytes for r in ring)


def main():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(3, 2))).astype("float32")
    for settings in CONFIGS:
        one, _, _ = train(None, settings, x, y)
        two, per_device, whole = train(keras.distribution.DataParallel(), settings, x, y)
        gap = max(float(np.abs(a - b).max()) for a, b in zip(one, two, strict=True))
        print(json.dumps(dict(settings=settings, gap=gap, per_device=per_device, whole=whole)))


if __name__ == "__main__":
    main()
