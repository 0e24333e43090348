"""The trainer of the active backend against the float64 reference, the closed forms and Keras.

Every test here feeds NumPy arrays and reads state through `keras.ops`, so it
runs unchanged on TensorFlow and on JAX (`KERAS_BACKEND`); CI runs the suite
once per backend.
"""

import keras
import numpy as np
import pytest

import keras_bsgd
from keras_bsgd import random_layers
from tests import keras_reference
from tests import reference

LEARNING_RATE = 0.1
SGD_SETTINGS = {
    "plain": dict(momentum=0.0),
    "momentum": dict(momentum=0.5),
    "nesterov": dict(momentum=0.5, nesterov=True),
}


def numpy(variable):
    return np.array(keras.ops.convert_to_numpy(variable))


class Recorder(keras.callbacks.Callback):
    """Records the trainable weights, momentum slots and logs after every step."""

    def __init__(self):
        super().__init__()
        self.states, self.logs = [], []

    def on_train_batch_end(self, batch, logs=None):
        model = self.model
        self.states.append(
            {
                "params": [numpy(v) for v in model.trainable_variables],
                "momentum": [numpy(m) for m in getattr(model.optimizer, "momentums", [])],
            }
        )
        self.logs.append({k: float(v) for k, v in (logs or {}).items()})


def make_stream(seed, num_batches, batch_size=4):
    rng = np.random.default_rng(seed)
    batches = [
        (rng.normal(size=(batch_size, 3)), rng.normal(size=(batch_size, 2)))
        for _ in range(num_batches)
    ]
    return batches, reference.init_mlp(rng, 3, 5, 2)


def make_mlp(params, model_class=keras_bsgd.Sequential):
    model = model_class(
        [
            keras.Input((3,)),
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.Dense(2),
        ]
    )
    model.set_weights([p.astype("float32") for p in params])
    return model


def arrays(batches):
    return tuple(np.concatenate([b[i] for b in batches]).astype("float32") for i in (0, 1))


def fit(model, optimizer, batches, jit_compile=True, epochs=1, **fit_kwargs):
    """Compiles `model` with `optimizer` and fits it over `batches` in order; returns a Recorder."""
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    recorder = Recorder()
    x, y = arrays(batches)
    model.fit(
        x, y, batch_size=len(batches[0][0]), epochs=epochs, shuffle=False, verbose=0,
        callbacks=[recorder], **fit_kwargs,
    )
    return recorder


def max_error(states, expected):
    return max(
        np.abs(a - b).max()
        for s, e in zip(states, expected, strict=True)
        for a, b in zip(s["params"] + s["momentum"], e["params"] + e["momentum"], strict=True)
    )


