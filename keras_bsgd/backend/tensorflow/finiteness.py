"""Finiteness checks: of a batch and its loss, of gradients, of the weights after a replay."""

import tensorflow as tf


def all_finite(tensors):
    """Whether every value of every tensor in `tensors` is finite (no NaN or Inf).

    Args:
        tensors: A list of floating-point tensors or variables.

    Returns:
        A scalar boolean tensor.

    Example:

    >>> bool(all_finite([tf.constant([1.0, 2.0]), tf.constant(3.0)]))
    True
    >>> bool(all_finite([tf.constant([1.0, float("nan")])]))
    False
    """
    # One check per dtype over the tensors joined: XLA:CPU compiles (and
    # keeps) a kernel per check (docs/performance.md, "Memory").
    by_dtype = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(tf.reshape(t, [-1]))
    checks = [
        tf.reduce_all(tf.math.is_finite(flat[0] if len(flat) == 1 else tf.concat(flat, 0)))
        for flat in by_dtype.values()
    ]
    return tf.reduce_all(checks)
