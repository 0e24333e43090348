"""The private Keras/TensorFlow names the TensorFlow backend relies on, beyond `updates.py`'s.

Each test fails, naming the name, if Keras or TensorFlow changes it:
- `Trainer._maybe_symbolic_build(iterator, data_batch)`: overridden by the TF
  trainer to build the model from the first batch before the step is traced;
- `Trainer._loss_tracker`: the `Mean` of the logged loss the logging pass updates;
- `Model._trackable_children(save_type, ...)`: overridden to keep the run's
  Python state out of exported SavedModels;
- `_DefaultDistributionStrategy`: the class name of "no strategy", which has no
  public class (`replicas.check_strategy`);
- `keras.Layer._flatten_layers(include_self=False)`: the walk over nested
  layers (`keras_bsgd.xla_cpu`).
"""

import inspect

import keras
import pytest

import keras_bsgd
from keras_bsgd import xla_cpu

pytestmark = pytest.mark.tensorflow


def test_maybe_symbolic_build_takes_an_iterator_or_a_batch():
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    parameters = inspect.signature(TensorFlowTrainer._maybe_symbolic_build).parameters
    assert list(parameters) == ["self", "iterator", "data_batch"]


def test_loss_tracker_is_the_logged_loss_mean():
    model = keras_bsgd.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    assert isinstance(model._loss_tracker, keras.metrics.Mean)
    assert model._loss_tracker in model.metrics


def test_trackable_children_takes_a_save_type():
    model = keras_bsgd.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    assert "_replay_state" in model._trackable_children("checkpoint")
    assert "_replay_state" not in model._trackable_children("savedmodel")


def test_the_default_strategy_class_name():
    import tensorflow as tf

    assert type(tf.distribute.get_strategy()).__name__ == "_DefaultDistributionStrategy"


def test_flatten_layers_walks_nested_models():
    inner = keras.Sequential([keras.Input((6, 3)), keras.layers.Conv1D(2, 3)])
    outer = keras.Sequential([keras.Input((6, 3)), inner, keras.layers.Flatten()])
    assert xla_cpu.has_convolution(outer)