def assert_bitwise(states, expected):
    for s, e in zip(states, expected, strict=True):
        for a, b in zip(s["params"] + s["momentum"], e["params"] + e["momentum"], strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("jit_compile", [True, False])
@pytest.mark.parametrize("sgd", SGD_SETTINGS)
@pytest.mark.parametrize("window", [1, 2, 5, None])
def test_trajectory_matches_float64_reference(window, sgd, jit_compile):
    num_steps = 14  # wraps window 5's ring twice
    batches, params = make_stream(1, num_steps)
    settings = SGD_SETTINGS[sgd]
    expected = reference.backward_sgd(
        reference.initial_state(params, settings["momentum"]), batches,
        [LEARNING_RATE] * num_steps, window=window, **settings,
    )
    optimizer = keras_bsgd.BackwardSGD(LEARNING_RATE, window=window, **settings)
    recorder = fit(make_mlp(params), optimizer, batches, jit_compile)
    assert max_error(recorder.states, expected) <= 1e-6
    assert int(numpy(optimizer.iterations)) == num_steps


@pytest.mark.parametrize(
    "window, forward_steps, replay_every",
    [(None, 4, 1), (3, 4, 1), (None, 0, 3), (4, 0, 3), (3, 2, 2), (None, 3, 4)],
)
def test_forward_steps_and_replay_every_match_reference(window, forward_steps, replay_every):
    num_steps = 13
    batches, params = make_stream(2, num_steps)
    iterates = reference.warm_backward_sgd(
        reference.initial_state(params, 0.5), batches, [LEARNING_RATE] * num_steps,
        window, forward_steps, momentum=0.5,
    )
    # Forward steps and the epoch's last step are replayed too.
    replayed = set(range(1, forward_steps + 1)) | {num_steps}
    expected = reference.observed(iterates, replay_every, replayed)
    initial = reference.initial_state(params, 0.5)
    expected = [initial if e is None else e for e in expected]
    model = make_mlp(params)
    optimizer = keras_bsgd.BackwardSGD(
        LEARNING_RATE, momentum=0.5, window=window, forward_steps=forward_steps,
        replay_every=replay_every,
    )
    recorder = fit(model, optimizer, batches)
    assert max_error(recorder.states, expected) <= 1e-6
    assert model.replayed_step == num_steps


@pytest.mark.parametrize(
    "settings, after_construction",
    [
        (dict(momentum=0.9, weight_decay=0.05, clipnorm=0.1), {}),
        (dict(momentum=0.5, nesterov=True, global_clipnorm=0.2), dict(clipvalue=0.01)),
        (dict(weight_decay=0.1, loss_scale_factor=4.0), dict(weight_decay=0.3)),
        (dict(), dict(momentum=0.9, nesterov=True)),
    ],
)
def test_window_one_applies_keras_sgd_update_bitwise(settings, after_construction):
    batches, params = make_stream(4, 12)
    recorders = []
    for model, optimizer in [
        (make_mlp(params), keras_bsgd.BackwardSGD(LEARNING_RATE, window=1, **settings)),
        (make_mlp(params, keras.Sequential), keras.optimizers.SGD(LEARNING_RATE, **settings)),
    ]:
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        for name, value in after_construction.items():
            setattr(optimizer, name, value)
        recorders.append(fit(model, optimizer, batches))
    ours, keras_sgd = recorders
    assert_bitwise(ours.states, keras_sgd.states)
    assert ours.logs == keras_sgd.logs


def test_long_window_equals_exact_mode():
    batches, params = make_stream(3, 16)
    windowed = fit(make_mlp(params), keras_bsgd.BackwardSGD(0.1, window=16), batches)
    exact = fit(make_mlp(params), keras_bsgd.BackwardSGD(0.1), batches)
    assert max_error(windowed.states, exact.states) <= 1e-6


def test_schedule_is_frozen_per_map_at_arrival():
    batches, params = make_stream(4, 12)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.2, decay_steps=1, decay_rate=0.8)
    rates = [float(schedule(k)) for k in range(12)]
    expected = reference.backward_sgd(
        reference.initial_state(params, 0.0), batches, rates, window=3
    )
    optimizer = keras_bsgd.BackwardSGD(schedule, window=3)
    recorder = fit(make_mlp(params), optimizer, batches)
    assert max_error(recorder.states, expected) <= 1e-6
    assert int(numpy(optimizer.iterations)) == 12


def test_logged_loss_is_the_new_batch_at_the_previous_iterate():
    batches, params = make_stream(6, 5)
    expected = reference.backward_sgd(
        reference.initial_state(params, 0.0), batches, [0.1] * 5, window=2
    )
    previous = [reference.initial_state(params, 0.0)] + expected[:-1]
    recorder = fit(make_mlp(params), keras_bsgd.BackwardSGD(0.1, window=2), batches)
    per_batch = [reference.mlp_loss_and_grads(s["params"], *b)[0] for s, b in zip(previous, batches)]
    running = np.cumsum(per_batch) / np.arange(1, 6)  # Keras logs the epoch's running mean
    np.testing.assert_allclose([log["loss"] for log in recorder.logs], running, rtol=1e-5)
    assert set(recorder.logs[0]) == {"loss"}


@pytest.mark.parametrize(
    "window, replay_every, forward_steps, expected",
    [
        (None, 1, 0, sum(range(1, 21))),  # N(N+1)/2
        (4, 1, 0, 1 + 2 + 3 + 4 + 16 * 5),  # min(k, w), + 1 once k > w
        (None, 5, 0, 5 + 10 + 15 + 20),  # only the replayed steps
        (None, 1, 8, 8 + sum(range(1, 13))),  # forward steps cost one each
        (3, 1, 8, 8 + 1 + 2 + 3 + 9 * 4),
    ],
)
def test_gradient_evaluations_follow_the_formulas(window, replay_every, forward_steps, expected):
    batches, params = make_stream(5, 20)
    model = make_mlp(params)
    fit(model, keras_bsgd.BackwardSGD(
        0.05, window=window, replay_every=replay_every, forward_steps=forward_steps
    ), batches)
    assert model.gradient_evaluations == expected


