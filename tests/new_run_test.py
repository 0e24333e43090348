"""Weights set from outside, and a divergence, start a new run from the model's weights."""

import keras
import numpy as np
import pytest

import keras_bsgd
from tests import reference
from tests.trajectories import as_dataset
from tests.trajectories import make_mlp
from tests.trajectories import make_stream
from tests.trajectories import max_relative_error


LEARNING_RATE = 0.1


def state_of(model):
    return {"params": [v.numpy() for v in model.trainable_variables], "momentum": []}


@pytest.mark.parametrize("window", [4, None])
@pytest.mark.parametrize("replay_every", [1, 3])
def test_set_weights_between_fits_starts_a_new_run_from_them(window, replay_every):
    batches, params = make_stream(seed=31, num_batches=9)
    model = make_mlp(params)
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(
            LEARNING_RATE, window=window, max_steps=None if window else 20,
            replay_every=replay_every,
        ),
        loss="mse",
    )
    model.fit(as_dataset(batches[:6]), verbose=0)
    _, other = make_stream(seed=32, num_batches=1)
    model.set_weights([p.astype("float32") for p in other])
    model.fit(as_dataset(batches[6:]), verbose=0)
    # Steps 7-9 are steps 1-3 of a run from the weights as set.
    expected = reference.backward_sgd(
        reference.initial_state(other, 0.0), batches[6:], [LEARNING_RATE] * 3, window=window
    )[-1]
    assert max_relative_error(state_of(model), expected) <= 1e-5
    assert int(model.optimizer.iterations) == 9
    assert model.replayed_step == 9


def test_weights_left_alone_continue_the_run():
    # Guards the test above: without set_weights, two fit() calls are one run.
    batches, params = make_stream(seed=31, num_batches=9)
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(LEARNING_RATE, max_steps=9), loss="mse")
    model.fit(as_dataset(batches[:6]), verbose=0)
    model.fit(as_dataset(batches[6:]), verbose=0)
    expected = reference.backward_sgd(
        reference.initial_state(params, 0.0), batches, [LEARNING_RATE] * 9
    )[-1]
    assert max_relative_error(state_of(model), expected) <= 1e-5


def test_early_stopping_best_weights_are_what_the_next_fit_starts_from():
    batches, params = make_stream(seed=33, num_batches=4)
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(LEARNING_RATE, window=2), loss="mse")
    # A monitor that is best after the first epoch: restores those weights.
    scores = iter([0.0, 1.0, 2.0])
    marker = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: logs.update(score=next(scores))
    )
    best = []
    keep = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: best.append(model.get_weights()) if epoch == 0 else None
    )
    stopper = keras.callbacks.EarlyStopping(
        monitor="score", mode="min", patience=1, restore_best_weights=True
    )
    model.fit(as_dataset(batches), epochs=3, verbose=0, callbacks=[marker, keep, stopper])
    for a, b in zip(model.get_weights(), best[0], strict=True):
        np.testing.assert_array_equal(a, b)
    model.fit(as_dataset(batches[:1]), verbose=0)
    expected = reference.sgd_map(
        reference.initial_state(best[0], 0.0), batches[0], LEARNING_RATE
    )
    assert max_relative_error(state_of(model), expected) <= 1e-5


def diverging_model():
    # A loss with a constant gradient: each map moves the weight by 1e38, so
    # the 4-map replay of step 4 leaves float32 (as in nonfinite_test).
    model = keras_bsgd.Sequential(
        [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    model.compile(optimizer=keras_bsgd.BackwardSGD(1e38, window=8), loss=rising_loss)
    with pytest.raises(FloatingPointError, match="diverged at step 4.*now holds the anchor"):
        model.fit(ONES, ONES, batch_size=1, verbose=0)
    return model


def rising_loss(y_true, y_pred):
    return -keras.ops.mean(y_pred)


ONES = np.ones((8, 1), "float32")


def test_a_diverged_run_holds_its_anchor_and_can_continue():
    model = diverging_model()
    # The anchor of window 8 at step 4 is S_0.
    assert model.get_weights()[0].item() == 0.0
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.5, window=2), loss=rising_loss)
    model.fit(ONES[:3], ONES[:3], batch_size=1, verbose=0)
    # A new run from 0: step 3 is T_2(T_3(T_1(0))), three maps of +0.5.
    assert model.skipped_batches == 0
    assert model.get_weights()[0].item() == 1.5


def test_after_a_divergence_the_same_optimizer_starts_a_new_run():
    model = diverging_model()
    model.optimizer.learning_rate.assign(0.25)
    model.fit(ONES[:2], ONES[:2], batch_size=1, verbose=0)
    # Steps 5 and 6 are steps 1 and 2 of a run from the anchor (0), not a
    # replay of the diverged composition: T_5(T_6(0)) = 0.5.
    assert model.skipped_batches == 0
    assert int(model.optimizer.iterations) == 6
    assert model.get_weights()[0].item() == 0.5
