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
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])