def test_ema_averages_the_output_iterates():
    batches, params = make_stream(7, 10)
    model = make_mlp(params)
    optimizer = keras_bsgd.BackwardSGD(0.1, window=3, use_ema=True, ema_momentum=0.7)
    recorder = fit(model, optimizer, batches)
    ema = recorder.states[0]["params"]
    for state in recorder.states[1:]:
        ema = [0.7 * e + 0.3 * p for e, p in zip(ema, state["params"])]
    # fit() ends by copying the EMA into the model (Keras' finalize_variable_values).
    for e, v in zip(ema, model.trainable_variables, strict=True):
        np.testing.assert_allclose(numpy(v), e, rtol=1e-5, atol=1e-6)


# Closed forms of docs/design.md §1 on a one-parameter model: batch loss (θ - a)²/2.


def scalar_trajectory(targets, optimizer, theta0=0.0):
    model = keras_bsgd.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    model.set_weights([np.array([[theta0]], "float32")])
    model.compile(
        optimizer=optimizer, loss=lambda y, p: 0.5 * keras.ops.square(y - p), jit_compile=True
    )
    recorder = Recorder()
    x = np.ones((len(targets), 1), "float32")
    y = np.asarray(targets, "float32")[:, None]
    model.fit(x, y, batch_size=1, shuffle=False, verbose=0, callbacks=[recorder])
    return np.array([s["params"][0][0, 0] for s in recorder.states])


def test_e2_two_alternating_batches():
    h, a, b = 0.5, 1.0, 3.0
    targets = [a, b] * 20
    backward = scalar_trajectory(targets, keras_bsgd.BackwardSGD(h))
    forward = scalar_trajectory(targets, keras_bsgd.BackwardSGD(h, window=1))
    fixed_ab = (a + (1 - h) * b) / (2 - h)
    fixed_ba = ((1 - h) * a + b) / (2 - h)
    np.testing.assert_allclose(backward[-4:], fixed_ab, atol=1e-6)
    np.testing.assert_allclose(forward[-4:], [fixed_ab, fixed_ba] * 2, atol=1e-6)


def test_e1_backward_settles_within_a_run_forward_keeps_its_spread():
    h, sigma, steps = 0.2, 1.0, 250
    targets = np.random.default_rng(7).normal(1.0, sigma, 2000)
    backward = scalar_trajectory(targets[:steps], keras_bsgd.BackwardSGD(h), theta0=5.0)
    forward = scalar_trajectory(targets, keras_bsgd.BackwardSGD(h, window=1), theta0=5.0)
    k = np.arange(1, steps + 1)
    decay = (1 - h) ** np.arange(steps)
    closed = (1 - h) ** k * 5.0 + h * np.array([np.dot(decay[:n], targets[:n]) for n in k])
    np.testing.assert_allclose(backward, closed, rtol=1e-5, atol=1e-5)
    assert np.std(backward[200:]) < 1e-5
    stationary_std = np.sqrt(h * sigma**2 / (2 - h))
    assert abs(np.std(forward[200:]) / stationary_std - 1) < 0.15


# The whole training state: BatchNorm statistics and random layers.


