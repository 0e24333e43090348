"""`ReplayBuffer`: the ring of past batches that backward-SGD replays."""

import keras
import numpy as np
import tensorflow as tf

from keras_bsgd import errors
from keras_bsgd import structures



class ReplayBuffer:
    """A ring of `capacity` batches, each with its frozen learning rate.

    Every leaf of the batch structure (inputs, targets, sample weights) gets
    one `tf.Variable` of shape `[capacity, *leaf.shape]` in the leaf's own
    dtype (uint8 images stay uint8). Slots are written with a scatter and read
    with a gather, so under XLA no buffer index is a compile-time constant
    and the step function compiles once.

    Args:
        capacity: Number of slots.
        spec: The batch structure, a nest of `tf.TensorSpec` with fully
            defined shapes.

    Example:

    >>> import tensorflow as tf
    >>> spec = (tf.TensorSpec((2, 3), "float32"), tf.TensorSpec((2,), "int32"))
    >>> buf = ReplayBuffer(4, spec)
    >>> _ = buf.write(1, (tf.ones((2, 3)), tf.constant([1, 2])), 0.1)
    >>> batch, lr = buf.read(1)
    >>> batch[1].numpy().tolist(), round(float(lr), 3)
    ([1, 2], 0.1)
    """

    def __init__(self, capacity, spec, saved=None, per_replica=False):
        self.capacity = int(capacity)
        self.spec = spec
        self.per_replica = per_replica
        # Under a strategy (whose scope is active) each replica keeps its own
        # shard of every batch: `spec` is one replica's batch.
        self._strategy = tf.distribute.get_strategy()
        sync = dict(
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        ) if per_replica else {}
        with tf.init_scope():
            # Leaves that are None (no targets, no sample weights) hold nothing.
            self._slots = [
                None
                if s is None
                else tf.Variable(
                    tf.zeros((self.capacity, *s.shape), s.dtype),
                    trainable=False,
                    name=f"replay_{name}",
                    **sync,
                )
                for name, s in structures.flatten_with_names(spec)
            ]
            self.learning_rates = tf.Variable(
                tf.zeros((self.capacity,), "float32"),
                trainable=False,
                name="replay_learning_rates",
                **sync,
            )
            # The number of dropped batches.
            self.skipped_batches = tf.Variable(
                tf.constant(0, "int64"), trainable=False, name="replay_skipped"
            )
            # The step whose output iterate the model holds (with
            # `replay_every > 1` it can lag the step count), and the gradient
            # evaluations the run's maps have cost, counted as they run.
            self.replayed_step = tf.Variable(
                tf.constant(0, "int64"), trainable=False, name="replay_replayed_step"
            )
            self.gradient_evaluations = tf.Variable(
                tf.constant(0, "int64"), trainable=False, name="replay_gradient_evaluations"
            )
            # The step count at which the current run started: weights set
            # from outside, or a divergence, start a new run from the model's
            # weights, whose step `k` is outer step `origin + k`.
            self.origin = tf.Variable(
                tf.constant(0, "int64"), trainable=False, name="replay_origin"
            )
            if saved is not None:
                self.restore(saved)

    def restore(self, saved):
        """Overwrites the buffer with the contents of a `SavedBuffer`.

        Args:
            saved: A `SavedBuffer` of global batches.

        Raises:
            ValueError: if `saved` has another capacity or batch structure.
        """
        self.check_saved(saved)
        with tf.init_scope():
            if self.per_replica:
                self._strategy.run(self._restore_shard, (saved,))
            else:
                self._restore_shard(saved)
            self.skipped_batches.assign(saved.skipped_batches)
            self.replayed_step.assign(saved.replayed_step)
            self.gradient_evaluations.assign(saved.gradient_evaluations)
            self.origin.assign(saved.origin)

    def check_saved(self, saved):
        """Raises `ValueError` unless `saved` fits this buffer (capacity, batch structure)."""
        saved.check(self.capacity, self.spec, self._strategy.num_replicas_in_sync)

    def _restore_shard(self, saved):
        # Saved leaves hold global batches [capacity, B, ...]; replica r of R
        # takes rows [r * B / R, (r + 1) * B / R).
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group
        for var, leaf in zip(self._slots, saved.leaves):
            if var is not None:
                size = var.shape[1]
                var.assign(tf.constant(leaf, var.dtype)[:, replica * size : (replica + 1) * size])
        self.learning_rates.assign(saved.learning_rates)

    def global_slots(self):
        """Each leaf as a global-batch array `[capacity, B, ...]` (replica shards joined)."""
        return [
            None
            if v is None
            else np.concatenate(
                [c.numpy() for c in self._strategy.experimental_local_results(v)], axis=1
            )
            for v in self._slots
        ]

    @property
    def variables(self):
        """Every variable of the buffer: the slots, frozen learning rates and counters."""
        return [
            *(v for v in self._slots if v is not None),
            self.learning_rates,
            self.skipped_batches,
            self.replayed_step,
            self.gradient_evaluations,
            self.origin,
        ]

    @property
    def nbytes(self):
        """Bytes held by the batch slots (all leaves, all slots)."""
        return structures.nbytes(self._slots)

    @property
    def batch_size(self):
        """The leading dimension shared by every buffered batch (one replica's)."""
        return structures.num_examples(self.spec)

    @property
    def global_batch_size(self):
        """The batch size summed over the replicas that hold a shard of each batch."""
        replicas = self._strategy.num_replicas_in_sync if self.per_replica else 1
        return self.batch_size * replicas

    @staticmethod
    def spec_of(batch):
        """The static `tf.TensorSpec` nest of `batch`, checked to be fully defined.

        Raises:
            ValueError: if any leaf has an unknown dimension.
        """
        spec = _spec(batch)
        for name, s in structures.flatten_with_names(spec):
            if s is not None and not s.shape.is_fully_defined():
                raise ValueError(
                    f"{errors.STATIC_SHAPE_HINT} Received: a batch whose element "
                    f"'{name}' has shape {tuple(s.shape)}{_NONE_NOTE}"
                )
        return spec

    def check(self, batch):
        """Raises `ValueError` unless `batch` matches the buffer's structure."""
        spec = _spec(batch)
        if not structures.same_specs(spec, self.spec):
            raise ValueError(
                f"{errors.STATIC_SHAPE_HINT} The replay buffer holds batches of "
                f"{structures.describe(self.spec)}. Received: a batch of "
                f"{structures.describe(spec)}{_NONE_NOTE}"
            )

    def write(self, slot, batch, learning_rate, when=True):
        """Stores `batch` and its frozen `learning_rate` in `slot`, if `when`.

        `when` is a boolean tensor, so that a step can decide without a
        branch (XLA runs straight-line code faster than a conditional).
        """
        slot = tf.reshape(tf.cast(slot, "int64"), [1])
        leaves = keras.tree.flatten(batch) + [tf.reshape(learning_rate, [])]
        for var, leaf in zip(self._slots + [self.learning_rates], leaves):
            if var is None:
                continue
            leaf = tf.where(when, leaf, tf.gather(var, slot[0]))
            if self.per_replica:
                # Distributed variables implement no scatter: rewrite the
                # replica's whole buffer instead.
                var.assign(tf.tensor_scatter_nd_update(var, slot[:, None], leaf[None]))
            else:
                var.scatter_update(tf.IndexedSlices(leaf[None], slot))
        return tf.constant(0)

    def read(self, slot):
        """Returns `(batch, learning_rate)` stored in `slot`."""
        leaves = [None if v is None else tf.gather(v, slot) for v in self._slots]
        batch = keras.tree.pack_sequence_as(self.spec, leaves)
        return batch, tf.gather(self.learning_rates, slot)


