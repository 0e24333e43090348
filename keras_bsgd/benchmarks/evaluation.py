"""`IterateProbe`: reads a method's evaluated iterate and its test-set logits."""

import keras
import numpy as np

from keras_bsgd.benchmarks.averaging import UniformAverage
from keras_bsgd.benchmarks.forward import compiled_call

AVERAGES = (None, "ema", "uniform", "schedule_free")
"""What `IterateProbe` can evaluate: the weights, or one of three averages."""


def schedule_free_x(optimizer, variables):
    """The averaged iterate `x` of a `keras.optimizers.ScheduleFreeAdamW`.

    Keras' schedule-free optimizer keeps the model at the interpolation
    `y = (1 - beta_1) * z + beta_1 * x`, holds `z` as its `momentum`
    variables, and has no `finalize_variable_values` of its own (Keras
    3.15): `fit()` ends with the model at `y`. Its authors evaluate at `x`
    (Defazio et al., 2024, `optimizer.eval()` in their code), which this
    recovers with Keras' own formula: `x = (y - (1 - beta_1) * z) / beta_1`.

    Args:
        optimizer: A built `ScheduleFreeAdamW`.
        variables: The model variables it trains.

    Returns:
        A list of NumPy arrays, `x` for each variable.
    """
    # Keras names the optimizer variable of model variable `a/b/c`
    # `a_b_c_momentum`; looked up by name through the public `variables`.
    by_name = {v.name: v for v in optimizer.variables}
    beta_1 = float(optimizer.beta_1)
    result = []
    for variable in variables:
        name = variable.path.replace("/", "_") + "_momentum"
        z = by_name.get(name)
        if z is None or tuple(z.shape) != tuple(variable.shape):
            raise ValueError(
                "The schedule-free optimizer has no momentum variable for a model "
                f"variable. Received: variable={variable.path!r}"
            )
        y = variable.numpy()
        result.append((y - (1.0 - beta_1) * z.numpy()) / beta_1)
    return result


def _batch_norm_layers(layer):
    found = [layer] if isinstance(layer, keras.layers.BatchNormalization) else []
    for child in getattr(layer, "layers", ()):
        found += _batch_norm_layers(child)
    return found


class IterateProbe:
    """The evaluated iterate of a training model: its weights and test logits.

    `average` chooses the evaluated iterate:

    * `None`: the model's weights;
    * `"ema"`: the moving average of an optimizer with `use_ema=True`. Keras
      copies it into the model only when `fit()` ends
      (`optimizer.finalize_variable_values`); the probe calls that same
      public method;
    * `"uniform"`: the uniform (Polyak, SWA) average of the weights after
      every step so far, kept by `observe()`, which must run after every
      step;
    * `"schedule_free"`: the averaged iterate `x` of a
      `keras.optimizers.ScheduleFreeAdamW` (`schedule_free_x`).

    An average is written into the model's trainable variables, read, and
    the training values are written back bit for bit. Before the first step
    there is no average yet, and the probe reads the weights. For a model
    with `BatchNormalization` the averaged weights get their own
    statistics, as SWA's and schedule-free's authors prescribe: given
    `recalibration_x`, one forward pass in training mode with the layers'
    momentum at 0 sets every moving mean and variance to that batch's, and
    they are restored afterwards too.

    Inside `fit()` on JAX the variables hold the training state only after
    something reads `callback.model` (Keras syncs it there), so a callback
    reads `self.model` before it probes.

    Args:
        model: A built Keras model that outputs logits.
        x: Test inputs, a NumPy array.
        batch_size: Examples per forward pass.
        average: One of `AVERAGES`. Defaults to `None`.
        jit_compile: Whether to XLA-compile the forward pass.
            Defaults to `False`.
        recalibration_x: Training inputs for the BatchNormalization
            statistics of an average, or `None` (the statistics tracked in
            training). Defaults to `None`.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> probe = IterateProbe(model, np.ones((5, 3), "float32"), batch_size=4)
    >>> weights, logits = probe.read()
    >>> weights.shape, logits.shape
    ((8,), (5, 2))
    """

    def __init__(
        self, model, x, batch_size, average=None, jit_compile=False, recalibration_x=None
    ):
        if average not in AVERAGES:
            raise ValueError(f"`average` must be one of {AVERAGES}. Received: average={average!r}")
        self.model, self.x = model, x
        self.batch_size, self.average = batch_size, average
        self._forward = compiled_call(model, training=False, jit_compile=jit_compile)
        self._uniform = UniformAverage(model.trainable_variables) if average == "uniform" else None
        self._batch_norms = _batch_norm_layers(model) if recalibration_x is not None else []
        self._recalibration_x = recalibration_x
        self._recalibrate = compiled_call(model, training=True, jit_compile=jit_compile)

    def observe(self):
        """Records the weights after a step (for the uniform average; else nothing)."""
        if self._uniform is not None:
            self._uniform.update()

    def _weights_and_logits(self):
        weights = np.concatenate(
            [np.asarray(v.numpy()).ravel() for v in self.model.trainable_variables]
        )
        logits = [
            self._forward(self.x[i : i + self.batch_size])
            for i in range(0, len(self.x), self.batch_size)
        ]
        return weights, np.concatenate(logits)

    def _average_values(self):
        """The average's values for the trainable variables, or `None` if there is none yet."""
        optimizer = getattr(self.model, "optimizer", None)  # None before compile().
        if self.average == "uniform":
            return self._uniform.mean() if self._uniform.count else None
        if optimizer is None or int(optimizer.iterations) == 0:
            return None
        variables = self.model.trainable_variables
        if self.average == "schedule_free":
            return schedule_free_x(optimizer, variables)
        training = [v.numpy() for v in variables]
        optimizer.finalize_variable_values(variables)  # Keras' own EMA copy.
        try:
            return [v.numpy() for v in variables]
        finally:
            for variable, value in zip(variables, training):
                variable.assign(value)

    def _set_batch_norm_statistics(self):
        momenta = [layer.momentum for layer in self._batch_norms]
        try:
            for layer in self._batch_norms:
                layer.momentum = 0.0  # Read when the pass is traced: the batch's statistics.
            self._recalibrate(self._recalibration_x)
        finally:
            for layer, momentum in zip(self._batch_norms, momenta):
                layer.momentum = momentum

    def read(self):
        """The evaluated iterate's flattened trainable weights and test logits.

        Returns:
            A tuple `(weights, logits)` of NumPy arrays: weights of shape
            `(parameters,)`, logits of shape `(examples, classes)`.
        """
        values = self._average_values() if self.average else None
        if values is None:
            return self._weights_and_logits()
        statistics = [v for layer in self._batch_norms
                      for v in (layer.moving_mean, layer.moving_variance)]
        variables = self.model.trainable_variables + statistics
        training = [v.numpy() for v in variables]
        try:
            for variable, value in zip(self.model.trainable_variables, values):
                variable.assign(np.asarray(value, variable.dtype))
            if self._batch_norms:
                self._set_batch_norm_statistics()
            return self._weights_and_logits()
        finally:
            for variable, value in zip(variables, training):
                variable.assign(value)
