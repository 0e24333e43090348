"""`GradientCounter`: an identity layer that counts the backward passes through it."""

import keras
import tensorflow as tf


class GradientCounter(keras.layers.Layer):
    """Identity on the forward pass; adds one to `count` on every backward pass.

    Put it on a model's output: every gradient of the loss flows through it
    once, so `count` is the number of gradient evaluations, measured inside
    the compiled train function (replay loops included) rather than assumed.
    Forward passes (evaluation, logging) do not count. The counter is a
    non-trainable int64 weight, so optimizers and backward-SGD's anchor leave
    it alone.

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((3,))
    >>> counter = GradientCounter()
    >>> model = keras.Model(inputs, counter(keras.layers.Dense(2)(inputs)))
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> _ = model.fit(np.ones((8, 3)), np.zeros((8, 2)), batch_size=4, verbose=0)
    >>> int(counter.count.numpy())
    2
    """

    def build(self, input_shape):
        self.count = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False, name="count"
        )

    def call(self, inputs):
        count = self.count

        @tf.custom_gradient
        def identity(x):
            def grad(upstream):
                with tf.control_dependencies([count.assign_add(1)]):
                    return tf.identity(upstream)

            return tf.identity(x), grad

        return identity(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape
