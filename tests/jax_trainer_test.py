"""What only the JAX trainer has: one trace per run, an in-place ring buffer, a two-word count.

The behaviour both trainers share is tested in tests/backends_test.py, on each backend.
"""

import re

import keras
import numpy as np
import pytest

import keras_bsgd

pytestmark = pytest.mark.jax


def mlp():
    return keras_bsgd.Sequential(
        [keras.Input((3,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(2)]
    )


def data(n=48):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


@pytest.mark.parametrize(
    "settings",
    [dict(window=4), dict(max_steps=40), dict(window=3, replay_every=3, forward_steps=2)],
)
def test_the_step_is_traced_once_per_run(monkeypatch, settings):
    from keras_bsgd.backend.jax import step

    traces = {"train": 0, "replay": 0}
    train, replay = step.Step.train, step.Step.replay_to_current_step

    def counted_train(self, *args):
        traces["train"] += 1
        return train(self, *args)

    def counted_replay(self, *args):
        traces["replay"] += 1
        return replay(self, *args)

    monkeypatch.setattr(step.Step, "train", counted_train)
    monkeypatch.setattr(step.Step, "replay_to_current_step", counted_replay)
    model = mlp()
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, **settings), loss="mse", jit_compile=True)
    x, y = data(40)
    # Steps that replay, steps that do not, forward steps, the epoch-end
    # replays, and a second fit(): whether a step replays is a value.
    model.fit(x, y, batch_size=4, epochs=3, verbose=0, shuffle=False)
    model.fit(x, y, batch_size=4, verbose=0)
    assert traces["train"] == 1
    assert traces["replay"] <= 1


@pytest.mark.parametrize(
    "settings, index_buffering",
    [(dict(window=4, replay_every=2), True), (dict(max_steps=30), False),
     (dict(max_steps=30), True)],
    ids=["window", "exact", "exact-index-buffering"],
)
def test_the_ring_buffer_is_updated_in_place(settings, index_buffering):
    # XLA copies a donated buffer whole when a read of a slot must come
    # before the write to it: the step writes the new batch first.
    model = mlp()
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, **settings), loss="mse", jit_compile=True,
                  index_buffering=index_buffering)
    x, y = data()
    model.fit(x[:24], y[:24], batch_size=4, verbose=0, shuffle=False)
    state = model._get_jax_state(True, True, True, True)
    run = model.replay_buffer
    if model.data_store is None:
        batch = (x[:4], y[:4])
        shapes = [f"f32[{run.slots + 1},4,3]", f"f32[{run.slots + 1},4,2]"]
    else:  # the ring holds example indices; the store must not be copied either
        batch = (np.arange(4, dtype="int32"),)
        shapes = [f"s32[{run.slots + 1},4]", "f32[48,3]", "f32[48,2]"]
    hlo = model._compiled_step.lower(state, batch).compile().as_text()
    for shape in shapes:
        copies = [line for line in hlo.splitlines() if f"= {shape}" in line and " copy(" in line]
        assert not copies, copies
    # Every argument of the state is donated and aliased to its output.
    header = hlo.splitlines()[0]
    aliased = len(re.findall(r"may-alias", header))
    assert aliased == sum(len(group) for group in state)


@pytest.mark.parametrize("jit", [True, False])
def test_fit_releases_the_runs_variables_values_between_syncs_as_keras_does(jit):
    # Keras' fit() hands the variables' values to the stateless step and sets
    # them to None until `jax_state_sync()` (Keras'
    # test_fit_eval_flow_for_jax_model_weights): the run's, created in the
    # first step, too, so that no value is held twice without `jit`.
    held = []

    class Check(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            # `self._model`: `self.model` would sync the state into the variables.
            # After an epoch's last step the model holds the replayed iterate.
            if batch < 5:
                variables = self._model.optimizer.variables
                held.extend(v.name for v in variables if v._value is not None)

    model = mlp()
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=3), loss="mse", jit_compile=jit)
    x, y = data(24)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[Check()])
    assert held == []
    # Synced at the end: the run goes on from the values the step left.
    ring = model.optimizer.run_state.state.batches[0]
    assert np.asarray(ring.value).shape[1:] == (4, 3)
    model.fit(x, y, batch_size=4, verbose=0)


def test_gradient_evaluations_are_exact_past_int32():
    from keras_bsgd.backend.jax.run_state import EVALUATIONS_BASE
    from keras_bsgd.backend.jax.step import add_evaluations

    model = mlp()
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    x, y = data(8)
    model.fit(x, y, batch_size=4, verbose=0)
    run = model.replay_buffer
    # Exact mode's N(N+1)/2 at N = 100,000 steps.
    total = 100_000 * 100_001 // 2
    words = np.array([total % EVALUATIONS_BASE, total // EVALUATIONS_BASE], "int32")
    words = add_evaluations(keras.ops.convert_to_tensor(words), 100_001)
    run.evaluations.assign(words)
    assert model.gradient_evaluations == total + 100_001 > 2**32


def test_random_layer_keys_do_not_wrap_within_a_long_run():
    from keras_bsgd import random_layers

    # uint32 counters: 67 million batches before two maps share draws.
    assert 2**32 // random_layers.draws_per_map() >= 2**26


@pytest.mark.parametrize(
    "layer, warns", [(keras.layers.Dense, False), (keras.layers.Conv1D, True)], ids=["dense", "conv"]
)
def test_convolutions_on_a_cpu_warn_about_xla_cpu(layer, warns):
    import warnings

    model = keras_bsgd.Sequential(
        [keras.Input((6, 3)), layer(2, 3) if warns else layer(2), keras.layers.Flatten(),
         keras.layers.Dense(2)]
    )
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    x, y = np.ones((8, 6, 3), "float32"), np.ones((8, 2), "float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=4, verbose=0)
    assert any("XLA:CPU" in str(w.message) for w in caught) == warns
