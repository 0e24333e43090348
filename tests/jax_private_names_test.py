"""The private Keras names the JAX trainer uses (`keras_bsgd/backend/jax/keras_private.py`).

Each test fails, naming the name, if Keras changes it.
"""

import inspect

import keras
import numpy as np
import pytest

import keras_bsgd
from keras_bsgd.backend.jax import keras_private

pytestmark = pytest.mark.jax


def test_update_metrics_variables_is_keras_stateless_metric_update():
    from keras.src.backend.jax.trainer import JAXTrainer

    parameters = list(inspect.signature(JAXTrainer._update_metrics_variables).parameters)
    assert parameters == [
        "self", "metrics_variables", "unscaled_loss", "x", "y", "y_pred", "sample_weight"
    ]
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.build((None, 2))
    metrics = [v.value for v in model.metrics_variables]
    x, y = np.ones((4, 2), "float32"), np.zeros((4, 1), "float32")
    updated = keras_private.update_metrics(model, metrics, 3.0, x, y, model(x), None)
    # The loss tracker: a mean weighted by the batch size.
    assert sorted(float(v) for v in updated) == [4.0, 3.0 * 4]  # count, total


def test_jax_state_is_what_jax_state_sync_writes():
    from keras.src.backend.jax.trainer import JAXTrainer

    source = inspect.getsource(JAXTrainer.jax_state_sync)
    assert "_jax_state" in source and "_jax_state_synced" in source
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    state = (
        [np.full(v.shape, 7.0, v.dtype) for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    keras_private.hold_state(model, state)
    assert all(np.all(np.asarray(v.value) == 7.0) for v in model.trainable_variables)


def test_ema_averages_are_keras_moving_averages():
    optimizer = keras_bsgd.BackwardSGD(0.1, window=2, use_ema=True)
    variables = [keras.Variable(np.ones((2,), "float32"))]
    optimizer.build(variables)
    (average,) = keras_private.ema_averages(optimizer)
    average.assign([5.0, 6.0])
    optimizer.finalize_variable_values(variables)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variables[0]), [5.0, 6.0])


def test_symbolic_build_builds_the_model_and_compiled_loss_from_a_batch():
    from keras.src.trainers.trainer import Trainer

    assert "data_batch" in inspect.signature(Trainer._symbolic_build).parameters
    model = keras.Sequential([keras.layers.Dense(2)])  # lazily built
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    keras_private.build_from_batch(model, (np.ones((4, 3), "float32"), np.ones((4, 2), "float32"), None))
    assert model.built and model._compile_loss.built and model._compile_metrics.built
