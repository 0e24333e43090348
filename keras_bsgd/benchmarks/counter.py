"""`GradientCounter`: an identity layer that counts the backward passes through it."""

import keras
import tensorflow as tf


class GradientCounter(keras.layers.Layer):
    """Identity on the forward pass; adds one to `count` on every backward pass.

    Put it on a model's output: every gradient of the loss flows through it
    once, so `count` is the number of gradient evaluations, measured inside
    the compiled train function (replay loops included) rather than assumed.
    Forward passes (evaluation, logging) do not count. The counter is a raw
    `tf.Variable`, kept out of the layer's weights on purpose: backward-SGD
    saves and restores the model's non-trainable state with its anchor, and
    would rewind a counter stored there.

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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with tf.init_scope():
            # A list hides the variable from Keras' tracking (no weight).
            self._count = [tf.Variable(0, dtype="int64", trainable=False, name="count")]

    @property
    def count(self):
        """The number of backward passes so far, a scalar int64 `tf.Variable`."""
        return self._count[0]

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
