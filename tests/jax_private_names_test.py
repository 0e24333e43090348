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


def test_fit_and_train_on_batch_build_the_optimizer_in_symbolic_build():
    # keras_bsgd's trainer overrides `_symbolic_build` to hand a lazily built
    # model's state to the optimizer Keras builds there (on TensorFlow,
    # keras_bsgd's own `_maybe_symbolic_build` calls it before Keras would).
    calls = []

    class Counting(keras.Sequential):
        def _symbolic_build(self, *args, **kwargs):
            calls.append(self.optimizer.built)
            super()._symbolic_build(*args, **kwargs)
            calls.append(self.optimizer.built)

    x, y = np.ones((4, 3), "float32"), np.ones((4, 2), "float32")
    for train in ("fit", "train_on_batch"):
        model = Counting([keras.layers.Dense(2)])
        model.compile(optimizer="sgd", loss="mse")
        getattr(model, train)(x, y)
        assert calls[:2] == [False, True], train
        calls.clear()


def test_keras_fit_releases_a_variable_by_setting_its_value_to_none():
    from keras.src.backend.jax.trainer import JAXTrainer

    assert "v._value = None" in inspect.getsource(JAXTrainer._purge_model_variables)
    variable = keras.Variable(np.ones((2,), "float32"))
    keras_private.release_values([variable])
    assert variable._value is None
    variable.assign(np.full((2,), 3.0, "float32"))  # what jax_state_sync() does
    assert np.all(np.asarray(variable.value) == 3.0)
