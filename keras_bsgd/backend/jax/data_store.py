"""`DataStore` on JAX: one device copy of a run's in-memory arrays, which index buffering gathers from."""

import keras
import numpy as np
from jax import numpy as jnp

from keras_bsgd import saved_run
from keras_bsgd import structures


class DataStore:
    """The in-memory datasets of a run, kept once each, gathered by global example index.

    The JAX counterpart of the TensorFlow `DataStore` (same fingerprints,
    same global indices): each distinct dataset `(x, y, sample_weight)`
    occupies `[offset, offset + size)`, so indices an earlier `fit()`
    buffered still resolve to their own examples. The data lives in one
    `keras.Variable` per leaf, which the run lists among the optimizer's
    variables so that Keras carries it into the jitted step; a new dataset
    concatenates onto them (and the step compiles again for the new shapes).
    A saved run records each dataset's fingerprint and global indices
    (`save`, the TensorFlow store's format); a store `restored` from a file
    waits for the same arrays.

    Example:

    >>> import numpy as np
    >>> store = DataStore()
    >>> x, y = np.arange(6, dtype="uint8").reshape(3, 2), np.array([0, 1, 2])
    >>> store.add((x, y, None)), store.add((x, y, None)), store.add((x + 1, y, None))
    (0, 0, 3)
    """

    def __init__(self):
        self.structure = None
        self.variables = []
        self._datasets = []  # (fingerprint, offset, size)
        # Datasets of a saved run by fingerprint: None until a fit() gives
        # their arrays (flat), which go to the device once all are here.
        self._waiting = {}

    @property
    def size(self):
        return sum(size for _, _, size in self._datasets)

    @property
    def entries(self):
        """`(fingerprint, offset, size)` of each dataset, in the order of their offsets."""
        return list(self._datasets)

    def save(self, store):
        """Writes each dataset's fingerprint, offset and size into a Keras saving `store`."""
        saved_run.save_datasets(store, self._datasets)

    @classmethod
    def restored(cls, entries):
        """A store awaiting the datasets of a saved run (`saved_run.load_datasets`'s `entries`)."""
        store = cls()
        store._datasets = list(entries)
        store._waiting = {fingerprint: None for fingerprint, _, _ in entries}
        return store

    @staticmethod
    def same_layout(live, loaded):
        """Whether indices saved with `loaded` resolve to the same examples in `live` (None: no store)."""
        if live is None or loaded is None:
            return live is None and loaded is None
        return live.entries[: len(loaded.entries)] == loaded.entries

    def add(self, data):
        """Stores `data` (a nest of NumPy arrays) unless stored already; returns its offset."""
        fingerprint = structures.fingerprint(data)
        data = self._with_store_weights(data)
        for known, offset, _ in self._datasets:
            if known == fingerprint:
                if fingerprint in self._waiting:
                    self._arrive(fingerprint, data)
                return offset
        if self._waiting:
            raise ValueError(
                "The replay buffer loaded from the file holds example indices "
                "into in-memory training data that this fit() did not "
                f"receive: {self._describe_waiting()}. Resume with the arrays the "
                "saved run trained on (train on other data in a later fit() "
                f"call). Received: data with fingerprint {fingerprint} "
                f"({structures.num_examples(data)} examples)"
            )
        leaves = [a for a in keras.tree.flatten(data) if a is not None]
        self._check_layout(data, leaves)
        offset, size = self.size, int(leaves[0].shape[0])
        if self.variables:
            leaves = [
                np.concatenate([np.asarray(v.value), leaf]) for v, leaf in zip(self.variables, leaves)
            ]
        self.structure = data
        self.variables = [
            keras.Variable(leaf, dtype=str(leaf.dtype), trainable=False, name=f"replay_data_{i}")
            for i, leaf in enumerate(leaves)
        ]
        self._datasets.append((fingerprint, offset, size))
        return offset

    def _with_store_weights(self, data):
        """`data` with ones for the store's sample weights; the store given ones for `data`'s first.

        A dataset without sample weights is one whose sample weights are all
        ones (docs/semantics.md, "Sample weights within a run"), as in the
        TensorFlow store. The fingerprint is of the arrays as given.
        """
        if self.structure is None or (data[2] is None) == (self.structure[2] is None):
            return data
        if data[2] is None:
            size = structures.num_examples(data)
            ones = keras.tree.map_structure(
                lambda w: np.ones((size, *w.shape[1:]), w.dtype), self.structure[2]
            )
            return (data[0], data[1], ones)
        if self.variables:
            size = self.variables[0].shape[0]
            self.variables = self.variables + [
                keras.Variable(
                    np.ones((size, *w.shape[1:]), w.dtype), dtype=str(w.dtype),
                    trainable=False, name=f"replay_data_{i}",
                )
                for i, w in enumerate(keras.tree.flatten(data[2]), start=len(self.variables))
            ]
        self.structure = data
        return data

    def _arrive(self, fingerprint, data):
        """Takes the arrays of a saved run's dataset; puts them on the device once all came."""
        missing = [f for f, leaves in self._waiting.items() if leaves is None and f != fingerprint]
        if missing:
            raise ValueError(
                "The replay buffer loaded from the file holds example indices "
                f"into {len(self._waiting)} datasets, and the JAX trainer puts a "
                "saved run's data on the device in one piece, from the arrays of "
                "one fit(): it resumes index-buffered runs of one dataset. Resume "
                "this run on TensorFlow, or train runs to be resumed on JAX with "
                "`compile(..., index_buffering=False)`. Received: the arrays of "
                f"one of them ({self._describe_waiting()} waiting)"
            )
        self.structure = data
        self._waiting[fingerprint] = [a for a in keras.tree.flatten(data) if a is not None]
        columns = zip(*(self._waiting[f] for f, _, _ in self._datasets))
        self.variables = [
            keras.Variable(np.concatenate(column), dtype=str(column[0].dtype), trainable=False,
                           name=f"replay_data_{i}")
            for i, column in enumerate(columns)
        ]
        self._waiting = {}

    def _describe_waiting(self):
        return ", ".join(
            f"fingerprint {fingerprint} ({size} examples)"
            for fingerprint, _, size in self._datasets
            if self._waiting.get(fingerprint, 1) is None
        )

    def _check_layout(self, data, leaves):
        if self.structure is None:
            return
        known = [(v.shape[1:], v.dtype) for v in self.variables]
        new = [(tuple(leaf.shape[1:]), str(leaf.dtype)) for leaf in leaves]
        same_nones = [a is None for a in keras.tree.flatten(self.structure)] == [
            a is None for a in keras.tree.flatten(data)
        ]
        if not same_nones or [(tuple(s), d) for s, d in known] != new:
            raise ValueError(
                "This run's replay buffer holds example indices into in-memory "
                "arrays (index buffering), and these arrays have another layout "
                "than the run's first: every fit() of an index-buffered run must "
                "get arrays of the same shapes (but the first axis) and dtypes. "
                "Compile with `compile(..., index_buffering=False)` to buffer whole "
                f"batches instead. Received: {new}"
            )

    def gather(self, values, indices):
        """The batch `(x, y, sample_weight)` of examples `indices`, from the store's `values`."""
        gathered = iter([jnp.take(value, indices, axis=0) for value in values])
        flat = [None if a is None else next(gathered) for a in keras.tree.flatten(self.structure)]
        return keras.tree.pack_sequence_as(self.structure, flat)