_NONE_NOTE = (
    " (None is a dimension that varies, e.g. a partial last batch, or one that "
    "a transformation after `batch()` lost, e.g. a `TextVectorization` layer "
    "or `tf.py_function` in `map()`: map before `batch()`, or restore the "
    "size in that map with `tf.ensure_shape`)."
)


class SavedBuffer:
    """The contents of a `ReplayBuffer` as stored in a file or a checkpoint.

    `.keras` / `.weights.h5` files hold it under `PREFIX` keys of the model's
    entry; `tf.train.Checkpoint` holds the same keys inside a `ReplayState`.

    A saved buffer becomes a live `ReplayBuffer` at the first training step
    after loading, once the batch structure is known again.

    Args:
        capacity: Number of slots.
        leaves: One array `[capacity, *shape]` per batch leaf (None for
            empty leaves), in `keras.tree.flatten` order.
        learning_rates: Array `[capacity]` of frozen learning rates.
        skipped_batches: How many non-finite batches the run has dropped.
        replayed_step: The step whose output iterate the model holds.
        gradient_evaluations: The gradient evaluations counted so far.
        origin: The step count at which the current run started.
    """

    PREFIX = errors.SAVED_RUN_PREFIX

    def __init__(
        self,
        capacity,
        leaves,
        learning_rates,
        skipped_batches=0,
        replayed_step=0,
        gradient_evaluations=0,
        origin=0,
    ):
        self.capacity = int(capacity)
        self.leaves = leaves
        self.learning_rates = np.asarray(learning_rates, "float32")
        self.skipped_batches = int(skipped_batches)
        self.replayed_step = int(replayed_step)
        self.gradient_evaluations = int(gradient_evaluations)
        self.origin = int(origin)

    @classmethod
    def of(cls, buffer):
        learning_rates = buffer._strategy.experimental_local_results(buffer.learning_rates)
        return cls(
            buffer.capacity,
            buffer.global_slots(),
            learning_rates[0].numpy(),
            int(buffer.skipped_batches.numpy()),
            int(buffer.replayed_step.numpy()),
            int(buffer.gradient_evaluations.numpy()),
            int(buffer.origin.numpy()),
        )

    def save(self, store):
        """Writes the buffer under `PREFIX` keys of a Keras saving `store`."""
        store[self.PREFIX + "capacity"] = np.array(self.capacity, "int64")
        store[self.PREFIX + "learning_rates"] = self.learning_rates
        store[self.PREFIX + "skipped_batches"] = np.array(self.skipped_batches, "int64")
        store[self.PREFIX + "replayed_step"] = np.array(self.replayed_step, "int64")
        store[self.PREFIX + "gradient_evaluations"] = np.array(
            self.gradient_evaluations, "int64"
        )
        store[self.PREFIX + "origin"] = np.array(self.origin, "int64")
        present = [leaf is not None for leaf in self.leaves]
        store[self.PREFIX + "present"] = np.array(present, "bool")
        for i, leaf in enumerate(self.leaves):
            if leaf is None:
                continue
            if leaf.dtype == object:
                # String batches (text models): HDF5 and `.npz` hold no
                # Python objects, so each string is stored as its bytes.
                strings = [bytes(b) for b in leaf.ravel()]
                store[f"{self.PREFIX}leaf_{i}:bytes"] = np.frombuffer(
                    b"".join(strings), "uint8"
                )
                store[f"{self.PREFIX}leaf_{i}:lengths"] = np.array(
                    [len(b) for b in strings], "int64"
                ).reshape(leaf.shape)
            else:
                store[f"{self.PREFIX}leaf_{i}"] = leaf

    @classmethod
    def load(cls, store):
        """Reads a buffer written by `save`, or returns None if there is none."""
        if cls.PREFIX + "capacity" not in store.keys():
            return None
        present = np.asarray(store[cls.PREFIX + "present"])
        leaves = [
            _load_leaf(store, f"{cls.PREFIX}leaf_{i}") if p else None
            for i, p in enumerate(present)
        ]

        def read(key):
            return np.asarray(store[cls.PREFIX + key])

        return cls(
            read("capacity"),
            leaves,
            read("learning_rates"),
            read("skipped_batches"),
            read("replayed_step"),
            read("gradient_evaluations"),
            read("origin"),
        )

    def check(self, capacity, spec, num_replicas=1):
        """Raises `ValueError` unless the saved buffer fits this run.

        Args:
            capacity: The run's buffer capacity.
            spec: One replica's batch spec.
            num_replicas: Replicas in sync; the saved batches are global.
        """
        expected = [
            None
            if s is None
            else (
                (self.capacity, s.shape[0] * num_replicas, *s.shape[1:]),
                s.dtype.name,
            )
            for s in keras.tree.flatten(spec)
        ]
        saved = [
            None if leaf is None else (leaf.shape, tf.as_dtype(leaf.dtype).name)
            for leaf in self.leaves
        ]
        if self.capacity != capacity or expected != saved:
            raise ValueError(
                "The saved replay buffer does not fit this run: it was saved "
                f"with capacity {self.capacity} and batch leaves {saved}, and "
                f"this run needs capacity {capacity} and {expected}. Resume "
                "with the optimizer settings (window, max_steps, replay_every, "
                "forward_steps) and batch "
                "shapes of the saved run. Received: capacity="
                f"{self.capacity}"
            )


def _load_leaf(store, key):
    """A leaf written by `SavedBuffer.save`: an array, or strings from their bytes."""
    if key + ":lengths" not in store.keys():
        return np.asarray(store[key])
    lengths = np.asarray(store[key + ":lengths"])
    data = np.asarray(store[key + ":bytes"]).tobytes()
    ends = np.cumsum(lengths.ravel())
    strings = [data[end - n : end] for n, end in zip(lengths.ravel(), ends)]
    leaf = np.empty(len(strings), object)
    leaf[:] = strings
    return leaf.reshape(lengths.shape)


def _spec(batch):
    return keras.tree.map_structure(
        lambda t: None if t is None else tf.TensorSpec.from_tensor(t), batch
    )
