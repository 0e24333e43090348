"""`ReplayLossScale`: dynamic loss scaling (`mixed_float16`) for replayed maps.

Keras' `LossScaleOptimizer` skips a step whose float16 gradients overflow
and halves its scale. A replay cannot skip: dropping map `T_i` from one
step's composition would change the maps themselves. So every map computes
its gradient at the current scale and, only when it overflows, recomputes it
at half the scale (same weights, same model state, same random draws) until
it is finite. Scaling by a power of two is exact in floating point, so the
unscaled gradient does not depend on the scale except where float16 would
underflow or overflow: `T_i` stays the float32 map up to float16 rounding.
"""

import tensorflow as tf

from keras_bsgd.backend.tensorflow import finiteness

# A map whose gradient still overflows after this many halvings is left
# non-finite; the replay's divergence check then stops the run.
MAX_HALVINGS = 32


class ReplayLossScale:
    """Runs replayed maps at the dynamic scale of a `LossScaleOptimizer`.

    The wrapper's own variables hold the state: `dynamic_scale` is the scale
    the next map starts from, `step_counter` counts steps without overflow.
    A map that needed a smaller scale lowers `dynamic_scale` to it; a step
    without overflow counts towards doubling it after `dynamic_growth_steps`
    steps, as in Keras.

    Args:
        optimizer: A built `keras.optimizers.LossScaleOptimizer`.

    Example:

    >>> import keras, tensorflow as tf
    >>> wrapper = keras.optimizers.LossScaleOptimizer(
    ...     keras.optimizers.SGD(), initial_scale=2.0**20)
    >>> v = keras.Variable(1.0)
    >>> wrapper.build([v])
    >>> scale = ReplayLossScale(wrapper)
    >>> def grads(s):  # overflows float16 from a scale of 2**10 up
    ...     return [tf.cast(tf.cast(100.0 * s, "float16"), "float32")]
    >>> g = scale.gradients(grads, restart=lambda: None)
    >>> float(g[0]), float(wrapper.dynamic_scale)
    (100.0, 512.0)
    """

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def gradients(self, scaled_gradients, restart):
        """The unscaled gradients of one map, at the largest scale that is finite.

        Args:
            scaled_gradients: `scaled_gradients(scale)` returns the gradients
                of `scale * loss` at the current state.
            restart: Called before every retry; restores what the previous
                attempt changed (model state, random-layer seeds).

        Returns:
            The gradients divided by the scale they were computed at (`None`
            where `scaled_gradients` gave `None`).
        """
        scale = tf.convert_to_tensor(self.optimizer.dynamic_scale)
        first = scaled_gradients(scale)
        # Variables without a gradient stay None, as Keras leaves them.
        present = [g is not None for g in first]

        def dense(grads):
            # Loop variables need fixed shapes; an embedding's IndexedSlices has not.
            return [tf.convert_to_tensor(g) for g in grads if g is not None]

        def retry(scale, grads):
            restart()
            scale = scale / 2
            return scale, dense(scaled_gradients(scale))

        scale, grads = tf.while_loop(
            lambda scale, grads: tf.logical_not(finiteness.all_finite(grads)),
            retry,
            (scale, dense(first)),
            maximum_iterations=MAX_HALVINGS,
        )
        self.optimizer.dynamic_scale.assign(scale)
        unscaled = iter([g / scale for g in grads])
        return [next(unscaled) if p else None for p in present]

    def start_step(self):
        """Returns the scale at the start of the step, for `finish_step`."""
        return tf.identity(self.optimizer.dynamic_scale)

    def finish_step(self, start_scale, when=True):
        """Resets the growth count after an overflow, else counts towards doubling.

        Does nothing unless `when` (a boolean tensor): a dropped batch is not a step.
        """
        optimizer = self.optimizer
        overflowed = optimizer.dynamic_scale < start_scale
        grow = tf.logical_and(
            tf.logical_not(overflowed),
            tf.equal(optimizer.step_counter, optimizer.dynamic_growth_steps - 1),
        )
        grow = tf.logical_and(grow, when)
        optimizer.dynamic_scale.assign(
            tf.where(grow, 2 * optimizer.dynamic_scale, optimizer.dynamic_scale)
        )
        counter = optimizer.step_counter
        optimizer.step_counter.assign(
            tf.where(
                when,
                tf.where(tf.logical_or(overflowed, grow), tf.zeros_like(counter), counter + 1),
                counter,
            )
        )

