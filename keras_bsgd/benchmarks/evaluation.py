"""`IterateProbe`: reads a method's evaluated iterate and its test-set logits."""

import numpy as np
import tensorflow as tf


class IterateProbe:
    """The evaluated iterate of a training model: its weights and test logits.

    For most methods the evaluated iterate is the model's weights. With
    `average=True` (an optimizer with `use_ema=True`) it is the optimizer's
    exponential moving average: Keras copies it into the model only when
    `fit()` ends (`optimizer.finalize_variable_values`), so the probe calls
    that same public method, reads the weights and the logits, and writes the
    training weights back, bit for bit. Before the first step there is no
    average yet, and the probe reads the model's weights.

    Args:
        model: A built Keras model that outputs logits.
        x: Test inputs, a NumPy array.
        batch_size: Examples per forward pass.
        average: Whether to read the optimizer's moving average.
            Defaults to `False`.
        jit_compile: Whether to XLA-compile the forward pass.
            Defaults to `False`.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> probe = IterateProbe(model, np.ones((5, 3), "float32"), batch_size=4)
    >>> weights, logits = probe.read()
    >>> weights.shape, logits.shape
    ((8,), (5, 2))
    """

    def __init__(self, model, x, batch_size, average=False, jit_compile=False):
        self.model, self.x = model, x
        self.batch_size, self.average = batch_size, average
        self._forward = tf.function(
            lambda x: model(x, training=False), jit_compile=jit_compile, reduce_retracing=True
        )

    def _weights_and_logits(self):
        weights = np.concatenate(
            [np.asarray(v.numpy()).ravel() for v in self.model.trainable_variables]
        )
        logits = [
            self._forward(self.x[i : i + self.batch_size]).numpy()
            for i in range(0, len(self.x), self.batch_size)
        ]
        return weights, np.concatenate(logits)

    def read(self):
        """The evaluated iterate's flattened trainable weights and test logits.

        Returns:
            A tuple `(weights, logits)` of NumPy arrays: weights of shape
            `(parameters,)`, logits of shape `(examples, classes)`.
        """
        optimizer = getattr(self.model, "optimizer", None)  # None before compile().
        if not self.average or optimizer is None or int(optimizer.iterations) == 0:
            return self._weights_and_logits()
        variables = self.model.trainable_variables
        training = [v.numpy() for v in variables]
        optimizer.finalize_variable_values(variables)
        try:
            return self._weights_and_logits()
        finally:
            for variable, value in zip(variables, training):
                variable.assign(value)
