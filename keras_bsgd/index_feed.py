"""How `fit()` feeds example indices instead of arrays (index buffering).

`fit()` hands Keras an index array, which Keras batches and shuffles exactly
as it would the arrays (its permutation depends only on the number of
examples); what Keras does to the arrays themselves happens here first.
"""

import math

import keras
import numpy as np

# fit() turns class weights into sample weights inside its data adapter; with
# index buffering they must become data before that, exactly as Keras does it,
# and Keras has no public name for the conversion.
from keras.src.trainers.data_adapters.data_adapter_utils import (
    class_weight_to_sample_weights,
)

from keras_bsgd.structures import num_examples


def in_memory(data):
    """Whether `data` is a nest of numeric NumPy arrays (None leaves allowed)."""
    leaves = [a for a in keras.tree.flatten(data) if a is not None]
    return bool(leaves) and all(
        isinstance(a, np.ndarray)
        and a.ndim >= 1
        and (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_)
        for a in leaves
    )


def as_floatx(array):
    # Keras feeds float arrays to the model as floatx (float64 becomes
    # float32); other dtypes (uint8 images, int labels) are kept.
    if array is None or not np.issubdtype(array.dtype, np.floating):
        return array
    return array.astype(keras.backend.floatx(), copy=False)


def _validation_split(data, split):
    """`(train, validation)`: the last `split` of the examples, as fit() takes it."""
    num_samples = num_examples(data)
    split_at = int(math.floor(num_samples * (1.0 - split)))
    if split_at in (0, num_samples):
        raise ValueError(
            f"Training data contains {num_samples} samples, which is not "
            "sufficient to split it into a validation and training set as "
            f"specified by `validation_split={split}`. Received: "
            f"validation_split={split}"
        )

    def part(start, stop):
        return keras.tree.map_structure(
            lambda a: None if a is None else a[start:stop], data
        )

    return part(0, split_at), part(split_at, num_samples)


def feed_indices(store, arguments):
    """Puts fit()'s arrays into `store`; returns the arguments that feed their indices.

    The arrays go into the run's `DataStore` and `x` becomes their global
    indices. What Keras would do to the arrays themselves happens here
    first: the validation split (the last fraction, before shuffling), class
    weights as sample weights, floats cast to floatx.

    Args:
        store: The run's `DataStore`.
        arguments: `fit()`'s arguments by name, with NumPy `x`, `y`,
            `sample_weight` (see `in_memory`).

    Returns:
        The arguments to call Keras' `fit()` with instead.

    Example:

    >>> import numpy as np
    >>> from keras_bsgd.backend.tensorflow.data_store import DataStore
    >>> x, y = np.zeros((10, 2)), np.arange(10)
    >>> args = feed_indices(DataStore(), dict(x=x, y=y, validation_split=0.2))
    >>> args["x"].tolist(), args["y"], args["validation_data"][1].tolist()
    ([0, 1, 2, 3, 4, 5, 6, 7], None, [8, 9])
    """
    x, y, sample_weight = (arguments.get(k) for k in ("x", "y", "sample_weight"))
    class_weight = arguments.get("class_weight")
    if class_weight is not None and (
        sample_weight is not None or keras.tree.is_nested(y)
    ):
        return arguments  # Keras' data adapter rejects these before any step.
    split = arguments.pop("validation_split", 0.0)
    data = (x, y, sample_weight)
    if split and arguments.get("validation_data") is None:
        data, arguments["validation_data"] = _validation_split(data, split)
    x, y, sample_weight = data
    if arguments.pop("class_weight", None) is not None:
        # Training examples only: validation is not class-weighted.
        sample_weight = class_weight_to_sample_weights(y, class_weight)
    if keras.tree.is_nested(y) and isinstance(sample_weight, np.ndarray):
        # One array for every output, as Keras' data adapter replicates it.
        sample_weight = keras.tree.map_structure(lambda _: sample_weight, y)
    data = (x, y, sample_weight)
    offset = store.add(keras.tree.map_structure(as_floatx, data))
    num_samples = num_examples(data)
    arguments.update(
        x=np.arange(offset, offset + num_samples, dtype="int32"),
        y=None,
        sample_weight=None,
    )
    return arguments

