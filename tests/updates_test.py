"""The private Keras names the TensorFlow backend's updates use: fails if Keras changes them."""

import keras
import numpy as np
import pytest

import keras_bsgd

pytestmark = pytest.mark.tensorflow


def built_map_optimizer(**kwargs):
    optimizer = keras_bsgd.BackwardSGD(0.1, window=2, **kwargs)
    variables = [keras.Variable(np.ones((2,), "float32"))]
    optimizer.build(variables)
    return optimizer, variables


def test_one_replica_runs_keras_clipping_and_weight_decay_parts():
    optimizer, (variable,) = built_map_optimizer(clipnorm=1.0, weight_decay=0.1)
    inner = optimizer.map_optimizer
    (clipped,) = inner._clip_gradients([keras.ops.convert_to_tensor([3.0, 4.0])])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clipped), [0.6, 0.8], rtol=1e-6)
    assert inner._use_weight_decay(variable)
    inner.exclude_from_weight_decay(var_list=[variable])
    assert not inner._use_weight_decay(variable)


def test_the_ema_is_keras_moving_averages_one_per_variable():
    optimizer, variables = built_map_optimizer(use_ema=True)
    averages = optimizer._model_variables_moving_average
    assert len(averages) == len(variables)
    assert averages[0].shape == variables[0].shape
    # Keras' own EMA reads them: finalize_variable_values copies them in.
    averages[0].assign([5.0, 6.0])
    optimizer.finalize_variable_values(variables)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variables[0]), [5.0, 6.0])
