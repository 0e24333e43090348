"""Non-finite batches never enter the buffer; divergence is reported."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_bsgd
from tests.trajectories import make_mlp
from tests.trajectories import make_stream

pytestmark = pytest.mark.tensorflow


def dataset(batches):
    xs = np.concatenate([b[0] for b in batches]).astype("float32")
    ys = np.concatenate([b[1] for b in batches]).astype("float32")
    return tf.data.Dataset.from_tensor_slices((xs, ys)).batch(len(batches[0][0]), drop_remainder=True)


def poisoned(batches, positions, value=np.nan):
    out = [(x.copy(), y.copy()) for x, y in batches]
    for p in positions:
        out[p][0][0, 0] = value
    return out


def fit(params, batches, **optimizer_kwargs):
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, **optimizer_kwargs), loss="mse",
                  jit_compile=True)
    history = model.fit(dataset(batches), verbose=0)
    return model, history


def test_skip_drops_the_batch_as_if_it_never_arrived(tmp_path):
    batches, params = make_stream(seed=0, num_batches=8)
    bad = poisoned(batches, [2, 5], value=np.inf)
    model, history = fit(params, bad, window=3, momentum=0.5)
    clean, _ = fit(params, [b for i, b in enumerate(batches) if i not in (2, 5)],
                   window=3, momentum=0.5)
    assert int(model.optimizer.iterations) == 6
    assert model.skipped_batches == 2
    assert np.isfinite(history.history["loss"][-1])
    for a, b in zip(model.get_weights(), clean.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # A resumed run keeps counting from there.
    checkpoint = tf.train.Checkpoint(model=model)
    path = checkpoint.save(tmp_path / "ckpt")
    model.replay_buffer.skipped_batches.assign(0)
    checkpoint.restore(path)
    assert int(model.replay_buffer.skipped_batches.numpy()) == 2


def test_raise_names_the_step_and_leaves_the_state_unchanged():
    batches, params = make_stream(seed=0, num_batches=6)
    with pytest.raises(ValueError, match="batch of step 4 has a non-finite"):
        fit(params, poisoned(batches, [3]), on_nonfinite="raise")
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, on_nonfinite="raise"), loss="mse",
                  jit_compile=True)
    with pytest.raises(ValueError, match="step 4"):
        model.fit(dataset(poisoned(batches, [3])), verbose=0)
    reference, _ = fit(params, batches[:3], max_steps=6)
    assert int(model.optimizer.iterations) == 3
    for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_invalid_on_nonfinite():
    with pytest.raises(ValueError, match="Received: on_nonfinite='ignore'"):
        keras_bsgd.BackwardSGD(on_nonfinite="ignore")


def test_divergence_is_reported():
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


@settings(
    max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(
    window=st.one_of(st.none(), st.integers(1, 4)),
    bad=st.lists(st.integers(0, 9), max_size=4, unique=True),
)
def test_property_nan_batches_equal_the_stream_without_them(window, bad):
    keras.backend.clear_session()
    batches, params = make_stream(seed=1, num_batches=10)
    model, history = fit(params, poisoned(batches, bad), window=window)
    kept = [b for i, b in enumerate(batches) if i not in bad]
    if window is None:
        clean, _ = fit(params, kept, max_steps=10)
    else:
        clean, _ = fit(params, kept, window=window)
    assert int(model.optimizer.iterations) == len(kept)
    assert model.skipped_batches == len(bad)
    for a, b in zip(model.get_weights(), clean.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("window", [3, None])
@pytest.mark.parametrize("xla_unit", ["step", "map"])
def test_dropped_batch_leaves_batchnorm_statistics_and_random_draws_untouched(xla_unit, window):
    # A dropped batch replays the previous step's maps (no conditional in
    # the compiled step), which must rebuild the BatchNorm statistics and the
    # dropout masks of the previous iterate bit for bit; the NaN batch's own
    # forward pass must leave no trace in the moving statistics.
    batches, _ = make_stream(seed=2, num_batches=8)

    def train(stream):
        keras.utils.set_random_seed(3)
        model = keras_bsgd.Sequential([
            keras.Input((stream[0][0].shape[1],)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(stream[0][1].shape[1]),
        ])
        optimizer = keras_bsgd.BackwardSGD(0.1, window=window, max_steps=None if window else 8)
        model.compile(optimizer=optimizer, loss="mse", jit_compile=True, xla_unit=xla_unit)
        model.fit(dataset(stream), verbose=0)
        return model

    model = train(poisoned(batches, [0, 3, 4]))
    clean = train([b for i, b in enumerate(batches) if i not in (0, 3, 4)])
    assert int(model.optimizer.iterations) == 5
    for a, b in zip(model.get_weights(), clean.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
