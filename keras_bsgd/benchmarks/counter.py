"""`GradientCounter`: an identity layer that counts the backward passes through it."""

import keras


class GradientCounter(keras.layers.Layer):
    """Identity on the forward pass; adds one to `count` on every backward pass.

    Put it on a model's output: every gradient of the loss flows through it
    once, so `count` is the number of gradient evaluations, measured inside
    the compiled train function (replay loops included) rather than assumed.
    Forward passes (evaluation, logging) do not count. The count is kept out
    of the layer's weights on purpose: backward-SGD saves and restores the
    model's non-trainable state with its anchor, and would rewind a counter
    stored there.

    On TensorFlow the count is a raw `tf.Variable` that the gradient
    increments in the graph. A JAX step is a pure function, so there the
    gradient calls the host (`jax.debug.callback`), which adds one to a
    Python integer; reading `count` waits for the calls still in flight.

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((3,))
    >>> counter = GradientCounter()
    >>> model = keras.Model(inputs, counter(keras.layers.Dense(2)(inputs)))
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> _ = model.fit(np.ones((8, 3)), np.zeros((8, 2)), batch_size=4, verbose=0)
    >>> int(counter.count)
    2
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        backend = keras.backend.backend()
        if backend == "tensorflow":
            self._identity, self._read = _tensorflow_counter()
        elif backend == "jax":
            self._identity, self._read = _jax_counter()
        else:
            raise ValueError(
                "GradientCounter runs on the TensorFlow and JAX backends. "
                f"Received: KERAS_BACKEND={backend!r}"
            )

    @property
    def count(self):
        """The number of backward passes so far (an int64 scalar: `int(counter.count)`)."""
        return self._read()

    def call(self, inputs):
        return self._identity(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


def _tensorflow_counter():
    """`(identity, read)` over a `tf.Variable` that the gradient increments in the graph."""
    import tensorflow as tf

    with tf.init_scope():
        # A local of the closures: hidden from Keras' tracking (no weight).
        count = tf.Variable(0, dtype="int64", trainable=False, name="count")

    @tf.custom_gradient
    def identity(x):
        def grad(upstream):
            with tf.control_dependencies([count.assign_add(1)]):
                return tf.identity(upstream)

        return tf.identity(x), grad

    return identity, count.numpy


def _jax_counter():
    """`(identity, read)` over a host integer that the gradient increments by a callback."""
    import jax
    import numpy as np

    total = [0]

    def add_one():
        total[0] += 1

    @jax.custom_vjp
    def identity(x):
        return x

    def forward(x):
        return x, None

    def backward(_, upstream):
        jax.debug.callback(add_one)
        return (upstream,)

    identity.defvjp(forward, backward)

    def read():
        jax.effects_barrier()  # The callbacks of steps dispatched but not finished.
        return np.int64(total[0])

    return identity, read