def random_layers_model(model_class):
    keras.utils.set_random_seed(0)
    return model_class(
        [
            keras.Input((6,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(momentum=0.8),
            keras.layers.Activation("tanh"),
            keras.layers.Dropout(0.3, seed=11),
            keras.layers.GaussianNoise(0.1, seed=12),
            keras.layers.Dense(3),
        ]
    )


@pytest.mark.parametrize("window", [None, 4])
def test_batchnorm_and_random_layers_match_plain_keras_composition(window):
    batches = [
        dict(x=b[0].astype("float32"), y=b[1].astype("float32"))
        for b in (
            (np.random.default_rng(i).normal(size=(8, 6)), np.random.default_rng(100 + i).normal(size=(8, 3)))
            for i in range(10)
        )
    ]
    ours = random_layers_model(keras_bsgd.Sequential)
    plain = random_layers_model(keras.Sequential)
    plain.set_weights(ours.get_weights())
    ours.compile(optimizer=keras_bsgd.BackwardSGD(0.1, momentum=0.5, window=window), loss="mse")
    keep = [i for i, v in enumerate(ours.variables) if v.name != "seed_generator_state"]
    states = []

    class VariableRecorder(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            # self.model, not `ours`: on JAX it puts the step's state in the variables.
            states.append([numpy(self.model.variables[i]) for i in keep])

    ours.fit(
        np.concatenate([b["x"] for b in batches]), np.concatenate([b["y"] for b in batches]),
        batch_size=8, shuffle=False, verbose=0, callbacks=[VariableRecorder()],
    )
    expected = keras_reference.backward_states(
        plain, keras.optimizers.SGD(0.1, momentum=0.5), batches, window=window,
        draws_per_map=random_layers.draws_per_map(),
    )
    for step, (a, b) in enumerate(zip(states, expected, strict=True)):
        for x, y in zip(a, [b[i] for i in keep], strict=True):
            assert np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-3) <= 1e-5, step


# What fails, fails loudly and keeps the state.


def test_nonfinite_batch_is_skipped_with_the_state_unchanged():
    batches, params = make_stream(8, 8)
    poisoned = list(batches)
    poisoned[4] = (np.full_like(batches[4][0], np.nan), batches[4][1])
    model = make_mlp(params)
    recorder = fit(model, keras_bsgd.BackwardSGD(0.1, window=3), poisoned)
    clean = [b for i, b in enumerate(batches) if i != 4]
    expected = reference.backward_sgd(reference.initial_state(params, 0.0), clean, [0.1] * 7, 3)
    # The poisoned step leaves the state of the step before.
    assert max_error(recorder.states[:4] + recorder.states[5:], expected) <= 1e-6
    assert max_error([recorder.states[4]], [expected[3]]) <= 1e-6
    assert model.skipped_batches == 1
    assert int(numpy(model.optimizer.iterations)) == 7


def test_nonfinite_batch_raises_with_the_state_of_the_step_before():
    batches, params = make_stream(8, 8)
    batches[4] = (np.full_like(batches[4][0], np.inf), batches[4][1])
    model = make_mlp(params)
    optimizer = keras_bsgd.BackwardSGD(0.1, window=3, on_nonfinite="raise")
    with pytest.raises(ValueError, match="step 5 has a non-finite value"):
        fit(model, optimizer, batches)
    expected = reference.backward_sgd(reference.initial_state(params, 0.0), batches[:4], [0.1] * 4, 3)
    weights = {"params": [numpy(v) for v in model.trainable_variables], "momentum": []}
    assert max_error([weights], expected[-1:]) <= 1e-6
    assert int(numpy(optimizer.iterations)) == 4


def test_divergence_raises_and_the_model_holds_the_anchor():
    # A loss with a constant gradient: each map moves the weight by 1e38, so
    # the 4-map replay of step 4 leaves float32 (max 3.4e38) while every
    # logged loss is still finite.
    model = keras_bsgd.Sequential(
        [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    model.compile(optimizer=keras_bsgd.BackwardSGD(1e38, window=8),
                  loss=lambda y, p: -keras.ops.mean(p))
    ones = np.ones((16, 1), "float32")
    with pytest.raises(FloatingPointError, match="diverged at step 4"):
        model.fit(ones, ones, batch_size=1, verbose=0)
    # The anchor: S_0, which no map of a window of 8 has moved yet.
    np.testing.assert_array_equal(numpy(model.trainable_variables[0]), [[0.0]])
    # The next fit() starts a new run from it.
    model.fit(ones[:2], ones[:2], batch_size=1, verbose=0)
    np.testing.assert_allclose(numpy(model.trainable_variables[0]), [[2e38]], rtol=1e-6)


def test_a_larger_first_batch_is_refused_with_the_state_kept():
    # On JAX, Keras' fit() has released the variables' values by then, and
    # syncs back only a state that a step returned.
    batches, params = make_stream(10, 6)
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    x, y = arrays(batches)
    model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    before = [numpy(v) for v in model.variables]
    step = int(numpy(model.optimizer.iterations))
    larger = (x[:8].astype("float32"), y[:8].astype("float32"))
    with pytest.raises(ValueError, match="holds batches of 4 examples.*a batch of 8 examples"):
        model.fit((b for b in [larger]), verbose=0)
    after = [numpy(v) for v in model.variables]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(numpy(model.optimizer.iterations)) == step
    model.fit(x, y, batch_size=4, shuffle=False, verbose=0)  # the run goes on
    assert int(numpy(model.optimizer.iterations)) == step + len(batches)


def test_weights_set_from_outside_start_a_new_run():
    batches, params = make_stream(11, 10)
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1), loss="mse")
    x, y = arrays(batches)
    model.fit(x[:20], y[:20], batch_size=4, shuffle=False, verbose=0)
    restart = [p * 0.5 for p in params]
    model.set_weights([p.astype("float32") for p in restart])
    recorder = Recorder()
    model.fit(x[20:], y[20:], batch_size=4, shuffle=False, verbose=0, callbacks=[recorder])
    # Exact backward-SGD from the weights set, over the batches after them only.
    expected = reference.backward_sgd(reference.initial_state(restart, 0.0), batches[5:], [0.1] * 5)
    assert max_error(recorder.states, expected) <= 1e-6


def test_exact_mode_refuses_a_fit_beyond_its_capacity_before_any_step():
    batches, params = make_stream(12, 6)
    model = make_mlp(params)
    with pytest.raises(ValueError, match="holds 4 batches"):
        fit(model, keras_bsgd.BackwardSGD(0.1, max_steps=4), batches)
    assert int(numpy(model.optimizer.iterations)) == 0


@pytest.mark.parametrize("window", [3, None])
def test_tf_data_input_matches_reference(window):
    # On JAX through Keras' own adapter, which needs TensorFlow installed.
    tf = pytest.importorskip("tensorflow")
    batches, params = make_stream(13, 10)
    x, y = arrays(batches)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4, drop_remainder=True)
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=window, max_steps=None if window else 10), loss="mse")
    recorder = Recorder()
    model.fit(dataset, verbose=0, callbacks=[recorder])
    expected = reference.backward_sgd(reference.initial_state(params, 0.0), batches, [0.1] * 10, window)
    assert max_error(recorder.states, expected) <= 1e-6


