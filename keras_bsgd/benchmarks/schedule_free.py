"""`ScheduleFreeAdamW`: Keras' schedule-free AdamW, as it runs on JAX, on TensorFlow too."""

import keras
from keras import ops


class ScheduleFreeAdamW(keras.optimizers.ScheduleFreeAdamW):
    """Keras' `ScheduleFreeAdamW` with `z` read before its update.

    Schedule-free AdamW (Defazio et al., 2024) keeps three sequences: `z`
    (Keras' `momentum` variables) takes the Adam steps, `x` is the uniform
    average `x_k = (z_1 + ... + z_k) / k` (with a constant learning rate and
    no warm-up), and the model holds `y = (1 - beta_1) * z + beta_1 * x`.
    Keras 3.15's `update_step` recovers the previous `x` from `y` and the
    previous `z`, which it keeps as `momentum.value`: on JAX a value, on
    TensorFlow the variable itself, read again after `z` has been updated.
    On TensorFlow `x` then drifts from the mean of the `z`s by
    `lr * gradient / (9 * denominator)` per step. This class is Keras'
    `update_step` with that one read taken as a copy before the update, so
    both backends run the algorithm Keras documents. Everything else,
    weight decay (Keras applies it to `y`) included, is Keras'.

    Build it before `fit()` (`optimizer.build(model.trainable_variables)`):
    Keras 3.15's TensorFlow trainer builds the optimizer while it traces the
    train step, where the copy of the weights into `z` does not take.

    Args:
        learning_rate: The Adam learning rate. Defaults to `0.0025`.
        **kwargs: The other arguments of `keras.optimizers.ScheduleFreeAdamW`.

    Example:

    >>> import keras, numpy as np
    >>> v = keras.Variable([1.0, 2.0])
    >>> optimizer = ScheduleFreeAdamW(0.1)
    >>> optimizer.build([v])
    >>> _ = optimizer.apply_gradients([(np.array([1.0, -1.0], "float32"), v)])
    >>> [round(float(a), 4) for a in v.numpy()]
    [0.9, 2.1]
    """

    def update_step(self, gradient, variable, learning_rate):
        """Keras 3.15's step, with `z` copied before its update."""
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        beta_1 = ops.cast(self.beta_1, variable.dtype)
        beta_2 = ops.cast(self.beta_2, variable.dtype)
        epsilon = ops.cast(self.epsilon, variable.dtype)
        if self.warmup_steps > 0:
            warmup = ops.minimum(local_step / ops.cast(self.warmup_steps, variable.dtype), 1.0)
            lr = lr * warmup
        index = self._get_variable_index(variable)
        momentum, velocity = self._momentums[index], self._velocities[index]
        momentum_old = ops.copy(momentum)  # The fix: a value, not the variable.
        self.assign_add(velocity, ops.multiply(ops.subtract(ops.square(gradient), velocity),
                                               1 - beta_2))
        denom = ops.add(ops.sqrt(velocity / (1 - ops.power(beta_2, local_step))), epsilon)
        self.assign_sub(momentum, ops.divide(ops.multiply(lr, gradient), denom))
        weight = 1.0 / local_step
        x_old = ops.divide(ops.subtract(variable, ops.multiply(1 - beta_1, momentum_old)), beta_1)
        x_new = ops.add(ops.multiply(1 - weight, x_old), ops.multiply(weight, momentum))
        self.assign(variable, ops.add(ops.multiply(1 - beta_1, momentum),
                                      ops.multiply(beta_1, x_new)))
