"""Full training state under replay: BatchNorm, dropout, optimizer features, data forms."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bsgd
from tests import keras_reference
from tests.trajectories import EXECUTION_MODES

pytestmark = pytest.mark.tensorflow


def state_variables(model):
    return [v for v in model.variables if v.name != "seed_generator_state"]


class VariableRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.states = []

    def on_train_batch_end(self, batch, logs=None):
        self.states.append([np.array(v.numpy()) for v in state_variables(self.model)])


# With xla_unit="map" (the CPU default for convolutional models) the updates run outside the XLA
# programs, so float32 rounding differs from Keras' one-program step, and
# compositions with momentum amplify it (measured: up to 5.5e-5 in 10 steps;
# xla_unit="step" and graph mode match Keras bit for bit).
XLA_RTOL = 1e-4


def assert_trajectories_close(ours, expected_all_vars, model, rtol=1e-5):
    keep = [i for i, v in enumerate(model.variables) if v.name != "seed_generator_state"]
    assert len(ours) == len(expected_all_vars)
    for step, (a, b) in enumerate(zip(ours, expected_all_vars)):
        b = [b[i] for i in keep]
        for x, y in zip(a, b, strict=True):
            # Floor: a bias in front of BatchNorm gets a zero gradient up to
            # rounding: it holds noise of ~1e-8, compared to 1e-8 absolute.
            err = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-3)
            assert err <= rtol, (step, err)


def random_layers_model(model_class, seed=0):
    keras.utils.set_random_seed(seed)
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


def make_batches(num, batch_size=8, n_in=6, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    return [
        dict(
            x=rng.normal(size=(batch_size, n_in)).astype("float32"),
            y=rng.normal(size=(batch_size, n_out)).astype("float32"),
        )
        for _ in range(num)
    ]


def fit_batches(model, optimizer, batches, mode="graph", **compile_kwargs):
    model.compile(optimizer=optimizer, loss=compile_kwargs.pop("loss", "mse"),
                  **EXECUTION_MODES[mode], **compile_kwargs)
    recorder = VariableRecorder()
    ds = tf.data.Dataset.from_tensor_slices(
        {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    ).map(lambda d: tuple(d[k] for k in ("x", "y", "sample_weight") if k in d))
    model.fit(ds, verbose=0, callbacks=[recorder])
    return recorder.states


@pytest.mark.parametrize("mode", ["graph", "xla"])
@pytest.mark.parametrize("window", [None, 4])
def test_batchnorm_and_random_layers_match_keras_composition(mode, window):
    batches = make_batches(15)
    ours_model = random_layers_model(keras_bsgd.Sequential)
    plain = random_layers_model(keras.Sequential)
    plain.set_weights(ours_model.get_weights())
    ours = fit_batches(
        ours_model, keras_bsgd.BackwardSGD(0.1, momentum=0.5, window=window), batches, mode
    )
    # XLA's stateless RNG draws other numbers than TF's for the same seed, so
    # the reference runs in the same mode.
    expected = keras_reference.backward_states(
        plain, keras.optimizers.SGD(0.1, momentum=0.5), batches, window=window,
        jit_compile=mode == "xla",
    )
    assert_trajectories_close(ours, expected, plain, rtol=XLA_RTOL if mode == "xla" else 1e-5)
    # BatchNorm statistics are part of S: they are not those of forward SGD.
    forward = keras_reference.backward_states(
        random_layers_model(keras.Sequential), keras.optimizers.SGD(0.1, momentum=0.5),
        batches, window=1,
    )
    moving_mean = [v.name for v in state_variables(ours_model)].index("moving_mean")
    assert not np.allclose(ours[-1][moving_mean], forward[-1][moving_mean + 0], atol=1e-4)


def test_same_seed_gives_bitwise_identical_runs():
    batches = make_batches(10)
    runs = []
    for _ in range(2):
        model = random_layers_model(keras_bsgd.Sequential, seed=3)
        runs.append(fit_batches(model, keras_bsgd.BackwardSGD(0.1, window=3), batches, "xla")[-1])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


FEATURES = [
    dict(weight_decay=0.05),
    dict(clipnorm=0.05),
    dict(clipvalue=0.01),
    dict(global_clipnorm=0.05),
    dict(loss_scale_factor=128.0),
    dict(momentum=0.9, nesterov=True, weight_decay=0.01, global_clipnorm=1.0),
]
# Both XLA units run the same Python update (the TF backend's updates.apply_map): "map" (the
# CPU default) runs every feature; "step", whose XLA programs compile more
# slowly, runs the richest rule and the loss scale, whose two halves (the scaled
# loss, the unscaled gradients) "map" puts on either side of its XLA program.
FEATURE_CASES = [
    pytest.param(xla_unit, kwargs, id=f"{xla_unit}-{','.join(kwargs)}")
    for xla_unit in ("step", "map")
    for kwargs in FEATURES
    if xla_unit == "map" or "loss_scale_factor" in kwargs or "momentum" in kwargs
]


@pytest.mark.parametrize("xla_unit, kwargs", FEATURE_CASES)
def test_base_optimizer_features_match_keras_composition(xla_unit, kwargs):
    batches = make_batches(10)
    ours_model = random_layers_model(keras_bsgd.Sequential)
    plain = random_layers_model(keras.Sequential)
    optimizer = keras_bsgd.BackwardSGD(0.2, window=3, **kwargs)
    ours = fit_batches(ours_model, optimizer, batches, "xla", xla_unit=xla_unit)
    expected = keras_reference.backward_states(
        plain, keras.optimizers.SGD(0.2, **kwargs), batches, window=3, jit_compile=True
    )
    rtol = XLA_RTOL if xla_unit == "map" else 1e-5
    assert_trajectories_close(ours, expected, plain, rtol=rtol)


def test_callable_learning_rate_is_frozen_per_map():
    batches = make_batches(8)
    rate = keras.Variable(0.1, trainable=False)
    ours_model = random_layers_model(keras_bsgd.Sequential)
    plain = random_layers_model(keras.Sequential)

    class HalveRate(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                rate.assign(0.05)

    ours_model.compile(optimizer=keras_bsgd.BackwardSGD(lambda: rate.value * 1.0, window=None),
                       loss="mse")
    ds = tf.data.Dataset.from_tensor_slices(
        (np.stack([b["x"] for b in batches]), np.stack([b["y"] for b in batches]))
    )
    recorder = VariableRecorder()
    ours_model.fit(ds, verbose=0, callbacks=[HalveRate(), recorder])
    # Batches 1-4 keep 0.1 at every replay; batches 5-8 were frozen at 0.05.
    expected = keras_reference.backward_states(
        plain, keras.optimizers.SGD(0.1), batches, learning_rates=[0.1] * 4 + [0.05] * 4
    )
    assert_trajectories_close(recorder.states, expected, plain)


def test_ema_averages_output_iterates_once_per_step():
    batches = make_batches(12)
    model = random_layers_model(keras_bsgd.Sequential)
    states = fit_batches(
        model, keras_bsgd.BackwardSGD(0.1, window=3, use_ema=True, ema_momentum=0.7), batches
    )
    trainable = [i for i, v in enumerate(state_variables(model)) if v.trainable]
    ema = [states[0][i] for i in trainable]
    for s in states[1:]:
        ema = [0.7 * e + 0.3 * s[i] for e, i in zip(ema, trainable)]
    # fit() ends by copying the EMA into the model (Keras' finalize_variable_values).
    for e, v in zip(ema, model.trainable_variables, strict=True):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-6)
    assert int(model.optimizer.iterations) == 12


def test_steps_per_execution_gives_the_same_trajectory():
    batches = make_batches(12)
    finals = []
    for spe in (1, 4):
        model = random_layers_model(keras_bsgd.Sequential)
        model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=3), loss="mse",
                      steps_per_execution=spe, jit_compile=True)
        x = np.concatenate([b["x"] for b in batches])
        y = np.concatenate([b["y"] for b in batches])
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
        finals.append(model.get_weights())
        assert int(model.optimizer.iterations) == 12
    for a, b in zip(*finals, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def two_headed(model_class):
    keras.utils.set_random_seed(1)
    a = keras.Input((4,), name="a")
    b = keras.Input((2,), name="b")
    h = keras.layers.Dense(6, activation="tanh")(keras.layers.Concatenate()([a, b]))
    out1 = keras.layers.Dense(3, name="cls")(h)
    out2 = keras.layers.Dense(1, name="reg")(h)
    return model_class({"a": a, "b": b}, {"cls": out1, "reg": out2})


def test_dict_multi_input_multi_output_with_sample_weights():
    rng = np.random.default_rng(3)
    n, bs = 48, 8
    x = {"a": rng.normal(size=(n, 4)).astype("float32"), "b": rng.normal(size=(n, 2)).astype("float32")}
    y = {"cls": rng.integers(0, 3, n), "reg": rng.normal(size=(n, 1)).astype("float32")}
    sw = rng.uniform(0.5, 2.0, n).astype("float32")
    loss = {"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "reg": "mse"}
    ours_model = two_headed(keras_bsgd.Model)
    plain = two_headed(keras.Model)
    ours_model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss=loss)
    recorder = VariableRecorder()
    history = ours_model.fit(x, y, sample_weight=sw, batch_size=bs, shuffle=False, verbose=0,
                             callbacks=[recorder])
    batches = [
        dict(x={k: v[i:i + bs] for k, v in x.items()}, y={k: v[i:i + bs] for k, v in y.items()},
             sample_weight=sw[i:i + bs])
        for i in range(0, n, bs)
    ]
    expected = keras_reference.backward_states(
        plain, keras.optimizers.SGD(0.1), batches, window=2, loss=loss
    )
    assert_trajectories_close(recorder.states, expected, plain)
    # Metrics and per-output losses are updated once per outer step: their
    # state is the same as after a plain Keras fit over the same 6 batches.
    plain_fit = two_headed(keras.Model)
    plain_fit.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    plain_fit.fit(x, y, sample_weight=sw, batch_size=bs, shuffle=False, verbose=0)
    counts = lambda m: sorted(float(v.numpy()) for v in m.metrics_variables if "count" in v.name)
    assert counts(ours_model) == counts(plain_fit)
    assert set(history.history) == {"loss", "cls_loss", "reg_loss"}


def test_class_weight():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 6)).astype("float32")
    y = rng.integers(0, 3, 40)
    class_weight = {0: 1.0, 1: 3.0, 2: 0.5}
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    ours_model = random_layers_model(keras_bsgd.Sequential)
    plain = random_layers_model(keras.Sequential)
    ours_model.compile(optimizer=keras_bsgd.BackwardSGD(0.1), loss=loss)
    recorder = VariableRecorder()
    ours_model.fit(x, y, class_weight=class_weight, batch_size=8, shuffle=False, verbose=0,
                   callbacks=[recorder])
    batches = [
        dict(x=x[i:i + 8], y=y[i:i + 8], sample_weight=np.array([class_weight[c] for c in y[i:i + 8]], "float32"))
        for i in range(0, 40, 8)
    ]
    expected = keras_reference.backward_states(plain, keras.optimizers.SGD(0.1), batches, loss=loss)
    assert_trajectories_close(recorder.states, expected, plain)


def test_window_one_is_keras_sgd_step_for_step_unless_the_model_draws_random_numbers():
    # docs/semantics.md: window=1 recomputes each map exactly, so with
    # deterministic maps (BatchNorm included) it is Keras' SGD bit for bit in
    # graph mode. Random layers are keyed to the batch's arrival index where
    # Keras advances a counter per draw: other masks, the same distribution.
    batches = make_batches(6)
    deterministic = [keras.Input((6,)), keras.layers.Dense(8),
                     keras.layers.BatchNormalization(momentum=0.8), keras.layers.Dense(3)]
    ours_model = keras_bsgd.Sequential(deterministic)
    plain = keras.Sequential(ours_model.layers)  # the same layers, so the same S_0
    initial = ours_model.get_weights()
    ours = fit_batches(ours_model, keras_bsgd.BackwardSGD(0.1, momentum=0.5, window=1), batches)
    ours_model.set_weights(initial)
    keras_sgd = fit_batches(plain, keras.optimizers.SGD(0.1, momentum=0.5), batches)
    for a, b in zip(ours, keras_sgd, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)

    ours_model = random_layers_model(keras_bsgd.Sequential)
    plain = random_layers_model(keras.Sequential)
    ours = fit_batches(ours_model, keras_bsgd.BackwardSGD(0.1, momentum=0.5, window=1), batches)
    keras_sgd = fit_batches(random_layers_model(keras.Sequential),
                            keras.optimizers.SGD(0.1, momentum=0.5), batches)
    assert not np.allclose(ours[-1][0], keras_sgd[-1][0], atol=1e-3)  # other masks
    # Each map is Keras' own SGD step with Keras' own layers, its random draws
    # keyed to the batch's index: the same law as Keras' draws.
    keyed = keras_reference.backward_states(plain, keras.optimizers.SGD(0.1, momentum=0.5),
                                            batches, window=1)
    assert_trajectories_close(ours, keyed, plain)
