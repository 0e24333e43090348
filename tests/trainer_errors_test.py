"""Misuse of the trainer: a clear error, and the training state left as it was."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bsgd
from tests.trajectories import as_dataset
from tests.trajectories import make_mlp
from tests.trajectories import make_stream

pytestmark = pytest.mark.tensorflow


def snapshot(model):
    return [np.array(v) for v in model.trainable_variables + model.optimizer.variables]


def assert_unchanged(model, before):
    after = snapshot(model)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)


def trained_model(window=2, steps=4):
    batches, params = make_stream(seed=0, num_batches=steps)
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=window), loss="mse")
    model.fit(as_dataset(batches), verbose=0)
    return model, batches


def test_batch_of_other_shape_or_dtype_is_rejected():
    model, batches = trained_model()
    before = snapshot(model)
    other_size = tf.data.Dataset.from_tensor_slices(
        (np.ones((16, 3), "float32"), np.ones((16, 2), "float32"))
    ).batch(8, drop_remainder=True)
    with pytest.raises(ValueError, match=r"holds batches of 4 examples.*a batch of 8 examples"):
        model.fit(other_size, verbose=0)
    assert_unchanged(model, before)
    other_dtype = tf.data.Dataset.from_tensor_slices(
        (np.ones((8, 3), "float64"), np.ones((8, 2), "float32"))
    ).batch(4, drop_remainder=True)
    with pytest.raises(ValueError, match=r"Received: a batch of .*\(4, 3\) float64"):
        model.fit(other_dtype, verbose=0)
    assert_unchanged(model, before)


def test_exact_mode_needs_a_capacity():
    batches, params = make_stream(seed=0, num_batches=4)
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1), loss="mse")
    endless = as_dataset(batches).repeat()
    with pytest.raises(ValueError, match=r"max_steps=\.\.\.\)`, `fit\(steps_per_epoch"):
        model.fit(endless, epochs=1, verbose=0, steps_per_epoch=None)


def test_exact_mode_capacity_checked_before_training_when_length_known():
    batches, params = make_stream(seed=0, num_batches=8)
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, max_steps=5), loss="mse")
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"holds 5 batches, and step 6.*max_steps.*window=w"):
        model.fit(as_dataset(batches), verbose=0)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_exact_mode_overflow_inside_the_run_stops_with_state_of_last_step():
    batches, params = make_stream(seed=0, num_batches=8)
    unknown_length = as_dataset(batches).filter(lambda x, y: True)
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, max_steps=5), loss="mse", jit_compile=True)
    with pytest.raises(ValueError, match=r"step 6 would need one more.*state of step 5"):
        model.fit(unknown_length, verbose=0)
    assert int(model.optimizer.iterations) == 5

    reference_model = make_mlp(params)
    reference_model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, max_steps=5), loss="mse")
    reference_model.fit(as_dataset(batches[:5]), verbose=0)
    for a, b in zip(model.get_weights(), reference_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_unsupported_strategy_is_refused_at_the_first_step():
    strategy = tf.distribute.experimental.CentralStorageStrategy()
    with strategy.scope():
        model = keras_bsgd.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    with pytest.raises(ValueError, match="Received: strategy=CentralStorageStrategy"):
        model.fit(np.ones((8, 3), "float32"), np.ones((8, 1), "float32"), batch_size=4, verbose=0)


def test_empty_data_and_zero_batch_size_are_rejected():
    batches, params = make_stream(seed=0, num_batches=2)
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1), loss="mse")
    with pytest.raises(ValueError, match="Received: a dataset of 0 batches"):
        model.fit(as_dataset(batches).take(0), verbose=0)
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        model.fit(np.ones((8, 3), "float32"), np.ones((8, 2), "float32"), batch_size=0, verbose=0)
    assert model.replay_buffer is None


def test_model_without_trainable_weights_trains_as_keras_on_a_dataset():
    # Keras trains it as a no-op (loss, metrics); tests/workflows_test.py
    # compares the logs and BatchNorm statistics with Keras' on arrays.
    batches, params = make_stream(seed=0, num_batches=2)
    model = make_mlp(params)
    model.trainable = False
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    before = model.get_weights()
    history = model.fit(as_dataset(batches), verbose=0)
    assert set(history.history) == {"loss"} and np.isfinite(history.history["loss"][0])
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert int(model.optimizer.iterations) == 0  # as Keras: no update applied


def test_integer_inputs_are_buffered_as_integers_and_train_like_floats():
    batches, params = make_stream(seed=0, num_batches=6)
    ints = [(np.round(x * 3).astype("int32"), y) for x, y in batches]
    floats = [(x.astype("float32"), y) for x, y in ints]
    finals, dtypes = [], []
    for stream in (ints, floats):
        model = make_mlp(params)
        model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=3), loss="mse")
        xs = np.concatenate([b[0] for b in stream])
        ys = np.concatenate([b[1] for b in stream]).astype("float32")
        model.fit(tf.data.Dataset.from_tensor_slices((xs, ys)).batch(4, drop_remainder=True),
                  verbose=0)
        finals.append(model.get_weights())
        dtypes.append(keras.tree.flatten(model.replay_buffer.spec)[0].dtype)
    assert dtypes == [tf.int32, tf.float32]
    for a, b in zip(*finals, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_empty_arrays_are_rejected():
    _, params = make_stream(seed=0, num_batches=1)
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    with pytest.raises(ValueError, match="Received: 0 samples"):
        model.fit(np.ones((0, 3), "float32"), np.ones((0, 2), "float32"), batch_size=4, verbose=0)


@pytest.mark.parametrize("replay_every", [1, 2])
def test_a_step_that_fails_inside_the_graph_keeps_the_state(replay_every):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.integers(0, 3, 32)
    model = keras_bsgd.Sequential([
        keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3),
    ])
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(0.1, window=3, momentum=0.5, replay_every=replay_every),
        loss="sparse_categorical_crossentropy", jit_compile=False,
    )
    model.fit(x, y, batch_size=4, verbose=0)
    before = snapshot(model)
    with pytest.raises(tf.errors.InvalidArgumentError, match="label"):
        model.fit(x, np.full_like(y, 7), batch_size=4, verbose=0)  # labels out of range
    assert_unchanged(model, before)
