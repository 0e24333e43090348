"""`DataStore` on JAX: one device copy of a run's in-memory arrays, which index buffering gathers from."""

import keras
import numpy as np
from jax import numpy as jnp

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

    @property
    def size(self):
        return sum(size for _, _, size in self._datasets)

    def add(self, data):
        """Stores `data` (a nest of NumPy arrays) unless stored already; returns its offset."""
        fingerprint = structures.fingerprint(data)
        for known, offset, _ in self._datasets:
            if known == fingerprint:
                return offset
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
                "Compile with `BackwardSGD(index_buffering=False)` to buffer whole "
                f"batches instead. Received: {new}"
            )

    def gather(self, values, indices):
        """The batch `(x, y, sample_weight)` of examples `indices`, from the store's `values`."""
        gathered = iter([jnp.take(value, indices, axis=0) for value in values])
        flat = [None if a is None else next(gathered) for a in keras.tree.flatten(self.structure)]
        return keras.tree.pack_sequence_as(self.structure, flat)
