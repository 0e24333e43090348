"""How `fit()` feeds example indices instead of arrays (index buffering).

`fit()` hands Keras an index array, which Keras batches and shuffles exactly
as it would the arrays (its permutation depends only on the number of
examples); what Keras does to the arrays themselves happens here first.
"""

import math

import keras
import numpy as np

from keras_bsgd import keras_private
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


def check_arrays(arguments):
    """Refuses the arrays of a `fit()` that Keras' own `fit()` would refuse.

    Index buffering hands Keras example indices instead of the arrays, so
    Keras never sees arrays of different lengths (16 inputs, 8 labels) or
    sample weights that do not match `y`, and the step would gather past
    the end of the shorter ones. This shows Keras' array adapter the arrays
    `fit()` would have given it (after the validation split, as `fit()`
    splits first), and the validation arrays, so the errors are Keras' own,
    raised before anything changes. Input other than arrays
    (and tensors) is left to Keras.

    Args:
        arguments: `fit()`'s arguments by name.

    Raises:
        ValueError: Keras' error for the arrays: cardinalities that differ,
            sample weights whose structure does not match `y`'s, class
            weights with sample weights or with several outputs, or a
            validation split that leaves no example on one side.

    Example:

    >>> import numpy as np
    >>> check_arrays(dict(x=np.zeros((16, 2)), y=np.zeros(8)))
    Traceback (most recent call last):
    ...
    ValueError: Data cardinality is ambiguous. Make sure all arrays contain the same number of samples.'x' sizes: 16
    'y' sizes: 8
    <BLANKLINE>
    """
    data = tuple(arguments.get(k) for k in ("x", "y", "sample_weight"))
    if not _arrays(data):
        return
    validation = arguments.get("validation_data")
    split = arguments.get("validation_split")
    if split and validation is None:
        data, validation = _validation_split(data, split)
    keras_private.ArrayDataAdapter(*data, class_weight=arguments.get("class_weight"))
    # Keras checks the validation arrays only when it first evaluates, after
    # an epoch of training; they are checked here before any step.
    if isinstance(validation, (tuple, list)) and 2 <= len(validation) <= 3:
        validation = keras.utils.unpack_x_y_sample_weight(tuple(validation))
        if _arrays(validation):
            keras_private.ArrayDataAdapter(*validation)


def _arrays(data):
    # NumPy arrays and tensors, as `keras_bsgd.fit_plan` counts examples.
    leaves = [a for a in keras.tree.flatten(data) if a is not None]
    return bool(leaves) and all(
        isinstance(a, np.ndarray) or keras.ops.is_tensor(a) for a in leaves
    )


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

    Raises:
        ValueError: Keras' error for arrays its `fit()` would refuse (see
            `check_arrays`), before `store` changes.

    Example:

    >>> import numpy as np
    >>> from keras_bsgd.backend.tensorflow.data_store import DataStore
    >>> x, y = np.zeros((10, 2)), np.arange(10)
    >>> args = feed_indices(DataStore(), dict(x=x, y=y, validation_split=0.2))
    >>> args["x"].tolist(), args["y"], args["validation_data"][1].tolist()
    ([0, 1, 2, 3, 4, 5, 6, 7], None, [8, 9])
    """
    check_arrays(arguments)
    x, y, sample_weight = (arguments.get(k) for k in ("x", "y", "sample_weight"))
    split = arguments.pop("validation_split", 0.0)
    data = (x, y, sample_weight)
    if split and arguments.get("validation_data") is None:
        data, arguments["validation_data"] = _validation_split(data, split)
    x, y, sample_weight = data
    class_weight = arguments.pop("class_weight", None)
    if class_weight is not None:
        # Training examples only: validation is not class-weighted.
        sample_weight = keras_private.class_weight_to_sample_weights(y, class_weight)
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

