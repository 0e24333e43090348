"""`ReplayBuffer`: the ring of past batches that backward-SGD replays."""

import keras
import numpy as np
import tensorflow as tf

from keras_bsgd import errors
from keras_bsgd import structures
from keras_bsgd.fingerprint import fingerprint
from keras_bsgd.saved_run import SavedBuffer


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
            # `[known, fingerprint]` of the weights and model state the run's
            # last step or replay left in the model (known 0 before one has).
            self.left = tf.Variable(tf.zeros((2,), "int32"), trainable=False, name="replay_left")
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
            # The loaded weights are the saved run's own.
            self.left.assign(tf.zeros((2,), "int32"))

    def check_saved(self, saved):
        """Raises `ValueError` unless `saved` fits this buffer (capacity, batch structure).

        The saved batches are global: each is `num_replicas_in_sync` of this
        replica's.
        """
        replicas = self._strategy.num_replicas_in_sync
        expected = [
            None
            if s is None
            else ((self.capacity, s.shape[0] * replicas, *s.shape[1:]), s.dtype.name)
            for s in keras.tree.flatten(self.spec)
        ]
        saved.check(self.capacity, expected, dtype_name=lambda d: tf.as_dtype(d).name)

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

    def saved(self):
        """The buffer's contents as a `SavedBuffer` (global batches)."""
        learning_rates = self._strategy.experimental_local_results(self.learning_rates)
        return SavedBuffer(
            self.capacity,
            self.global_slots(),
            learning_rates[0].numpy(),
            int(self.skipped_batches.numpy()),
            int(self.replayed_step.numpy()),
            int(self.gradient_evaluations.numpy()),
            int(self.origin.numpy()),
        )

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
            self.left,
        ]

    def changed_since_left(self, state):
        """Whether `state` (the model's weights and model state) is not what the run last left there.

        A boolean tensor, false before the run's first step or after a load.
        """
        return tf.logical_and(
            tf.equal(self.left[0], 1), tf.not_equal(self.left[1], fingerprint(state))
        )

    def record_left(self, state):
        """Records `state` as what the run left in the model (see `changed_since_left`)."""
        self.left.assign(tf.stack([tf.constant(1, "int32"), fingerprint(state)]))

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


def with_run_weights(run, batches, replicas):
    """`batches` as the run's buffer takes them, where only their sample weights differ.

    A batch without sample weights is a batch whose sample weights are all
    ones (docs/semantics.md, "Sample weights within a run"). Where the run
    buffers weights (or another batch of `batches` brings them) a batch
    without gets ones of the buffered shape and dtype; where a batch brings
    the first weights of the run, the buffer is re-laid with a slot of
    ones for the batches it holds (`run.buffer` is then a new buffer, and
    the train function that holds the old one must be made again).
    Everything runs on the host, before the step. Any other difference is
    left for the step to refuse. An index-buffered run's weights are its
    `DataStore`'s business.

    Args:
        run: The `Run` the batches are steps of.
        batches: Host batches `x`, `(x, y)` or `(x, y, sample_weight)`
            (per-replica values under a strategy).
        replicas: The `LocalReplicas` or `MirroredReplicas` of the step.

    Returns:
        The list of batches, each with sample weights where the run has them.
    """
    if run.data_store is not None:
        return list(batches)
    unpacked = [keras.utils.unpack_x_y_sample_weight(b) for b in batches]
    first = None
    if run.buffer is None and run.saved is None:
        # A run's first batches: the first of them with weights decides.
        first = next(
            (_host_spec(replicas.first(w)) for _, _, w in unpacked if w is not None), None
        )
    out = []
    for data, (x, y, weights) in zip(batches, unpacked):
        buffered = _buffered_weights(run, x, y, replicas, first)
        if weights is None and buffered is not None:
            ones = replicas.run(lambda: keras.tree.map_structure(
                lambda s: tf.ones(s.shape, s.dtype), buffered))
            data = (x, y, ones)
        elif weights is not None and buffered is None:
            _relay_with_unit_weights(run, replicas.first((x, y, weights)), replicas)
        out.append(data)
    return out


def _buffered_weights(run, x, y, replicas, first):
    """The `tf.TensorSpec` nest of one replica's buffered sample weights, or None.

    `first` (the first weights of the batches at hand) where nothing is
    buffered or loaded yet.
    """
    if run.buffer is not None:
        return run.buffer.spec[2]
    if run.saved is None:
        return first
    leaves = structures.sample_weight_leaves(run.saved.leaves, x, y)
    if leaves is None:
        return None
    replicas_in_sync = replicas.strategy.num_replicas_in_sync if replicas.distributed else 1
    specs = [
        tf.TensorSpec((leaf.shape[1] // replicas_in_sync, *leaf.shape[2:]), leaf.dtype)
        for leaf in leaves
    ]
    packed = structures.pack_sample_weights(specs, y)
    # Weights these targets cannot take stay flat: the step refuses the batch.
    return specs if packed is None else packed


def _relay_with_unit_weights(run, item, replicas):
    """Gives the run's batches sample weights of ones, laid out for batches like `item`."""
    weights = [
        (tuple(w.shape[1:]), tf.as_dtype(w.dtype).as_numpy_dtype)
        for w in keras.tree.flatten(item[2])
    ]
    if run.buffer is None:
        run.saved = run.saved.with_unit_weights(weights)
        return
    old = run.buffer
    saved = old.saved().with_unit_weights(weights)
    with replicas.scope():
        run.buffer = ReplayBuffer(
            old.capacity, _host_spec(item), saved=saved, per_replica=replicas.distributed,
        )
        run.buffer.left.assign(old.left)


_NONE_NOTE = (
    " (None is a dimension that varies, e.g. a partial last batch, or one that "
    "a transformation after `batch()` lost, e.g. a `TextVectorization` layer "
    "or `tf.py_function` in `map()`: map before `batch()`, or restore the "
    "size in that map with `tf.ensure_shape`)."
)


def _spec(batch):
    return keras.tree.map_structure(
        lambda t: None if t is None else tf.TensorSpec.from_tensor(t), batch
    )


def _host_spec(batch):
    # Host batches hold NumPy arrays (train_on_batch) or eager tensors.
    return keras.tree.map_structure(
        lambda t: None if t is None else tf.TensorSpec(t.shape, tf.as_dtype(t.dtype)), batch
    )
