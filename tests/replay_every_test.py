"""`BackwardSGD(replay_every=E)`: the backward iterate computed only where it is observed."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bsgd
from tests import reference
from tests.trajectories import StateRecorder
from tests.trajectories import as_dataset
from tests.trajectories import make_mlp
from tests.trajectories import make_stream
from tests.trajectories import max_relative_error
from tests.trajectories import run

pytestmark = pytest.mark.tensorflow

LEARNING_RATE = 0.1
MOMENTUM = 0.5


def expected_observed(params, batches, window, replay_every, forward_steps=0, ends=()):
    """The float64 states the model holds after each step (None: S_0)."""
    state0 = reference.initial_state(params, MOMENTUM)
    iterates = reference.warm_backward_sgd(
        state0,
        batches,
        [LEARNING_RATE] * len(batches),
        window=window,
        forward_steps=forward_steps,
        momentum=MOMENTUM,
    )
    replayed = set(range(1, forward_steps + 1)) | set(ends) | {len(batches)}
    return [
        state0 if s is None else s
        for s in reference.observed(iterates, replay_every, replayed)
    ]


@pytest.mark.parametrize(
    "mode, xla_unit",
    [("eager", "step"), ("graph", "step"), ("xla", "step"), ("xla", "map")],
)
@pytest.mark.parametrize("window", [None, 3])
def test_replayed_iterates_equal_the_every_step_run_and_hold_between(mode, xla_unit, window):
    num_steps = 10 if mode == "eager" else 14
    batches, params = make_stream(seed=11, num_batches=num_steps)

    def states(replay_every):
        optimizer = keras_bsgd.BackwardSGD(
            LEARNING_RATE,
            momentum=MOMENTUM,
            window=window,
            replay_every=replay_every,
        )
        return run(make_mlp(params), optimizer, batches, mode, xla_unit=xla_unit)

    every_step, every_four = states(1), states(4)
    expected = expected_observed(params, batches, window, 4)
    for k, (state, want) in enumerate(zip(every_four, expected, strict=True), start=1):
        assert max_relative_error(state, want) <= 1e-5, k
        # The replayed ones are the every-step run's iterates at that step;
        # between replays the model holds the last one (before the first, S_0).
        replayed_at = k if k % 4 == 0 or k == num_steps else 4 * (k // 4)
        if replayed_at:
            assert max_relative_error(state, every_step[replayed_at - 1]) <= 1e-6, k
    # float32 S_0, untouched by three logging passes.
    assert max_relative_error(every_four[2], reference.initial_state(params, MOMENTUM)) <= 1e-7


def test_every_epoch_end_replays_and_validation_sees_it():
    # 2 epochs of 5 steps with E=3: replays at 3, 5 (epoch end), 6, 9, 10.
    batches, _ = make_stream(seed=12, num_batches=5)
    seen = []

    class Validation(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append([v.numpy() for v in self.model.trainable_variables])

    optimizer = keras_bsgd.BackwardSGD(LEARNING_RATE, momentum=MOMENTUM, replay_every=3)
    _, params = make_stream(seed=11, num_batches=1)
    model = make_mlp(params)
    model.compile(optimizer=optimizer, loss="mse")
    recorder = StateRecorder()
    val_x = batches[0][0].astype("float32")
    val_y = batches[0][1].astype("float32")
    history = model.fit(
        as_dataset(batches),
        epochs=2,
        verbose=0,
        validation_data=(val_x, val_y),
        callbacks=[recorder, Validation()],
    )
    stream = batches + batches
    expected = expected_observed(params, stream, None, 3, ends=(5,))
    for k, (state, want) in enumerate(zip(recorder.states, expected, strict=True), start=1):
        assert max_relative_error(state, want) <= 1e-5, k
    for epoch_end, weights in zip((5, 10), seen, strict=True):
        want = {"params": expected[epoch_end - 1]["params"], "momentum": []}
        assert max_relative_error({"params": weights, "momentum": []}, want) <= 1e-5
    # Validation ran on the epoch's last iterate, not an older one.
    want = reference.mlp_loss_and_grads(expected[4]["params"], val_x, val_y)[0]
    assert np.isclose(history.history["val_loss"][0], want, rtol=1e-5)
    assert model.replayed_step == 10


def test_dataset_of_unknown_length_replays_its_last_step():
    batches, params = make_stream(seed=13, num_batches=7)
    ds = as_dataset(batches).filter(lambda x, y: True)
    assert int(ds.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    model = make_mlp(params)
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(LEARNING_RATE, momentum=MOMENTUM, window=2, replay_every=5),
        loss="mse",
    )
    model.fit(ds, verbose=0)
    expected = expected_observed(params, batches, 2, 5)
    state = {
        "params": [v.numpy() for v in model.trainable_variables],
        "momentum": [m.numpy() for m in model.optimizer.momentums],
    }
    assert max_relative_error(state, expected[-1]) <= 1e-5
    assert model.replayed_step == 7


def exact_evaluations(steps, replay_every, forward_steps=0, ends=()):
    replayed = [
        k for k in range(forward_steps + 1, steps + 1)
        if k % replay_every == 0 or k in ends or k == steps
    ]
    return forward_steps + sum(k - forward_steps for k in replayed)


def windowed_evaluations(steps, window, replay_every, forward_steps=0, ends=()):
    # One per anchor move (each map leaves the window once), plus the
    # window's maps at every replay.
    replayed = [
        k for k in range(forward_steps + 1, steps + 1)
        if k % replay_every == 0 or k in ends or k == steps
    ]
    anchor = max(forward_steps, steps - window) - forward_steps
    return forward_steps + anchor + sum(min(window, k - forward_steps) for k in replayed)


@pytest.mark.parametrize(
    "window, replay_every, forward_steps, steps_per_epoch, epochs",
    [
        (None, 1, 0, 9, 1),
        (None, 4, 0, 9, 1),
        (None, 3, 2, 5, 2),
        (None, 10, 4, 7, 2),
        (2, 1, 0, 9, 1),
        (2, 4, 0, 9, 1),
        (3, 3, 2, 5, 2),
        (1, 5, 3, 7, 2),
    ],
)
def test_counted_gradient_evaluations_equal_the_formulas(
    window, replay_every, forward_steps, steps_per_epoch, epochs
):
    batches, params = make_stream(seed=14, num_batches=steps_per_epoch)
    model = make_mlp(params)
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(
            0.05, window=window, replay_every=replay_every, forward_steps=forward_steps
        ),
        loss="mse",
        jit_compile=True,
    )
    model.fit(as_dataset(batches), epochs=epochs, verbose=0)
    steps = steps_per_epoch * epochs
    ends = [steps_per_epoch * e for e in range(1, epochs + 1)]
    if window is None:
        expected = exact_evaluations(steps, replay_every, forward_steps, ends)
    else:
        expected = windowed_evaluations(steps, window, replay_every, forward_steps, ends)
    assert model.gradient_evaluations == expected
    assert int(model.optimizer.iterations) == steps


def test_exact_run_observed_every_ten_steps_costs_about_n_squared_over_2e():
    # DESIGN's claim in numbers: N=1000, E=10 costs 50,500, not 500,500.
    assert exact_evaluations(1000, 10) == 50_500
    assert exact_evaluations(1000, 1) == 500_500
    assert exact_evaluations(1000, 1000) == 1000


def test_ema_averages_only_the_replayed_iterates():
    batches, params = make_stream(seed=15, num_batches=8)
    model = make_mlp(params)
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(
            LEARNING_RATE, replay_every=4, use_ema=True, ema_momentum=0.5
        ),
        loss="mse",
    )
    model.fit(as_dataset(batches), verbose=0)
    iterates = reference.backward_sgd(
        reference.initial_state(params, 0.0), batches, [LEARNING_RATE] * 8
    )
    # As Keras' EMA: the first update copies the iterate (here S~_4, not
    # the never-observed S~_1), later ones ema = m * ema + (1 - m) * w.
    ema = iterates[3]["params"]
    ema = [0.5 * e + 0.5 * w for e, w in zip(ema, iterates[7]["params"])]
    weights = [v.numpy() for v in model.trainable_variables]
    assert max_relative_error({"params": weights, "momentum": []},
                              {"params": ema, "momentum": []}) <= 1e-5
