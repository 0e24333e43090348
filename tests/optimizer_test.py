"""BackwardSGD: hyperparameter validation, config, registration, misuse."""

import json

import keras
import numpy as np
import pytest

import keras_bsgd

@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(window=0), "Received: window=0"),
        (dict(window=-3), "Received: window=-3"),
        (dict(window=2.5), "Received: window=2.5"),
        (dict(window="x"), "Received: window='x'"),
        (dict(window=True), "Received: window=True"),
        (dict(max_steps=0), "Received: max_steps=0"),
        (dict(max_steps=-1), "Received: max_steps=-1"),
        (dict(window=4, max_steps=100), "Received: window=4, max_steps=100"),
        (dict(learning_rate=-0.1), "Received: learning_rate=-0.1"),
        (dict(momentum=1.0), r"Received: momentum=1.0"),
        (dict(momentum=-0.5), r"Received: momentum=-0.5"),
        (dict(momentum="high"), r"Received: momentum='high'"),
        (dict(gradient_accumulation_steps=4), "Received: gradient_accumulation_steps=4"),
        (dict(replay_every=0), "Received: replay_every=0"),
        (dict(replay_every=-2), "Received: replay_every=-2"),
        (dict(replay_every=2.5), "Received: replay_every=2.5"),
        (dict(replay_every="x"), "Received: replay_every='x'"),
        (dict(replay_every=True), "Received: replay_every=True"),
        (dict(forward_steps=-1), "Received: forward_steps=-1"),
        (dict(forward_steps=1.5), "Received: forward_steps=1.5"),
        (dict(forward_steps=10, max_steps=10), "Received: forward_steps=10, max_steps=10"),
    ],
)
def test_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_bsgd.BackwardSGD(**kwargs)


def test_unknown_keyword_is_rejected():
    with pytest.raises(ValueError, match="not recognized"):
        keras_bsgd.BackwardSGD(windw=3)


def test_accepts_numpy_integers_and_integer_momentum():
    optimizer = keras_bsgd.BackwardSGD(window=np.int64(3), momentum=0)
    assert optimizer.window == 3 and optimizer.momentum == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(learning_rate=0.05, momentum=0.9, nesterov=True, window=8),
        dict(max_steps=100, weight_decay=1e-4, clipnorm=1.0),
        dict(window=4, replay_every=10, forward_steps=500),
        dict(
            learning_rate=keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9),
            window=2,
            global_clipnorm=2.0,
            loss_scale_factor=8.0,
        ),
    ],
)
def test_config_round_trip(kwargs):
    optimizer = keras_bsgd.BackwardSGD(**kwargs)
    restored = keras_bsgd.BackwardSGD.from_config(optimizer.get_config())
    serialized = keras.saving.serialize_keras_object(optimizer)
    assert keras.saving.serialize_keras_object(restored) == serialized
    assert serialized["registered_name"] == "keras_bsgd>BackwardSGD"
    again = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert isinstance(again, keras_bsgd.BackwardSGD)
    assert keras.saving.serialize_keras_object(again) == serialized


def test_build_creates_all_state_in_a_fixed_order():
    optimizer = keras_bsgd.BackwardSGD(momentum=0.9, window=2)
    variables = [keras.Variable(np.ones((2, 3))), keras.Variable(np.zeros(3))]
    optimizer.build(variables)
    names = [v.name for v in optimizer.variables]
    assert names[:2] == ["iteration", "learning_rate"]
    assert len(optimizer.momentums) == 2
    assert len(optimizer.anchor_weights) == 2 and len(optimizer.anchor_momentums) == 2
    # Format 2: the optimizer's own variables, then the map optimizer's.
    assert len(names) == 2 + 3 * 2 + 1
    inner = optimizer.map_optimizer.variables
    assert optimizer.variables[-3:] == inner
    assert [v.name for v in inner] == ["iteration", "variable_momentum", "variable_1_momentum"]
    optimizer.build(variables)  # idempotent
    assert len(optimizer.variables) == len(names)


# Keras' JAX trainer applies updates with `stateless_apply`, not `apply()`.
@pytest.mark.tensorflow
def test_plain_keras_model_fails_at_first_step_and_names_the_fix():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    before = [w.copy() for w in model.get_weights()]
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    with pytest.raises(TypeError, match=r"keras_bsgd\.wrap"):
        model.fit(np.ones((8, 3)), np.ones((8, 1)), batch_size=4, verbose=0)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert int(model.optimizer.iterations) == 0


def test_the_map_optimizer_has_no_learning_rate_of_its_own():
    # Each map runs at its batch's frozen rate; outside a map there is none
    # to report, and a silent stand-in would mislead.
    optimizer = keras_bsgd.BackwardSGD(0.05)
    assert float(optimizer.learning_rate) == pytest.approx(0.05)
    with pytest.raises(TypeError, match=r"Read `optimizer.learning_rate`"):
        optimizer.map_optimizer.learning_rate
