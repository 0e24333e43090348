"""`LossScale`: dynamic loss scaling (`mixed_float16`) for replayed maps on JAX.

Keras' `LossScaleOptimizer` skips a step whose float16 gradients overflow
and halves its scale. A replay cannot skip: dropping map `T_i` from one
step's composition would change the maps themselves. So every map computes
its gradient at the current scale and, only when it overflows, recomputes it
at half the scale (same weights, model state and random draws: the map is a
pure function of them) until it is finite, as the TensorFlow trainer does
(`keras_bsgd.backend.tensorflow.loss_scale`). Scaling by a power of two is
exact, so `T_i` stays the float32 map up to float16 rounding.
"""

import jax
import keras
from jax import lax
from keras import ops

# A map whose gradient still overflows after this many halvings is left
# non-finite; the replay's divergence check then stops the run.
MAX_HALVINGS = 32


class LossScale:
    """The scale of a `LossScaleOptimizer`, threaded through the maps of a jitted step.

    The wrapper's variables hold the state: `dynamic_scale` is the scale the
    next map starts from (a map that needed a smaller one lowers it),
    `step_counter` counts steps without overflow towards doubling it after
    `dynamic_growth_steps`, as in Keras.

    Args:
        wrapper: The model's `keras.optimizers.LossScaleOptimizer`, built.
        variables: The list of the wrapper's variables the step's values follow.
    """

    def __init__(self, wrapper, variables):
        self.wrapper = wrapper
        self._position = [id(v) for v in variables].index(id(wrapper.dynamic_scale))

    def with_scale(self, optimizer_values, scale):
        """`optimizer_values` whose `dynamic_scale` is `scale`: Keras scales the loss by it."""
        values = list(optimizer_values)
        values[self._position] = scale
        return values

    def gradients(self, scaled_gradients, scale):
        """The unscaled gradients of one map, at the largest scale not above `scale` that is finite.

        Args:
            scaled_gradients: `scaled_gradients(scale)` returns `(grads, aux)`,
                the gradients of `scale * loss` and what the pass computed
                besides (the model state after it).
            scale: The scale to start from (a float32 scalar).

        Returns:
            `(grads, aux, scale)`: the gradients divided by the scale they were
            computed at, that attempt's `aux`, and that scale.
        """
        shapes = jax.eval_shape(scaled_gradients, scale)
        blank = jax.tree_util.tree_map(lambda s: ops.zeros(s.shape, s.dtype), shapes)

        def retry(carry):
            next_scale, _, _, tries = carry
            return (next_scale / 2, next_scale, scaled_gradients(next_scale), tries + 1)

        def overflowed(carry):
            _, _, (grads, _), tries = carry
            return (tries == 0) | (~_all_finite(grads) & (tries <= MAX_HALVINGS))

        _, used, (grads, aux), _ = lax.while_loop(overflowed, retry, (scale, scale, blank, 0))
        return jax.tree_util.tree_map(lambda g: g / used, grads), aux, used

    def count_step(self, o, scale, start_scale, ok):
        """The scale after a step that started at `start_scale`; counts towards doubling it.

        Args:
            o: The step's optimizer `Values` (its `step_counter` is updated).
            scale: The scale after the step's maps.
            start_scale: The scale before them.
            ok: Whether the step counts (a dropped batch is not a step).

        Returns:
            The scale for the next step: doubled after `dynamic_growth_steps`
            counted steps without overflow.
        """
        wrapper = self.wrapper
        counter = o[wrapper.step_counter]
        overflowed = scale < start_scale
        grow = ok & ~overflowed & ops.equal(counter, wrapper.dynamic_growth_steps - 1)
        reset = overflowed | grow
        o[wrapper.step_counter] = ops.where(
            ok, ops.where(reset, ops.zeros_like(counter), counter + 1), counter
        )
        return ops.where(grow, 2 * scale, scale)


def _all_finite(tensors):
    return ops.all(ops.stack([ops.all(ops.isfinite(t)) for t in jax.tree_util.tree_leaves(tensors)]))


def save_state_only(wrapper, backward_sgd):
    """Makes `wrapper` (a `LossScaleOptimizer` around `backward_sgd`) save its state, not the run's.

    On JAX the run's ring buffer and counters are among `backward_sgd.variables`
    (Keras carries only optimizer variables through its jitted step), and
    Keras' `LossScaleOptimizer` saves `variables` by position: a file would
    then hold the run twice, and a model loaded before its first step (whose
    run does not exist yet) would skip the wrapper's scale and growth count.
    The wrapper saves its own variables and `backward_sgd.state_variables`
    instead, as it does on TensorFlow, so files cross backends; the run is
    saved with the model (`keras_bsgd.saved_run`).
    """

    def state():
        own = wrapper.variables[: len(wrapper.variables) - len(backward_sgd.variables)]
        return [*own, *backward_sgd.state_variables]

    def save_own_variables(store):
        for i, variable in enumerate(state()):
            store[str(i)] = keras.ops.convert_to_numpy(variable.value)

    def load_own_variables(store):
        if not wrapper.built:
            # No variables to load into yet: Keras' own handling.
            return type(wrapper).load_own_variables(wrapper, store)
        variables = state()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Cannot load the state of optimizer '{wrapper.name}': the file holds "
                f"{len(store.keys())} variables for it and this LossScaleOptimizer "
                f"around a BackwardSGD has {len(variables)}. Load into a model of the "
                "same architecture compiled with the same optimizer settings. "
                f"Received: {len(store.keys())} variables"
            )
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])

    # Instance attributes: Keras' saving calls `save_own_variables(store)` on
    # the object it tracks, the user's own wrapper, whose class stays Keras'.
    wrapper.save_own_variables = save_own_variables
    wrapper.load_own_variables = load_own_variables
