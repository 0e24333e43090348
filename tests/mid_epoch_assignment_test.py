"""Weights a callback assigns between steps start a new run from them, on the active backend.

Keras honours a callback's assignment at a batch boundary (its
`trainer_test.py::test_callbacks_can_update_state_at_batch_boundary`); a
backward step restarts from the anchor, so every step compares the model's
weights and model state with what the last step left (`keras_bsgd.fingerprint`)
and starts a new run where they differ (docs/semantics.md, "Weights set from
outside start a new run").
"""

import keras
import numpy as np
import pytest

import keras_bsgd
from keras_bsgd.fingerprint import fingerprint
from tests import interrupted_test
from tests.interrupted_test import BATCH

BATCHES = 6

SETTINGS = {
    "window_1": dict(window=1, momentum=0.5),
    "window_3_momentum": dict(window=3, momentum=0.5),
    "exact_replay_every_2": dict(replay_every=2, max_steps=40),
    "window_3_forward_steps_2": dict(window=3, forward_steps=2),
}


class CounterModel(keras_bsgd.Model):
    """Keras' test model: a trainable counter no loss depends on, beside a Dense layer."""

    def __init__(self):
        super().__init__()
        self.train_counter = self.add_weight(shape=(), initializer="zeros")
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


class Count(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.model.train_counter.assign_add(1)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_a_counter_a_callback_adds_to_at_every_batch_end_counts_every_batch(setting, jit_compile):
    net = CounterModel()
    net.compile(
        optimizer=keras_bsgd.BackwardSGD(0.1, **SETTINGS[setting]), loss="mse",
        jit_compile=jit_compile,
    )
    net.fit(
        np.ones((4, 3)), np.ones((4, 3)), callbacks=[Count()], epochs=3, batch_size=1,
        verbose=0, validation_data=(np.ones((2, 3)), np.ones((2, 3))),
    )
    assert float(keras.ops.convert_to_numpy(net.train_counter)) == 12.0
    assert int(keras.ops.convert_to_numpy(net.optimizer.iterations)) == 12


def data(seed):
    return interrupted_test.data(seed, BATCHES)


def model(setting):
    return interrupted_test.model(keras_bsgd.BackwardSGD(0.1, **SETTINGS[setting]))


def other_weights(net, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=w.shape).astype("float32") for w in net.get_weights()]


class SetWeightsAfter(keras.callbacks.Callback):
    def __init__(self, batch, weights):
        super().__init__()
        self.batch, self.weights = batch, weights

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            self.model.set_weights(self.weights)


def values(net):
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in net.trainable_variables]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("setting", ["window_3_momentum", "exact_replay_every_2"])
def test_weights_set_mid_epoch_equal_a_new_run_between_fit_calls(setting, seed):
    """Random assignment points: one `fit()` equals two with `set_weights` between them."""
    x, y = data(seed)
    x2, y2 = data(50 + seed)
    at = int(np.random.default_rng(100 + seed).integers(0, BATCHES))
    if seed == 3:
        # The last batch: its assignment is seen at the epoch's end, before validation.
        at = BATCHES - 1
    split = (at + 1) * BATCH
    net = model(setting)
    weights = other_weights(net, seed)
    net.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, validation_data=(x2, y2),
            callbacks=[SetWeightsAfter(at, weights)])
    net.fit(x2, y2, batch_size=BATCH, shuffle=False, verbose=0)

    expected = model(setting)
    expected.fit(x[:split], y[:split], batch_size=BATCH, shuffle=False, verbose=0)
    expected.set_weights(weights)
    if split < len(x):
        expected.fit(x[split:], y[split:], batch_size=BATCH, shuffle=False, verbose=0)
    expected.fit(x2, y2, batch_size=BATCH, shuffle=False, verbose=0)

    for got, want in zip(values(net), values(expected)):
        np.testing.assert_array_equal(got, want)
    assert net.optimizer.run_state.steps_done(net.optimizer) == 2 * BATCHES - at - 1


def test_set_weights_between_train_on_batch_calls_starts_a_new_run():
    x, y = data(7)
    net, expected = model("window_3_momentum"), model("window_3_momentum")
    weights = other_weights(net, 7)
    for i in range(3):
        net.train_on_batch(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH])
    net.set_weights(weights)
    for i in range(3, BATCHES):
        net.train_on_batch(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH])

    expected.fit(x[: 3 * BATCH], y[: 3 * BATCH], batch_size=BATCH, shuffle=False, verbose=0)
    expected.set_weights(weights)
    expected.fit(x[3 * BATCH:], y[3 * BATCH:], batch_size=BATCH, shuffle=False, verbose=0)
    for got, want in zip(values(net), values(expected)):
        np.testing.assert_array_equal(got, want)


class Read(keras.callbacks.Callback):
    # On JAX, `self.model` puts the state in the variables (jax_state_sync).
    def on_train_batch_end(self, batch, logs=None):
        self.model.get_weights()


def test_without_assignments_no_step_starts_a_new_run():
    x, y = data(3)
    net = model("window_3_momentum")
    net.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, epochs=2, callbacks=[Read()])
    assert net.optimizer.run_state.steps_done(net.optimizer) == 2 * BATCHES


def test_keras_ema_at_the_end_of_fit_is_not_taken_for_an_assignment():
    x, y = data(4)
    net = keras_bsgd.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    net.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=3, use_ema=True), loss="mse",
                jit_compile=False)
    net.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    net.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    assert net.optimizer.run_state.steps_done(net.optimizer) == 2 * BATCHES


def reference_fingerprint(arrays):
    """`fingerprint` in NumPy (one group): unsigned words in order times odd positions, modulo 2**32."""
    words = np.concatenate([
        (a.astype("uint8") if a.dtype == bool else np.ascontiguousarray(a).view(
            f"uint{8 * min(a.itemsize, 4)}")).reshape(-1).astype("uint64")
        for a in arrays
    ])
    total = int((words * (2 * np.arange(words.size, dtype="uint64") + 1)).sum()) % 2**32
    return int(np.array(total, "uint32").view("int32"))


def test_fingerprint_matches_its_numpy_definition_and_sees_every_element():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(17, 5)).astype("float32"), np.array([True, False]),
              rng.normal(size=(4,)).astype("float16"), np.arange(-3, 3, dtype="int32")]
    assert int(fingerprint(arrays)) == reference_fingerprint(arrays)
    before = int(fingerprint(arrays))
    for i in range(arrays[0].size):
        changed = [a.copy() for a in arrays]
        changed[0].reshape(-1)[i] = np.nextafter(changed[0].reshape(-1)[i], np.float32(np.inf))
        assert int(fingerprint(changed)) != before
    swapped = [a.copy() for a in arrays]
    swapped[3][[0, 1]] = swapped[3][[1, 0]]
    assert int(fingerprint(swapped)) != before
    assert int(fingerprint(arrays[::-1])) != before


def test_fingerprint_groups_chain_where_positions_would_pass_int32():
    from keras_bsgd import fingerprint as module

    words = [np.arange(n, dtype="int32") for n in (3, 4, 2)]
    assert [[len(w) for w in c] for c in module._chunks(words, size=6)] == [[3], [4], [2]]
    assert [[len(w) for w in c] for c in module._chunks(words, size=8)] == [[3, 4], [2]]
