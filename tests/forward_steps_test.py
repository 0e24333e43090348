"""`BackwardSGD(forward_steps=W)`: forward SGD, then backward-SGD from the state it reached."""

import keras
import numpy as np
import pytest

import keras_bsgd
from tests import reference
from tests.trajectories import as_dataset
from tests.trajectories import make_mlp
from tests.trajectories import make_stream
from tests.trajectories import max_relative_error
from tests.trajectories import run

pytestmark = pytest.mark.tensorflow

LEARNING_RATE = 0.1


@pytest.mark.parametrize(
    "mode, xla_unit",
    [("eager", "step"), ("graph", "step"), ("xla", "step"), ("xla", "map")],
)
@pytest.mark.parametrize("window", [None, 1, 3])
def test_every_step_equals_the_float64_reference(mode, xla_unit, window):
    num_steps, forward_steps = (9, 4) if mode == "eager" else (16, 6)
    batches, params = make_stream(seed=21, num_batches=num_steps)
    settings = dict(momentum=0.5, nesterov=True)
    expected = reference.warm_backward_sgd(
        reference.initial_state(params, 0.5),
        batches,
        [LEARNING_RATE] * num_steps,
        window=window,
        forward_steps=forward_steps,
        **settings,
    )
    optimizer = keras_bsgd.BackwardSGD(
        LEARNING_RATE, window=window, forward_steps=forward_steps, **settings
    )
    states = run(make_mlp(params), optimizer, batches, mode, xla_unit=xla_unit)
    errors = [max_relative_error(s, e) for s, e in zip(states, expected, strict=True)]
    assert max(errors) <= 1e-5, errors
    assert int(optimizer.iterations) == num_steps


def test_backward_phase_differs_from_forward_sgd():
    # Guards the comparison above: after W the orders really differ.
    batches, params = make_stream(seed=21, num_batches=16)
    state0 = reference.initial_state(params, 0.0)
    rates = [LEARNING_RATE] * 16
    warm = reference.warm_backward_sgd(state0, batches, rates, forward_steps=6)
    forward = reference.forward_sgd(state0, batches, rates)
    assert max_relative_error(warm[5], forward[5]) == 0
    assert max_relative_error(warm[-1], forward[-1]) > 1e-2


def bn_model(seed):
    keras.utils.set_random_seed(seed)
    return keras_bsgd.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(6),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("tanh"),
            keras.layers.Dense(2),
        ]
    )


@pytest.mark.parametrize("window", [None, 2])
def test_one_fit_equals_sgd_then_backward_sgd_from_its_state(window):
    # Two fit() calls with two optimizers (what a user had to do before),
    # with BatchNorm statistics carried across the switch.
    batches, _ = make_stream(seed=22, num_batches=12)
    ds = as_dataset(batches)
    one = bn_model(0)
    one.compile(
        optimizer=keras_bsgd.BackwardSGD(LEARNING_RATE, window=window, forward_steps=5),
        loss="mse",
    )
    one.fit(ds, verbose=0)

    two = bn_model(0)
    two.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse")
    two.fit(ds.take(5), verbose=0)
    two.compile(optimizer=keras_bsgd.BackwardSGD(LEARNING_RATE, window=window), loss="mse")
    two.fit(ds.skip(5), verbose=0)
    for a, b in zip(one.get_weights(), two.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert len(one.non_trainable_weights) == 2  # moving mean and variance compared too


def test_forward_phase_is_keras_sgd_with_one_gradient_per_step():
    batches, params = make_stream(seed=23, num_batches=8)
    model = make_mlp(params)
    states = run(
        model,
        keras_bsgd.BackwardSGD(LEARNING_RATE, momentum=0.9, forward_steps=8, max_steps=9),
        batches,
    )
    keras_states = run(
        make_mlp(params, keras.Sequential), keras.optimizers.SGD(LEARNING_RATE, momentum=0.9), batches
    )
    for a, b in zip(states, keras_states, strict=True):
        assert max_relative_error(a, b) <= 1e-6
    assert model.gradient_evaluations == 8
    # Exact mode buffers nothing in the forward phase: room for max_steps - W.
    assert model.replay_buffer.capacity == 1
