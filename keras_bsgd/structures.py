"""Nests of tensors, arrays and specs: their leaves' names, sizes and bytes, compared and described."""

import hashlib

import keras
import numpy as np


def flatten_with_names(nest, root="batch"):
    """The leaves of a nest with their names, in `keras.tree.flatten` order.

    Args:
        nest: A nest (None leaves allowed).
        root: The name of a nest that is a single leaf.

    Returns:
        A list of `(name, leaf)` pairs, names like `"0/1"` or `"0/image"`.

    Example:

    >>> flatten_with_names(({"image": 1}, None))
    [('0/image', 1), ('1', None)]
    >>> flatten_with_names(1)
    [('batch', 1)]
    """
    return [
        ("/".join(str(p) for p in path) or root, leaf)
        for path, leaf in keras.tree.flatten_with_path(nest)
    ]


def describe(spec, root="batch"):
    """The leaves of a nest of `tf.TensorSpec` as error messages show them.

    Args:
        spec: A nest of `tf.TensorSpec` (None leaves allowed).
        root: The name of a nest that is a single leaf.

    Example:

    >>> import tensorflow as tf
    >>> describe((tf.TensorSpec((2, 3), "uint8"), None))
    '0: (2, 3) uint8, 1: None'
    """
    return ", ".join(
        f"{name}: " + ("None" if s is None else f"{tuple(s.shape)} {s.dtype.name}")
        for name, s in flatten_with_names(spec, root)
    )


def same_specs(a, b):
    """Whether two nests of `tf.TensorSpec` have the same structure, shapes and dtypes.

    Spec names do not count (a traced tensor's spec is named after its op),
    and a None leaf matches only None.

    Example:

    >>> import tensorflow as tf
    >>> same_specs((tf.TensorSpec((2,), "int32", name="x"), None),
    ...            (tf.TensorSpec((2,), "int32"), None))
    True
    >>> same_specs((tf.TensorSpec((2,), "int32"),), (None,))
    False
    """
    try:
        keras.tree.assert_same_structure(a, b)
        return all(
            (x is None and y is None)
            or (
                x is not None
                and y is not None
                and x.shape == y.shape
                and x.dtype == y.dtype
            )
            for x, y in zip(keras.tree.flatten(a), keras.tree.flatten(b))
        )
    except (ValueError, TypeError):
        return False


def num_examples(nest):
    """The leading dimension of a nest's first leaf that is not None.

    For a batch this is its size, for a dataset its number of examples.

    Example:

    >>> import numpy as np
    >>> num_examples((None, np.zeros((5, 2)), np.zeros(5)))
    5
    """
    return next(int(a.shape[0]) for a in keras.tree.flatten(nest) if a is not None)


def nbytes(tensors):
    """Bytes held by a sequence of tensors or variables (None entries hold nothing).

    Example:

    >>> import tensorflow as tf
    >>> nbytes([tf.zeros((4, 3), "uint8"), None, tf.zeros((4,), "int32")])
    28
    """
    return sum(v.shape.num_elements() * v.dtype.size for v in tensors if v is not None)


def fingerprint(data):
    """A digest of a dataset's structure, dtypes, shapes and every byte.

    Hashing all bytes costs about as much as the one copy to the device
    that a new dataset costs anyway, and catches arrays that were
    changed in place between two `fit()` calls, which a sample would not.

    Args:
        data: A nest of NumPy arrays (or None leaves).

    Returns:
        A 32-character hex string.
    """
    digest = hashlib.blake2b(digest_size=16)
    for path, leaf in keras.tree.flatten_with_path(data):
        digest.update(repr(path).encode())
        if leaf is None:
            digest.update(b"None")
            continue
        leaf = np.ascontiguousarray(leaf)
        digest.update(f"{leaf.dtype.str}{leaf.shape}".encode())
        digest.update(memoryview(leaf).cast("B"))
    return digest.hexdigest()


def sample_weight_leaves(saved_leaves, x, y):
    """The sample-weight leaves of saved batches `(x, y, sample_weight)`, or None without weights.

    Args:
        saved_leaves: The flat leaves of saved batches (`SavedBuffer.leaves`).
        x: A batch's inputs, whose leaves come first.
        y: Its targets (a nest or None), whose leaves follow.

    Returns:
        The saved leaves after those of `x` and `y`: a list of arrays, or
        None where the batches have no sample weights.

    Example:

    >>> import numpy as np
    >>> leaves = [np.zeros((4, 2, 3)), np.zeros((4, 2)), None]
    >>> print(sample_weight_leaves(leaves, np.zeros((2, 3)), np.zeros(2)))
    None
    """
    weights = list(saved_leaves[len(keras.tree.flatten((x, y))) :])
    return None if len(weights) == 1 and weights[0] is None else weights


def pack_sample_weights(leaves, y):
    """Sample-weight `leaves` as a batch holds them: one array, or one per output of `y`.

    Args:
        leaves: Flat sample-weight arrays.
        y: The batch's targets.

    Returns:
        The nest, or None where `leaves` fit neither form (the batch is
        then refused as one of another structure).

    Example:

    >>> pack_sample_weights([1, 2], {"a": 0, "b": 0})
    {'a': 1, 'b': 2}
    """
    if len(leaves) == 1:
        return leaves[0]
    if keras.tree.is_nested(y) and len(keras.tree.flatten(y)) == len(leaves):
        return keras.tree.pack_sequence_as(y, leaves)
    return None
