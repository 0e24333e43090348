"""Memory over repeated compile + fit cycles in one process (a sweep, a long `compare`).

TensorFlow keeps every graph-mode `tf.custom_gradient` in a global registry
that is never emptied, and each entry pins the graph it was traced in
(tensorflow/tensorflow#97697). Keras' optimizer makes one per gradient
all-reduce, even with one replica; a backward-SGD step applies many maps, so
every compiled model used to leave its graphs behind. This measures the
resident set size and the registry after each of `cycles` compile + fit
cycles of a small model, with nothing purged by hand.

Usage: `python -m keras_bsgd.benchmarks.leak [--cycles 20]`

Example:

>>> rows = measure(cycles=2, steps=2)
>>> [r["cycle"] for r in rows]
[1, 2]
"""

import argparse
import gc
import json

import keras
import numpy as np

import keras_bsgd
from keras_bsgd.benchmarks.rss import peak_rss_bytes
from keras_bsgd.benchmarks.rss import rss_bytes


def registered_custom_gradients():
    """The number of graph-mode custom gradients TensorFlow has registered (private registry)."""
    from tensorflow.python.framework import ops as tf_ops

    registry = tf_ops._gradient_registry._registry
    return sum(name.startswith("CustomGradient-") for name in registry)


def one_cycle(steps, window):
    """Builds, compiles and fits a small MLP for `steps` steps, then drops it."""
    model = keras_bsgd.Sequential(
        [keras.Input((32,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(0.05, window=window),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16 * steps, 32)).astype("float32")
    y = rng.integers(0, 10, 16 * steps)
    model.fit(x, y, batch_size=16, verbose=0)


def measure(cycles=20, steps=20, window=4):
    """Runs `cycles` compile + fit cycles; returns one row per cycle.

    Each row: `cycle`, `rss_mb` (after `clear_session()` and a garbage
    collection), `peak_rss_mb` and `custom_gradients` (registry entries).
    """
    rows = []
    for cycle in range(1, cycles + 1):
        one_cycle(steps, window)
        keras.backend.clear_session()
        gc.collect()
        peak, _ = peak_rss_bytes()
        rows.append(
            {
                "cycle": cycle,
                "rss_mb": round(rss_bytes() / 2**20, 1),
                "peak_rss_mb": round(peak / 2**20, 1),
                "custom_gradients": registered_custom_gradients(),
            }
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    if keras.backend.backend() != "tensorflow":
        parser.error(
            "this benchmark counts TensorFlow's gradient registry; run it with "
            "KERAS_BACKEND=tensorflow (docs/performance.md has the JAX figure). "
            f"Received: backend {keras.backend.backend()!r}"
        )
    rows = measure(args.cycles, args.steps)
    for row in rows:
        print(json.dumps(row))
    first, last = rows[0], rows[-1]
    print(
        f"RSS growth from cycle 1 to {last['cycle']}: "
        f"{last['rss_mb'] - first['rss_mb']:.1f} MiB; peak {last['peak_rss_mb']:.1f} MiB; "
        f"custom gradients registered: {last['custom_gradients']}"
    )


if __name__ == "__main__":
    main()