def test_an_error_in_the_users_loss_keeps_the_state():
    batches, params = make_stream(14, 4)
    model = make_mlp(params)
    calls = []

    def loss(y_true, y_pred):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("a bug in the loss")
        return keras.ops.mean(keras.ops.square(y_true - y_pred))

    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss=loss)
    x, y = arrays(batches)
    with pytest.raises(RuntimeError, match="a bug in the loss"):
        model.fit(x, y, batch_size=4, verbose=0)
    # The first fit() step traced the loss (and failed): the weights are the model's own.
    for v, p in zip(model.trainable_variables, params, strict=True):
        np.testing.assert_array_equal(numpy(v), p.astype("float32"))


def index_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), dtype="uint8")
    hidden = keras.layers.Dense(6, activation="tanh")(keras.layers.Rescaling(1 / 255)(inputs))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dropout(0.2)(hidden))
    return keras_bsgd.Model(inputs, keras.layers.Dense(3)(hidden))


def index_data(seed, n):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 4)).astype("uint8"), rng.integers(0, 3, n)


@pytest.mark.parametrize(
    "fit_kwargs",
    [
        dict(epochs=2),
        dict(validation_split=0.5, epochs=2),
        dict(class_weight={0: 1.0, 1: 3.0, 2: 0.5}),
        dict(sample_weight=np.random.default_rng(2).uniform(0.5, 2.0, 48)),
    ],
    ids=["shuffle", "validation_split", "class_weight", "sample_weight"],
)
def test_index_buffering_equals_buffering_whole_batches(fit_kwargs):
    x, y = index_data(0, 48)
    other = index_data(7, 16)
    runs = []
    for index_buffering in (True, False):
        model = index_model()
        model.compile(
            optimizer=keras_bsgd.BackwardSGD(0.05, momentum=0.5, max_steps=40),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            index_buffering=index_buffering,
        )
        logs = []
        # A second fit() on other arrays of the same layout (weights too).
        weights = {k: v for k, v in fit_kwargs.items() if k == "class_weight"}
        if "sample_weight" in fit_kwargs:
            weights["sample_weight"] = np.linspace(0.5, 2.0, 16)
        for data, kwargs in [((x, y), fit_kwargs), (other, weights)]:
            keras.utils.set_random_seed(1)  # the same shuffles for both runs
            logs.append(model.fit(*data, batch_size=8, verbose=0, **kwargs).history)
        assert (model.data_store is not None) == index_buffering
        runs.append(([numpy(v) for v in model.variables], logs))
    (indexed, indexed_logs), (batched, batched_logs) = runs
    for a, b in zip(indexed, batched, strict=True):
        np.testing.assert_array_equal(a, b)
    assert indexed_logs == batched_logs
