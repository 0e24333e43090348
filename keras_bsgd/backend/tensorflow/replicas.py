"""Where the per-replica parts of a backward-SGD step run: one device or a mirrored strategy.

The replay loop of a step (anchor, buffer write, newest-first maps) is
written once, in `keras_bsgd.backend.tensorflow.step`, against this small interface. On one
device it runs inside Keras' compiled train function, already in replica
context, and every call below is the identity. Under a
`tf.distribute.MirroredStrategy` the loop runs in cross-replica context and
each map is a `strategy.run` whose `optimizer.apply` all-reduces the
replicas' gradients: a `tf.while_loop` around `optimizer.apply` inside
`strategy.run` would fail with TF's merge_call error.
"""

import contextlib

import keras
import tensorflow as tf

from keras_bsgd.backend.tensorflow import keras_private as tf_private
from keras_bsgd.partial_batches import leading_size

SUPPORTED_STRATEGIES = (
    tf.distribute.MirroredStrategy,
    tf.distribute.MultiWorkerMirroredStrategy,
    tf.distribute.OneDeviceStrategy,
)


def check_strategy(strategy):
    default = type(strategy).__name__ == tf_private.DEFAULT_STRATEGY_CLASS
    if not (default or isinstance(strategy, SUPPORTED_STRATEGIES)):
        raise ValueError(
            "keras_bsgd replays batches under MirroredStrategy, "
            "MultiWorkerMirroredStrategy, OneDeviceStrategy or no strategy. "
            f"{type(strategy).__name__} is not supported (parameter servers "
            "apply updates asynchronously, which breaks the order of the "
            "maps; TPUs are untested). Received: "
            f"strategy={type(strategy).__name__}"
        )


class LocalReplicas:
    """One replica: per-replica functions run in place.

    Args:
        jit_gradients: Whether each map's forward and backward pass is
            compiled with XLA on its own (the step around it is a graph).
    """

    distributed = False

    def __init__(self, jit_gradients=False):
        self.jit_gradients = jit_gradients
        self._compiled = None

    def xla(self, fn):
        """`fn` compiled with XLA, one function object for every call site.

        The anchor advance and the replay loop then call the same program,
        which XLA compiles once.
        """
        if self._compiled is None:
            self._compiled = tf.function(fn, jit_compile=True)
        return self._compiled

    def run(self, fn, args=()):
        return fn(*args)

    def local_size(self, batch):
        """The batch size of `batch`, or None."""
        return leading_size(batch)

    def first(self, value):
        return value

    def all_true(self, flag):
        return flag

    def scope(self):
        return contextlib.nullcontext()


class MirroredReplicas:
    """Replicas of a `tf.distribute.MirroredStrategy` (or multi-worker mirrored).

    Args:
        strategy: The model's `tf.distribute.Strategy`.
        jit_gradients: Whether each replica's forward and backward pass of a
            map is compiled with XLA. The step around it (the replay loop and
            the all-reduces) runs as a graph: XLA compiles one device at a
            time.

    Example:

    >>> import tensorflow as tf
    >>> replicas = MirroredReplicas(tf.distribute.get_strategy())
    >>> bool(replicas.all_true(tf.constant(True)))
    True
    """

    distributed = True

    def __init__(self, strategy, jit_gradients=False):
        self.strategy = strategy
        self.jit_gradients = jit_gradients

    def run(self, fn, args=()):
        return self.strategy.run(fn, args=args)

    def xla(self, fn):
        """`fn` compiled with XLA, a new function object for every replica.

        Each replica traces its own copy in its own replica context, so that
        it reads and updates that replica's variables.
        """
        return tf.function(fn, jit_compile=True)

    def local_size(self, batch):
        """The batch size of each local replica's part of `batch` (the smallest), or None."""
        leaves = [v for v in keras.tree.flatten(batch) if v is not None]
        parts = zip(*(self.strategy.experimental_local_results(v) for v in leaves))
        sizes = [leading_size(list(part)) for part in parts]
        return None if not sizes or None in sizes else min(sizes)

    def first(self, value):
        """The first replica's component of every leaf of `value`."""
        return keras.tree.map_structure(
            lambda v: None
            if v is None
            else self.strategy.experimental_local_results(v)[0],
            value,
        )

    def all_true(self, flag):
        """True where `flag` (per replica) is true on every replica."""
        failures = self.strategy.reduce(
            tf.distribute.ReduceOp.SUM,
            self.run(lambda f: tf.cast(tf.logical_not(f), "int32"), (flag,)),
            axis=None,
        )
        return tf.equal(failures, 0)

    def scope(self):
        return self.strategy.scope()
