"""The private Keras contract behind keyed random layers: fails if Keras changes it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_bsgd import random_layers

pytestmark = pytest.mark.tensorflow


def dropout_layer_state():
    layer = keras.layers.Dropout(0.5, seed=7)
    layer.build((4, 8))
    states = [v for v in layer.variables if random_layers.is_seed_state(v)]
    return layer, states


def test_a_random_layer_holds_one_seed_state_of_seed_and_counter():
    layer, states = dropout_layer_state()
    assert len(states) == 1
    state = states[0]
    assert state.shape == (2,) and not state.trainable
    # The counter advances by one per draw; the seed stays.
    before = state.numpy().copy()
    layer(tf.ones((4, 8)), training=True)
    after = state.numpy()
    assert after[0] == before[0] and after[1] == before[1] + 1


def test_draws_are_a_function_of_the_state_that_keying_sets():
    layer, (state,) = dropout_layer_state()
    x = tf.ones((4, 8))
    random_layers.key_to_batch([state], tf.constant(3, "int64"))
    first = layer(x, training=True).numpy()
    layer(x, training=True)  # moves the counter on
    random_layers.key_to_batch([state], tf.constant(3, "int64"))
    again = layer(x, training=True).numpy()
    random_layers.key_to_batch([state], tf.constant(4, "int64"))
    other = layer(x, training=True).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert state.numpy()[1] == 4 * random_layers.draws_per_map() + 1
