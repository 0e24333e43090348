"""The saved backward-SGD run, in NumPy: the file format both backends write and read.

A run's state outside Keras variables (the ring of batches and their frozen
learning rates, the counters, the random layers' seeds, the settings that
define its maps, and for index buffering the datasets its indices point
into) goes under `replay_buffer:*` and `replay_data:*` keys of the model's
own entry in `.keras` and `.weights.h5` files. The TensorFlow trainer
(`backend/tensorflow/run_saving.py`, also inside `tf.train.Checkpoint`) and
the JAX trainer (`backend/jax/run_saving.py`) write the same keys with the
same meaning, so a file crosses backends:

- `capacity`: the batches the run needs kept, `BackwardSGD.window_capacity`
  (`window + replay_every - 1`) in windowed mode, the backward phase's
  length in exact mode. The JAX ring holds one more batch (`ring_slots`)
  and lays slots out modulo its own size; it converts (`relayout`).
- `leaf_<i>` and `present`: one array `[capacity, *shape]` per leaf of the
  `keras.tree.flatten`ed batch `(x, y, sample_weight)` (or, index
  buffering, of its example indices), None leaves absent; slot of the batch
  that arrived at run step `i`: `keras_bsgd.schedule.slot(i, W, capacity)`.
- `learning_rates`, `skipped_batches`, `replayed_step`,
  `gradient_evaluations`, `origin`: int64 counters and float32 rates.
- `seeds`, `optimizer_variables`, `replay_every`, `forward_steps`,
  `format_version`: checked before anything loads (`check`).
"""

import numpy as np

from keras_bsgd import errors
from keras_bsgd import schedule

PREFIX = errors.SAVED_RUN_PREFIX
DATA_PREFIX = "replay_data:"
_SEEDS = PREFIX + "seeds"
_OPTIMIZER_VARIABLES = PREFIX + "optimizer_variables"
_INTEGER_KINDS = "iu"


