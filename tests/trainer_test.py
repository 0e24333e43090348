"""The replaying trainer against the float64 reference, closed forms and Keras SGD."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bsgd
from keras_bsgd.backend.tensorflow import xla_units
from tests import reference
from tests.trajectories import EXECUTION_MODES
from tests.trajectories import as_dataset
from tests.trajectories import assert_states_equal
from tests.trajectories import make_mlp
from tests.trajectories import make_stream
from tests.trajectories import max_relative_error
from tests.trajectories import run

pytestmark = pytest.mark.tensorflow

NUM_STEPS = 30
LEARNING_RATE = 0.1
SGD_SETTINGS = {
    "plain": dict(momentum=0.0),
    "momentum": dict(momentum=0.5),
    "nesterov": dict(momentum=0.5, nesterov=True),
}


# "xla" compiles each map's pass (what xla_unit="auto" picks on CPU for a
# model with convolutions); "xla_step" compiles the whole step (what it
# picks otherwise). Every mode runs
# the same Python code, so the slower modes check the richest update rule.
REFERENCE_CASES = [
    (mode, sgd)
    for mode in [*EXECUTION_MODES, "xla_step"]
    for sgd in SGD_SETTINGS
    if mode in ("graph", "xla") or sgd == "nesterov"
]


@pytest.mark.parametrize("mode, sgd", REFERENCE_CASES)
@pytest.mark.parametrize("window", [1, 2, 5, None])
def test_trajectory_matches_float64_reference(mode, window, sgd):
    # Eager mode runs the same code one op at a time (exact mode took 10 s
    # over 30 steps); 12 steps still wrap the largest window's ring buffer twice.
    num_steps = 12 if mode == "eager" else NUM_STEPS
    batches, params = make_stream(seed=1, num_batches=num_steps)
    settings = SGD_SETTINGS[sgd]
    expected = reference.backward_sgd(
        reference.initial_state(params, settings["momentum"]),
        batches,
        [LEARNING_RATE] * num_steps,
        window=window,
        **settings,
    )
    xla_unit = "step" if mode == "xla_step" else "map"
    optimizer = keras_bsgd.BackwardSGD(LEARNING_RATE, window=window, **settings)
    states = run(
        make_mlp(params), optimizer, batches, mode.removesuffix("_step"), xla_unit=xla_unit
    )

    assert len(states) == num_steps
    errors = [max_relative_error(s, e) for s, e in zip(states, expected)]
    assert max(errors) <= 1e-5, errors
    assert int(optimizer.iterations) == num_steps


def test_backward_differs_from_forward():
    # Guards the reference comparison above: the orders really differ here.
    batches, params = make_stream(seed=1, num_batches=NUM_STEPS)
    state0 = reference.initial_state(params, 0.0)
    rates = [LEARNING_RATE] * NUM_STEPS
    forward = reference.forward_sgd(state0, batches, rates)[-1]
    backward = reference.backward_sgd(state0, batches, rates)[-1]
    assert max_relative_error(backward, forward) > 1e-2


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_window_one_equals_keras_sgd(momentum):
    batches, params = make_stream(seed=2, num_batches=NUM_STEPS)
    ours = run(
        make_mlp(params),
        keras_bsgd.BackwardSGD(LEARNING_RATE, momentum=momentum, window=1),
        batches,
    )
    keras_sgd = run(
        make_mlp(params, keras.Sequential),
        keras.optimizers.SGD(LEARNING_RATE, momentum=momentum),
        batches,
    )
    for a, b in zip(ours, keras_sgd, strict=True):
        assert max_relative_error(a, b) <= 1e-6


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
    # Every map goes through Keras SGD's own apply(): unscaling, clipping,
    # weight decay (with its exclusions) and the rule, with settings changed
    # after construction too.
    batches, params = make_stream(seed=4, num_batches=12)
    states = []
    for model, optimizer in [
        (make_mlp(params), keras_bsgd.BackwardSGD(LEARNING_RATE, window=1, **settings)),
        (make_mlp(params, keras.Sequential), keras.optimizers.SGD(LEARNING_RATE, **settings)),
    ]:
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        for name, value in after_construction.items():
            setattr(optimizer, name, value)
        states.append(run(model, optimizer, batches))
    assert_states_equal(*states)


def test_long_window_equals_exact_mode():
    batches, params = make_stream(seed=3, num_batches=NUM_STEPS)
    windowed = run(make_mlp(params), keras_bsgd.BackwardSGD(0.1, window=NUM_STEPS), batches)
    exact = run(make_mlp(params), keras_bsgd.BackwardSGD(0.1), batches)
    for a, b in zip(windowed, exact, strict=True):
        assert max_relative_error(a, b) <= 1e-6


def test_schedule_evaluated_once_per_map_at_arrival():
    batches, params = make_stream(seed=4, num_batches=12)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.2, decay_steps=1, decay_rate=0.8)
    rates = [float(schedule(k)) for k in range(12)]
    expected = reference.backward_sgd(
        reference.initial_state(params, 0.0), batches, rates, window=3
    )
    optimizer = keras_bsgd.BackwardSGD(schedule, window=3)
    states = run(make_mlp(params), optimizer, batches, "xla")
    for s, e in zip(states, expected, strict=True):
        assert max_relative_error(s, e) <= 1e-5
    # Replays do not advance the schedule: only the 12 outer steps count.
    assert int(optimizer.iterations) == 12
    assert np.isclose(float(optimizer.learning_rate), rates[-1] * 0.8, rtol=1e-6)


def test_output_iterate_is_the_models_weights_for_evaluate_and_predict():
    batches, params = make_stream(seed=5, num_batches=6)
    model = make_mlp(params)
    states = run(model, keras_bsgd.BackwardSGD(0.1), batches)
    x = batches[0][0].astype("float32")
    expected = reference.mlp_loss_and_grads(states[-1]["params"], x, batches[0][1])[0]
    assert np.isclose(model.evaluate(x, batches[0][1], verbose=0), expected, rtol=1e-5)


def test_logged_loss_is_new_batch_at_previous_iterate():
    batches, params = make_stream(seed=6, num_batches=5)
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    expected = reference.backward_sgd(
        reference.initial_state(params, 0.0), batches, [0.1] * 5, window=2
    )
    previous = [reference.initial_state(params, 0.0)] + expected[:-1]
    losses = []
    model.fit(
        as_dataset(batches),
        verbose=0,
        callbacks=[
            keras.callbacks.LambdaCallback(
                on_train_batch_end=lambda batch, logs: losses.append(logs["loss"])
            )
        ],
    )
    # Keras logs the running mean of the per-batch losses over the epoch.
    per_batch = [reference.mlp_loss_and_grads(s["params"], *b)[0] for s, b in zip(previous, batches)]
    running = np.cumsum(per_batch) / np.arange(1, 6)
    np.testing.assert_allclose(losses, running, rtol=1e-5)


# Closed forms of docs/design.md §1 on a one-parameter model: batch loss (θ - a)²/2.


def scalar_model(theta0):
    model = keras_bsgd.Sequential(
        [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    model.set_weights([np.array([[theta0]], "float32")])
    return model


def half_squared_error(y_true, y_pred):
    return 0.5 * keras.ops.square(y_true - y_pred)


def scalar_trajectory(targets, optimizer, theta0=0.0):
    model = scalar_model(theta0)
    model.compile(optimizer=optimizer, loss=half_squared_error, jit_compile=True)
    ds = tf.data.Dataset.from_tensor_slices(
        (np.ones((len(targets), 1), "float32"), np.asarray(targets, "float32")[:, None])
    ).batch(1, drop_remainder=True)
    thetas = []
    model.fit(
        ds,
        verbose=0,
        callbacks=[
            keras.callbacks.LambdaCallback(
                on_train_batch_end=lambda b, logs: thetas.append(float(model.get_weights()[0][0, 0]))
            )
        ],
    )
    return np.array(thetas)


def test_e2_two_alternating_batches():
    h, a, b = 0.5, 1.0, 3.0
    targets = [a, b] * 20
    backward = scalar_trajectory(targets, keras_bsgd.BackwardSGD(h))
    forward = scalar_trajectory(targets, keras_bsgd.BackwardSGD(h, window=1))
    fixed_ab = (a + (1 - h) * b) / (2 - h)
    fixed_ba = ((1 - h) * a + b) / (2 - h)
    # Backward converges to one point; forward ends in the 2-cycle.
    np.testing.assert_allclose(backward[-4:], fixed_ab, atol=1e-6)
    np.testing.assert_allclose(forward[-2:], [fixed_ab, fixed_ba], atol=1e-6)
    np.testing.assert_allclose(forward[-4:-2], [fixed_ab, fixed_ba], atol=1e-6)


def test_e1_backward_settles_within_a_run_forward_keeps_its_spread():
    h, mean, sigma, steps = 0.2, 1.0, 1.0, 250
    targets = np.random.default_rng(7).normal(mean, sigma, 2000)
    backward = scalar_trajectory(targets[:steps], keras_bsgd.BackwardSGD(h), theta0=5.0)
    forward = scalar_trajectory(targets, keras_bsgd.BackwardSGD(h, window=1), theta0=5.0)

    # Closed form: S~_k = (1-h)^k θ0 + h Σ_j (1-h)^(j-1) a_j.
    k = np.arange(1, steps + 1)
    decay = (1 - h) ** np.arange(steps)
    closed = (1 - h) ** k * 5.0 + h * np.array([np.dot(decay[:n], targets[:n]) for n in k])
    np.testing.assert_allclose(backward, closed, rtol=1e-5, atol=1e-5)

    assert np.std(backward[200:]) < 1e-5
    stationary_std = np.sqrt(h * sigma**2 / (2 - h))
    assert abs(np.std(forward[200:]) / stationary_std - 1) < 0.15


@pytest.mark.parametrize(
    "layer, unit",
    [
        (keras.layers.Dense(4), "step"),
        (keras.layers.Conv1D(2, 3), "map"),
        (keras.layers.SeparableConv2D(2, 3), "map"),
    ],
)
def test_auto_xla_unit_compiles_the_map_only_for_convolutions_on_cpu(layer, unit):
    # One program is faster on CPU except for convolution gradients, which
    # XLA:CPU emits as naive loops inside a loop (docs/performance.md).
    shape = (8, 8, 3) if isinstance(layer, keras.layers.SeparableConv2D) else (8, 3)
    model = keras_bsgd.Sequential([keras.Input(shape), layer, keras.layers.Flatten()])
    model.compile(optimizer=keras_bsgd.BackwardSGD(), loss="mse")
    assert xla_units.xla_unit(model) == unit
    model.compile(optimizer=keras_bsgd.BackwardSGD(), loss="mse", xla_unit="step")
    assert xla_units.xla_unit(model) == "step"


@pytest.mark.parametrize(
    "layers, warns",
    [
        ([keras.layers.Dropout(0.2), keras.layers.Conv1D(2, 3)], True),
        ([keras.layers.Conv1D(2, 3)], False),
        ([keras.layers.Dropout(0.2), keras.layers.Dense(2)], False),
    ],
)
def test_xla_on_cpu_warns_about_random_draws_feeding_convolutions(layers, warns):
    # XLA:CPU recomputes fused random draws inside convolution loops
    # (docs/performance.md): Keras' own step is 7x slower than without XLA.
    model = keras_bsgd.Sequential([keras.Input((8, 3)), *layers, keras.layers.Flatten()])
    model.compile(optimizer=keras_bsgd.BackwardSGD(window=2), loss="mse", jit_compile=True)
    x = np.ones((4, 8, 3), "float32")
    y = model.predict(x, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=4, verbose=0)
    messages = [str(w.message) for w in caught if "XLA:CPU" in str(w.message)]
    assert bool(messages) == warns, messages


@pytest.mark.parametrize("kwargs", [dict(window=2), dict(replay_every=2, max_steps=16)])
def test_one_device_mirrored_strategy_equals_no_strategy(kwargs):
    # MirroredStrategy on a one-GPU machine: the replay loop runs inside
    # Keras' `strategy.run`, where Keras' own update cannot merge_call.
    batches, params = make_stream(seed=5, num_batches=16)
    settings = dict(momentum=0.9, weight_decay=0.05, clipnorm=0.5, **kwargs)
    expected = run(make_mlp(params), keras_bsgd.BackwardSGD(LEARNING_RATE, **settings), batches)
    with tf.distribute.MirroredStrategy(["CPU:0"]).scope():
        model = make_mlp(params)
        optimizer = keras_bsgd.BackwardSGD(LEARNING_RATE, **settings)
    assert_states_equal(run(model, optimizer, batches), expected)
