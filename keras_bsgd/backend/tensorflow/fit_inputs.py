"""What `fit()` gets: batch sizes of arrays, generators, `PyDataset`s and `tf.data` pipelines."""

import itertools
import types

import keras
import numpy as np
import tensorflow as tf

from keras_bsgd.fit_plan import num_array_samples


def peek_first_batch(x):
    """`(first batch or None, x)`: a generator's or PyDataset's first batch, and what to pass on.

    A generator is read once and restored with its first batch in front, as
    Keras' own data adapter does.
    """
    if isinstance(x, types.GeneratorType):
        try:
            first = next(x)
        except StopIteration:
            return None, x  # Keras raises its own error for an empty generator.
        # Keras accepts generators only (types.GeneratorType), not iterators.
        return first, (batch for batch in itertools.chain([first], x))
    if isinstance(x, keras.utils.PyDataset) and x.num_batches != 0:
        # Keras reads the first batches itself to learn their spec.
        first = x[0]
        return (tuple(first) if isinstance(first, list) else first), x
    return None, x


def first_batch_spec(arguments, first):
    """A nest with the first batch's shapes and dtypes, or None where unknown."""
    x = arguments.get("x")
    if first is not None:
        return first
    if isinstance(x, tf.data.Dataset):
        return x.element_spec
    if num_array_samples(x) is not None:
        batch_size = arguments.get("batch_size") or 32
        data = (x, arguments.get("y"), arguments.get("sample_weight"))
        return keras.tree.map_structure(
            lambda a: None if a is None else a[:batch_size], data
        )
    return None


def symbolic(leaf):
    # A batch of unknown size, as Keras traces NumPy input; float arrays
    # reach the model as floatx.
    if leaf is None:
        return None
    dtype = keras.backend.standardize_dtype(
        leaf.dtype.name if isinstance(leaf.dtype, tf.dtypes.DType) else leaf.dtype
    )
    if isinstance(leaf, np.ndarray) and "float" in dtype:
        dtype = keras.backend.floatx()
    shape = tuple(leaf.shape)
    return keras.KerasTensor((None, *shape[1:]) if shape else shape, dtype)