class SavedBuffer:
    """The contents of a replay buffer as stored in a file or a checkpoint.

    `.keras` / `.weights.h5` files hold it under `PREFIX` keys of the model's
    entry; `tf.train.Checkpoint` holds the same keys inside a `ReplayState`.

    A saved buffer becomes a live buffer at the first training step
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

    PREFIX = PREFIX

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

    def check(self, capacity, expected, dtype_name=None):
        """Raises `ValueError` unless the saved buffer fits a run's buffer.

        Integer leaves of another width fit (TensorFlow keeps int64 labels
        where JAX without x64 keeps int32); every other dtype must match.

        Args:
            capacity: The run's buffer capacity.
            expected: Per leaf, None or `(shape, dtype name)` of the run's
                saved form, `shape` starting with the capacity.
            dtype_name: Returns the name of a saved leaf's NumPy dtype in
                the backend's terms (default: NumPy's name).
        """
        dtype_name = dtype_name or (lambda dtype: np.dtype(dtype).name)
        saved = [
            None if leaf is None else (leaf.shape, dtype_name(leaf.dtype))
            for leaf in self.leaves
        ]
        fits = len(saved) == len(expected) and all(
            _leaf_fits(s, e) for s, e in zip(saved, expected)
        )
        if self.capacity != capacity or not fits:
            raise ValueError(
                "The saved replay buffer does not fit this run: it was saved "
                f"with capacity {self.capacity} and batch leaves {saved}, and "
                f"this run needs capacity {capacity} and {expected}. Resume "
                "with the optimizer settings (window, max_steps, replay_every, "
                "forward_steps) and batch "
                "shapes of the saved run. Received: capacity="
                f"{self.capacity}"
            )

    def with_unit_weights(self, weights):
        """These batches, which have no sample weights, with sample weights of ones.

        A batch without sample weights is a batch whose sample weights are
        all ones (docs/semantics.md, "Sample weights within a run"): a run
        whose batches start to carry weights keeps the batches it buffered,
        each with ones.

        Args:
            weights: `(example_shape, dtype)` of each sample-weight leaf of
                the batches to come (`dtype` a NumPy dtype or its name).

        Returns:
            A `SavedBuffer` with the same counters, whose last leaf (the
            sample weights, None here) is replaced by arrays of ones
            `[capacity, batch, *example_shape]`.

        Example:

        >>> import numpy as np
        >>> saved = SavedBuffer(3, [np.zeros((3, 2, 5)), np.zeros((3, 2)), None], np.zeros(3))
        >>> leaf = saved.with_unit_weights([((), "float32")]).leaves[-1]
        >>> leaf.shape, leaf.dtype.name, float(leaf.min())
        ((3, 2), 'float32', 1.0)
        """
        batch = next(leaf.shape[1] for leaf in self.leaves if leaf is not None)
        ones = [
            np.ones((self.capacity, batch, *shape), np.dtype(dtype)) for shape, dtype in weights
        ]
        return SavedBuffer(
            self.capacity, [*self.leaves[:-1], *ones], self.learning_rates,
            self.skipped_batches, self.replayed_step, self.gradient_evaluations, self.origin,
        )

    def for_batch_size(self, batch_size, origin):
        """An empty ring of these leaves for batches of `batch_size`, for a run starting after `origin`.

        A new run reads no batch before its steps write one, so the slots
        are zeros; the counts of skipped batches and gradient evaluations
        go on.

        Args:
            batch_size: The examples per batch of the new run (global).
            origin: The step count after which the new run starts.

        Returns:
            A `SavedBuffer` of the same capacity, leaves `[capacity,
            batch_size, *example_shape]` and `replayed_step = origin`.

        Example:

        >>> import numpy as np
        >>> saved = SavedBuffer(3, [np.ones((3, 2, 5)), np.ones((3, 2)), None], np.ones(3))
        >>> new = saved.for_batch_size(4, origin=7)
        >>> [None if a is None else a.shape for a in new.leaves], new.origin, new.replayed_step
        ([(3, 4, 5), (3, 4), None], 7, 7)
        """
        leaves = [
            None if leaf is None
            else np.zeros((self.capacity, batch_size, *leaf.shape[2:]), leaf.dtype)
            for leaf in self.leaves
        ]
        return SavedBuffer(
            self.capacity, leaves, np.zeros(self.capacity, "float32"),
            skipped_batches=self.skipped_batches, replayed_step=origin,
            gradient_evaluations=self.gradient_evaluations, origin=origin,
        )

    def relayout(self, slots, step, forward_steps):
        """The ring's batches and rates laid out for a ring of `slots` slots.

        Both rings put the batch of run step `i` in slot
        `(i - forward_steps - 1) % size` (`schedule.slot`); the batches of
        the steps up to `step` that both hold move, other slots are zero.

        Args:
            slots: The slots of the ring to fill.
            step: The run's last step (`iterations - origin`).
            forward_steps: `BackwardSGD.forward_steps`.

        Returns:
            `(leaves, learning_rates)`, arrays of `slots` rows (None leaves kept).
        """
        if slots == self.capacity:
            return list(self.leaves), self.learning_rates
        kept = min(slots, self.capacity)
        steps = np.arange(max(forward_steps + 1, step - kept + 1), step + 1)
        source = [int(schedule.slot(i, forward_steps, self.capacity)) for i in steps]
        target = [int(schedule.slot(i, forward_steps, slots)) for i in steps]

        def moved(array):
            if array is None:
                return None
            out = np.zeros((slots, *array.shape[1:]), array.dtype)
            out[target] = array[source]
            return out

        return [moved(leaf) for leaf in self.leaves], moved(self.learning_rates)


def _leaf_fits(saved, expected):
    if saved is None or expected is None:
        return saved is None and expected is None
    (saved_shape, saved_dtype), (shape, dtype) = saved, expected
    if tuple(saved_shape) != tuple(shape):
        return False
    if saved_dtype == dtype:
        return True
    try:
        kinds = np.dtype(saved_dtype).kind + np.dtype(dtype).kind
    except TypeError:  # a backend's name NumPy does not know (TensorFlow's "string")
        return False
    return all(kind in _INTEGER_KINDS for kind in kinds)


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


def save_settings(store, optimizer, seeds):
    """Writes the format, the seeds and (with a `BackwardSGD`) its layout and run settings.

    Args:
        store: A dict-like Keras saving store.
        optimizer: The model's `BackwardSGD`, or None.
        seeds: The values of the model's random layers' seed states (NumPy).
    """
    errors.save_format(store)
    if seeds:
        store[_SEEDS] = np.stack(seeds)
    if optimizer is not None:
        if optimizer.built:
            store[_OPTIMIZER_VARIABLES] = np.array(len(optimizer.state_variables), "int64")
        for name in errors.RUN_SETTINGS:
            store[PREFIX + name] = np.array(getattr(optimizer, name), "int64")


def check(store, optimizer, seed_count):
    """Checks a file's run against a model; reads the seeds and the saved buffer.

    Args:
        store: A dict-like Keras saving store.
        optimizer: The model's `BackwardSGD`, or None (weights only).
        seed_count: The number of the model's random layers' seed states.

    Returns:
        `(seeds, saved)`: the saved seed states (or None), and the
        `SavedBuffer` (None without an optimizer, or if the file has none).

    Raises:
        ValueError: if the format, the seeds, the optimizer layout, the run
            settings or the capacity do not fit.
    """
    if optimizer is not None:
        errors.check_format(store)
    seeds = saved_seeds(store, seed_count)
    if optimizer is None:
        return seeds, None
    saved = SavedBuffer.load(store)
    if _OPTIMIZER_VARIABLES in store.keys():
        optimizer.expect_variables(int(np.asarray(store[_OPTIMIZER_VARIABLES])))
    if saved is not None:
        errors.check_run_settings(store, optimizer)
        errors.check_capacity(saved, optimizer)
    return seeds, saved


def saved_seeds(store, seed_count):
    """The saved seed states (checked against the model's random layers), or None."""
    if _SEEDS not in store.keys():
        return None
    seeds = np.asarray(store[_SEEDS])
    if seed_count != len(seeds):
        raise ValueError(
            f"The file holds the seeds of {len(seeds)} random layers "
            f"and this model has {seed_count}. Load it into a model "
            "with the same architecture. Received: "
            f"{len(seeds)} seeds"
        )
    return seeds


def assign_seeds(seed_states, seeds):
    """Writes saved `seeds` into the seed-state variables (in their own dtype)."""
    if seeds is not None:
        for state, seed in zip(seed_states, seeds):
            # Another backend's file: int64 seeds (TensorFlow) or uint32 (JAX).
            state.assign(np.asarray(seed).astype(_dtype_name(state.dtype)))


def _dtype_name(dtype):
    return getattr(dtype, "name", dtype)


def save_datasets(store, entries):
    """Writes the datasets of an index-buffered run: `(fingerprint, offset, size)` each."""
    store[DATA_PREFIX + "fingerprints"] = np.array(
        [list(bytes.fromhex(f)) for f, _, _ in entries], "uint8"
    ).reshape(-1, 16)
    store[DATA_PREFIX + "ranges"] = np.array(
        [[offset, size] for _, offset, size in entries], "int64"
    ).reshape(-1, 2)


def load_datasets(store):
    """The `(fingerprint, offset, size)` entries `save_datasets` wrote, or None."""
    if DATA_PREFIX + "fingerprints" not in store.keys():
        return None
    fingerprints = np.asarray(store[DATA_PREFIX + "fingerprints"])
    ranges = np.asarray(store[DATA_PREFIX + "ranges"])
    return [
        (bytes(f.tolist()).hex(), int(offset), int(size))
        for f, (offset, size) in zip(fingerprints, ranges)
    ]
