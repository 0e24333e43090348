"""Memory over repeated compile + fit cycles in one process (a sweep, a long `compare`).

TensorFlow keeps every graph-mode `tf.custom_gradient` in a global registry
that is never emptied, and each entry pins the graph it was traced in
(tensorflow/tensorflow#97697). Keras' optimizer makes one per gradient
all-reduce, even with one replica; a backward-SGD step applies many maps, so
every compiled model used to leave its graphs behind. This measures the
resident set size and the registry after each of `cycles` compile + fit
cycles of a small model, with nothing purged by hand.

Usage: `python -m keras_bsgd.benchmarks.leak [--cycles 20] [--optimizer sgd]
[--window 4 | --exact] [--replay-every 2] [--xla-unit map] [--no-xla]`. Its last line is the
growth per cycle from the third cycle on (a least-squares slope), which is what XLA's compilation
cache keeps of each compiled model (docs/performance.md, "Memory").

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


def one_cycle(steps, window, optimizer="bsgd", replay_every=1, xla_unit="auto", jit=True):
    """Builds, compiles and fits a small MLP for `steps` steps, then drops it.

    `optimizer` is `"bsgd"` (`BackwardSGD` with `window`, None for exact mode, and
    `replay_every`) or `"sgd"` (Keras `SGD`, trained by Keras' own step).
    """
    model = keras_bsgd.Sequential(
        [keras.Input((32,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )
    if optimizer == "sgd":
        chosen = keras.optimizers.SGD(0.05)
    else:
        chosen = keras_bsgd.BackwardSGD(
            0.05, window=window, replay_every=replay_every,
            max_steps=None if window is not None else steps,
        )
    model.compile(
        optimizer=chosen,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
        xla_unit=xla_unit,
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16 * steps, 32)).astype("float32")
    y = rng.integers(0, 10, 16 * steps)
    model.fit(x, y, batch_size=16, verbose=0)


def measure(cycles=20, steps=20, window=4, **settings):
    """Runs `cycles` compile + fit cycles (`settings`: see `one_cycle`); returns one row per cycle.

    Each row: `cycle`, `rss_mb` (after `clear_session()` and a garbage
    collection), `peak_rss_mb` and `custom_gradients` (registry entries).
    """
    rows = []
    for cycle in range(1, cycles + 1):
        one_cycle(steps, window, **settings)
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
    parser.add_argument("--optimizer", choices=("bsgd", "sgd"), default="bsgd")
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--exact", action="store_true", help="exact mode (no window)")
    parser.add_argument("--replay-every", type=int, default=1)
    parser.add_argument("--xla-unit", choices=("auto", "step", "map"), default="auto")
    parser.add_argument("--no-xla", action="store_true", help="jit_compile=False")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "tensorflow":
        parser.error(
            "this benchmark counts TensorFlow's gradient registry; run it with "
            "KERAS_BACKEND=tensorflow (docs/performance.md has the JAX figure). "
            f"Received: backend {keras.backend.backend()!r}"
        )
    rows = measure(
        args.cycles, args.steps, None if args.exact else args.window,
        optimizer=args.optimizer, replay_every=args.replay_every,
        xla_unit=args.xla_unit, jit=not args.no_xla,
    )
    for row in rows:
        print(json.dumps(row))
    first, last = rows[0], rows[-1]
    print(
        f"RSS growth from cycle 1 to {last['cycle']}: "
        f"{last['rss_mb'] - first['rss_mb']:.1f} MiB; peak {last['peak_rss_mb']:.1f} MiB; "
        f"custom gradients registered: {last['custom_gradients']}"
    )
    if len(rows) > 3:
        # The first cycles also fill caches that every later model shares;
        # a least-squares slope over the rest is steadier than two end points.
        later = rows[2:]
        slope = np.polyfit([r["cycle"] for r in later], [r["rss_mb"] for r in later], 1)[0]
        print(f"RSS growth per cycle after the second (least squares): {slope:.2f} MiB")


if __name__ == "__main__":
    main()
