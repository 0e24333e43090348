"""Memory over repeated compile + fit cycles in one process (a sweep, a long `compare`).

TensorFlow keeps every graph-mode `tf.custom_gradient` in a global registry
that is never emptied, and each entry pins the graph it was traced in
(tensorflow/tensorflow#97697). Keras' optimizer makes one per gradient
all-reduce, even with one replica; a backward-SGD step applies many maps, so
every compiled model used to leave its graphs behind. This measures the
resident set size and the registry after each of `cycles` compile + fit
cycles of a small model, with nothing purged by hand.

Usage: `[KERAS_BACKEND=jax] python -m keras_bsgd.benchmarks.leak [--cycles 20]
[--optimizer sgd | --compare] [--window 4 | --exact] [--replay-every 2] [--xla-unit map]
[--no-xla] [--where]`; `--compare` runs Keras `SGD`, then `BackwardSGD`, in one process;
`--where` says what the kept memory is (`keras_bsgd.benchmarks.kept_memory`, needs memray). RSS is
read after the C heap's free pages are returned to the system (`rss.release_free_heap`), so that
it counts what the process holds. Its last line is the growth per cycle from the third cycle on (a
least-squares slope), which on TensorFlow is what XLA's compilation cache keeps of each compiled
model (docs/performance.md, "Memory").

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
from keras_bsgd.benchmarks import kept_memory
from keras_bsgd.benchmarks.rss import peak_rss_bytes
from keras_bsgd.benchmarks.rss import release_free_heap
from keras_bsgd.benchmarks.rss import rss_bytes


LABELS = {"sgd": "Keras SGD", "bsgd": "BackwardSGD"}


def registered_custom_gradients():
    """The number of graph-mode custom gradients TensorFlow has registered (private registry).

    None on other backends.
    """
    if keras.backend.backend() != "tensorflow":
        return None
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

    Each row: `cycle`, `untrimmed_rss_mb` (after `clear_session()` and a
    garbage collection), `rss_mb` (then with the heap's free pages
    released), `peak_rss_mb` and `custom_gradients` (TensorFlow's registry
    entries).
    """
    rows = []
    for cycle in range(1, cycles + 1):
        one_cycle(steps, window, **settings)
        untrimmed, settled = settled_rss()
        peak, _ = peak_rss_bytes()
        rows.append(
            {
                "cycle": cycle,
                "untrimmed_rss_mb": round(untrimmed / 2**20, 1),
                "rss_mb": round(settled / 2**20, 1),
                "peak_rss_mb": round(peak / 2**20, 1),
                "custom_gradients": registered_custom_gradients(),
            }
        )
    return rows


def settled_rss():
    """`(before, after)` trimming the heap: RSS in bytes once the last model is released."""
    keras.backend.clear_session()
    gc.collect()
    untrimmed = rss_bytes()
    release_free_heap()
    return untrimmed, rss_bytes()


def compare(cycles=12, steps=20, window=4, **settings):
    """Keras `SGD`, then `BackwardSGD`, in one process: the memory each compiled model keeps.

    Each optimizer runs `cycles` cycles in a row, and keeps the slope of
    RSS (heap trimmed) over its cycles from the third on (the first ones
    also fill caches that later models share). Cycles taking turns would
    not split the growth: what one model's compilation leaves in the
    allocator, the next one's reuses.

    Args:
        cycles: Cycles of each optimizer (at least 4).
        steps, window: As in `one_cycle`.
        **settings: `replay_every`, `xla_unit`, `jit` (see `one_cycle`).

    Returns:
        `{"sgd": MiB, "bsgd": MiB}`, each the growth per cycle.

    Example:

    >>> sorted(compare(cycles=4, steps=2))
    ['bsgd', 'sgd']
    """
    kept = {}
    for optimizer in ("sgd", "bsgd"):
        rows = measure(cycles, steps, window, optimizer=optimizer, **settings)[2:]
        kept[optimizer] = float(
            np.polyfit([r["cycle"] for r in rows], [r["rss_mb"] for r in rows], 1)[0]
        )
    return kept


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
    parser.add_argument(
        "--compare", action="store_true",
        help="Keras SGD, then BackwardSGD, in this process (--cycles of each)",
    )
    parser.add_argument(
        "--where", action="store_true",
        help="what each model keeps, by the code that allocated it (memray; --cycles tracked)",
    )
    args = parser.parse_args(argv)
    if args.where:
        optimizers = ("sgd", "bsgd") if args.compare else (args.optimizer,)
        print(kept_memory.report({
            LABELS[name]: kept_memory.measure(
                args.cycles, args.steps, None if args.exact else args.window,
                optimizer=name, replay_every=args.replay_every,
                xla_unit=args.xla_unit, jit=not args.no_xla,
            )
            for name in optimizers
        }))
        return
    if args.compare:
        kept = compare(
            args.cycles, args.steps, None if args.exact else args.window,
            replay_every=args.replay_every, xla_unit=args.xla_unit, jit=not args.no_xla,
        )
        print(
            f"MiB kept per compiled model in one process (slope over cycles 3 to {args.cycles} "
            f"of each): Keras SGD {kept['sgd']:.2f}, BackwardSGD {kept['bsgd']:.2f}"
        )
        return
    rows = measure(
        args.cycles, args.steps, None if args.exact else args.window,
        optimizer=args.optimizer, replay_every=args.replay_every,
        xla_unit=args.xla_unit, jit=not args.no_xla,
    )
    for row in rows:
        print(json.dumps(row))
    first, last = rows[0], rows[-1]
    registry = last["custom_gradients"]
    print(
        f"RSS growth from cycle 1 to {last['cycle']}: "
        f"{last['rss_mb'] - first['rss_mb']:.1f} MiB; peak {last['peak_rss_mb']:.1f} MiB"
        + ("" if registry is None else f"; custom gradients registered: {registry}")
    )
    if len(rows) > 3:
        # The first cycles also fill caches that every later model shares;
        # a least-squares slope over the rest is steadier than two end points.
        later = rows[2:]
        slope = np.polyfit([r["cycle"] for r in later], [r["rss_mb"] for r in later], 1)[0]
        print(f"RSS growth per cycle after the second (least squares): {slope:.2f} MiB")


if __name__ == "__main__":
    main()
