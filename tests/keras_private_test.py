"""The private Keras names the core uses (`keras_bsgd/keras_private.py`), on every backend.

Each test fails, naming the name, if Keras changes it.
"""

import inspect

import keras
import numpy as np
import pytest

import keras_bsgd
from keras_bsgd import keras_private


def test_functional_is_the_class_of_functional_models():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    assert isinstance(model, keras_private.Functional)
    assert isinstance(keras_bsgd.Model(inputs, keras.layers.Dense(1)(inputs)), keras_private.Functional)


def test_array_data_adapter_refuses_mismatched_cardinalities():
    x, y = np.ones((16, 2), "float32"), np.ones((8, 1), "float32")
    with pytest.raises(ValueError, match="same size|cardinality|sizes"):
        keras_private.ArrayDataAdapter(x, y)


def test_class_weight_to_sample_weights_is_keras_conversion():
    y = np.array([0, 1, 1, 2])
    weights = keras_private.class_weight_to_sample_weights(y, {0: 1.0, 1: 2.0, 2: 0.5})
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(weights), [1.0, 2.0, 2.0, 0.5])


def test_nested_layers_walks_nested_models_but_not_the_model():
    inner = keras.Sequential([keras.Input((6, 3)), keras.layers.Conv1D(2, 3)])
    outer = keras.Sequential([keras.Input((6, 3)), inner, keras.layers.Flatten()])
    layers = keras_private.nested_layers(outer)
    assert outer not in layers
    assert any(isinstance(layer, keras.layers.Conv1D) for layer in layers)


def test_symbolic_build_builds_the_model_and_compiled_loss_from_a_batch():
    from keras.src.trainers.trainer import Trainer

    assert "data_batch" in inspect.signature(Trainer._symbolic_build).parameters
    model = keras.Sequential([keras.layers.Dense(2)])  # lazily built
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    batch = (np.ones((4, 3), "float32"), np.ones((4, 2), "float32"), None)
    keras_private.build_from_batch(model, batch)
    assert model.built and model._compile_loss.built and model._compile_metrics.built


def test_ema_averages_are_keras_moving_averages_one_per_variable():
    optimizer = keras_bsgd.BackwardSGD(0.1, window=2, use_ema=True)
    variables = [keras.Variable(np.ones((2,), "float32"))]
    optimizer.build(variables)
    averages = keras_private.ema_averages(optimizer)
    assert len(averages) == len(variables) and averages[0].shape == variables[0].shape
    # Keras' own EMA reads them: finalize_variable_values copies them in.
    averages[0].assign([5.0, 6.0])
    optimizer.finalize_variable_values(variables)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variables[0]), [5.0, 6.0])
