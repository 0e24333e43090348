"""The private Keras/TensorFlow names the TensorFlow backend relies on
(`keras_bsgd/backend/tensorflow/keras_private.py`, and the two methods its
trainer overrides).

Each test fails, naming the name, if Keras or TensorFlow changes it.
"""

import inspect

import keras
import numpy as np
import pytest

import keras_bsgd
from keras_bsgd.backend.tensorflow import keras_private as tf_private

pytestmark = pytest.mark.tensorflow


def test_maybe_symbolic_build_takes_an_iterator_or_a_batch():
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    parameters = inspect.signature(TensorFlowTrainer._maybe_symbolic_build).parameters
    assert list(parameters) == ["self", "iterator", "data_batch"]


def test_loss_tracker_is_the_logged_loss_mean():
    model = keras_bsgd.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    assert isinstance(tf_private.loss_tracker(model), keras.metrics.Mean)
    assert tf_private.loss_tracker(model) in model.metrics


def test_trackable_children_takes_a_save_type():
    model = keras_bsgd.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    assert "_replay_state" in model._trackable_children("checkpoint")
    assert "_replay_state" not in model._trackable_children("savedmodel")


def test_the_default_strategy_class_name():
    import tensorflow as tf

    assert type(tf.distribute.get_strategy()).__name__ == tf_private.DEFAULT_STRATEGY_CLASS


def test_distribute_strategy_is_the_strategy_the_model_was_made_under():
    import tensorflow as tf

    assert tf_private.distribute_strategy(keras_bsgd.Sequential([keras.Input((2,))])) is None
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = keras_bsgd.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert tf_private.distribute_strategy(model) is strategy


def test_one_replica_runs_keras_clipping_and_weight_decay_parts():
    optimizer = keras_bsgd.BackwardSGD(0.1, window=2, clipnorm=1.0, weight_decay=0.1)
    variable = keras.Variable(np.ones((2,), "float32"))
    optimizer.build([variable])
    inner = optimizer.map_optimizer
    (clipped,) = tf_private.clip_gradients(inner, [keras.ops.convert_to_tensor([3.0, 4.0])])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clipped), [0.6, 0.8], rtol=1e-6)
    assert tf_private.uses_weight_decay(inner, variable)
    inner.exclude_from_weight_decay(var_list=[variable])
    assert not tf_private.uses_weight_decay(inner, variable)
