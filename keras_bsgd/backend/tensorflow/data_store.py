"""`DataStore`: one device copy of the in-memory training data that index buffering gathers from."""

import keras
import numpy as np
import tensorflow as tf

from keras_bsgd import saved_run
from keras_bsgd import structures


class DataStore:
    """The in-memory datasets of a run, kept once each, gathered by global example index.

    With index buffering the replay buffer stores only each batch's example
    indices; every replay gathers the batch from here. Each distinct dataset
    (a nest `(x, y, sample_weight)` of NumPy arrays with a common first
    dimension) occupies a range of global indices `[offset, offset + size)`,
    so indices buffered by an earlier `fit()` on other arrays still resolve
    to their own examples. The data lives in one non-trainable `tf.Variable`
    per leaf, in the data's own dtype (uint8 images stay uint8), created
    once per distinct dataset: a variable is read by handle, where a constant
    would be copied into every traced graph. The store is not part of the
    model's weights and is never written to a `.keras` file; a saved run
    records only each dataset's `fingerprint`, and a resumed `fit()` must
    supply the same arrays.

    Example:

    >>> import numpy as np
    >>> store = DataStore()
    >>> x, y = np.arange(6, dtype="uint8").reshape(3, 2), np.array([0, 1, 2])
    >>> store.add((x, y, None))
    0
    >>> store.add((x, y, None))  # the same arrays again: no second copy
    0
    >>> store.add((x + 1, y, None))  # other arrays: the next global indices
    3
    >>> batch_x, batch_y, _ = store.gather(np.array([4, 0], "int32"))
    >>> batch_x.numpy().tolist(), batch_x.dtype.name, batch_y.numpy().tolist()
    ([[3, 4], [0, 1]], 'uint8', [1, 0])
    """

    PREFIX = saved_run.DATA_PREFIX

    def __init__(self):
        # [fingerprint, offset, size, leaves]: leaves are the flat arrays
        # until they are copied to the device, then _ON_DEVICE; None while a
        # dataset restored from a file waits for its arrays.
        self._datasets = []
        self._structure = None  # the nest, with a per-example TensorSpec per leaf
        self._variables = None
        self.version = 0  # bumped whenever the variables are recreated

    @property
    def size(self):
        """The number of global example indices in use."""
        return sum(size for _, _, size, _ in self._datasets)

    @property
    def nbytes(self):
        """Bytes held on the device (all leaves of all datasets)."""
        if self._variables is None:
            return 0
        return structures.nbytes(self._variables)

    @property
    def fingerprints(self):
        """The fingerprints of the datasets, in the order of their offsets."""
        return [fingerprint for fingerprint, _, _, _ in self._datasets]

    fingerprint = staticmethod(structures.fingerprint)

    def add(self, data):
        """Adds a dataset unless a dataset with its fingerprint is already here.

        Args:
            data: A nest `(x, y, sample_weight)` of NumPy arrays (None leaves
                allowed) sharing their first dimension.

        Returns:
            The global index of the dataset's first example.

        Raises:
            ValueError: if the dataset's structure, per-example shapes or
                dtypes differ from those already stored, if the store was
                restored from a file and `data` is not a dataset it refers
                to, or if the global indices would overflow int32.
        """
        fingerprint = self.fingerprint(data)
        data = self._with_store_weights(data)
        for entry in self._datasets:
            if entry[0] == fingerprint:
                if entry[3] is None:
                    self._check_structure(data)
                    entry[3] = keras.tree.flatten(data)
                    if all(e[3] is not None for e in self._datasets):
                        self._build()
                return entry[1]
        pending = [e for e in self._datasets if e[3] is None]
        if pending:
            raise ValueError(
                "The replay buffer loaded from the file holds example indices "
                "into in-memory training data that this fit() did not "
                f"receive: {_describe(pending)}. Resume with the arrays the "
                "saved run trained on (train on other data in a later fit() "
                f"call). Received: data with fingerprint {fingerprint} "
                f"({structures.num_examples(data)} examples)"
            )
        size = structures.num_examples(data)
        if self.size + size > np.iinfo(np.int32).max:
            raise ValueError(
                "Index buffering numbers examples with int32, and this run's "
                f"datasets would hold {self.size + size}. Compile with "
                "`compile(..., index_buffering=False)`. Received: "
                f"{size} more examples"
            )
        self._check_structure(data)
        self._datasets.append([fingerprint, self.size, size, keras.tree.flatten(data)])
        self._build()
        return self._datasets[-1][1]

    def gather(self, indices):
        """The examples at global `indices`, as the stored nest of tensors.

        Args:
            indices: int32 tensor `[batch]` of global example indices.

        Returns:
            The nest `(x, y, sample_weight)` of `[batch, ...]` tensors.
        """
        leaves = [None if v is None else tf.gather(v, indices) for v in self._variables]
        return keras.tree.pack_sequence_as(self._structure, leaves)

    def _with_store_weights(self, data):
        """`data` with ones for the store's sample weights; the store given ones for `data`'s first.

        A dataset without sample weights is one whose sample weights are all
        ones (docs/semantics.md, "Sample weights within a run"): it gets ones
        of the stored shape and dtype, and where `data` brings the run's first
        weights, the examples stored so far get ones. The fingerprint is of
        the arrays as given, which is what a resumed `fit()` gives again.
        """
        if self._structure is None or (data[2] is None) == (self._structure[2] is None):
            return data
        if data[2] is None:
            size = structures.num_examples(data)
            ones = keras.tree.map_structure(
                lambda s: np.ones((size, *s.shape), s.dtype.as_numpy_dtype), self._structure[2]
            )
            return (data[0], data[1], ones)
        weights = keras.tree.flatten(data[2])
        self._structure = (*self._structure[:2], _example_specs(data[2]))
        for entry in self._datasets:
            if isinstance(entry[3], list):  # arrays not on the device yet
                entry[3] = entry[3][:-1] + [_ones(entry[2], w) for w in weights]
        if self._variables is not None:
            size = next(v for v in self._variables if v is not None).shape[0]
            with tf.init_scope():
                ones = [
                    tf.Variable(_ones(size, w), trainable=False, name=f"replay_data_{i}")
                    for i, w in enumerate(weights, start=len(self._variables) - 1)
                ]
            self._variables = self._variables[:-1] + ones
            self.version += 1
        return data

    def _check_structure(self, data):
        structure = _example_specs(data)
        if self._structure is None:
            self._structure = structure
            return
        if not structures.same_specs(structure, self._structure):
            raise ValueError(
                "Every fit() of a run must get examples of the same structure, "
                "shapes and dtypes: the replay buffer keeps example indices "
                "into all of them. The stored examples are "
                f"{structures.describe(self._structure, root='')}. Received: "
                f"examples of {structures.describe(structure, root='')}"
            )

    def _build(self):
        # One variable per leaf holding every dataset, so that a replay
        # gathers with a single op whatever the number of datasets. The
        # host arrays are dropped once copied: the store never pins them.
        new = [e for e in self._datasets if e[3] is not _ON_DEVICE]
        columns = [list(c) for c in zip(*(e[3] for e in new))]
        old = self._variables or [None] * len(columns)
        with tf.init_scope():
            self._variables = [
                None
                if column[0] is None
                else tf.Variable(
                    tf.concat(([] if var is None else [var]) + column, axis=0),
                    trainable=False,
                    name=f"replay_data_{i}",
                )
                for i, (var, column) in enumerate(zip(old, columns))
            ]
        for entry in new:
            entry[3] = _ON_DEVICE
        self.version += 1

    def save(self, store):
        """Writes each dataset's fingerprint, offset and size into a Keras saving `store`."""
        saved_run.save_datasets(store, [entry[:3] for entry in self._datasets])

    @staticmethod
    def same_layout(live, loaded):
        """Whether indices saved with `loaded` resolve to the same examples in `live`.

        Args:
            live: The run's `DataStore`, or None (it buffers whole batches).
            loaded: What `load` returned for a saved run, or None.

        Returns:
            True if both are None, or if every dataset of `loaded` sits in
            `live` at the same global indices.
        """
        if live is None or loaded is None:
            return live is None and loaded is None
        ranges = [entry[:3] for entry in live._datasets]
        return ranges[: len(loaded._datasets)] == [e[:3] for e in loaded._datasets]

    @classmethod
    def load(cls, store):
        """A store awaiting the datasets recorded by `save`, or None if there are none."""
        entries = saved_run.load_datasets(store)
        if entries is None:
            return None
        out = cls()
        out._datasets = [[*entry, None] for entry in entries]
        return out


_ON_DEVICE = "on device"


def _example_specs(data):
    """The `tf.TensorSpec` nest of one example of `data` (NumPy arrays, None leaves kept)."""
    return keras.tree.map_structure(
        lambda a: None if a is None else tf.TensorSpec(a.shape[1:], tf.as_dtype(a.dtype)), data
    )


def _ones(size, like):
    """Sample weights of ones for `size` examples, shaped and typed as `like`'s examples."""
    return np.ones((size, *like.shape[1:]), like.dtype)


def _describe(entries):
    return ", ".join(
        f"fingerprint {fingerprint} ({size} examples)" for fingerprint, _, size, _ in entries
    )
