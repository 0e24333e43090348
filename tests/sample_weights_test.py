"""Sample weights that come and go within a run (docs/semantics.md, "Sample weights within a run").

A batch without sample weights is a batch whose sample weights are all ones:
a run whose weights appear at step k equals the run that passed ones before
k, bit for bit, and both equal a float64 reference of weighted backward-SGD.
On both backends; windowed and exact, whole batches and index buffering.
"""

import keras
import numpy as np
import pytest

import keras_bsgd
from keras_bsgd import keras_private
from tests import reference
from tests.trajectories import Batches
from tests.trajectories import make_mlp
from tests.trajectories import make_stream
from tests.trajectories import max_relative_error

LEARNING_RATE = 0.1
NUM_BATCHES = 8
BATCH = 4
MODES = {
    "windowed": dict(window=3),
    "exact": dict(max_steps=3 * NUM_BATCHES),
    # Replays at even steps only (and at a fit()'s end): the last step replays.
    "replay_every": dict(window=3, replay_every=2),
}


def weighted_map(state, batch, learning_rate):
    """One SGD step on Keras' weighted MSE: `sum_i w_i mean_j (out - y)_ij^2 / batch` (float64)."""
    x, y, w = (np.asarray(a, np.float64) for a in batch)
    w1, b1, w2, b2 = state["params"]
    h = np.tanh(x @ w1 + b1)
    diff = h @ w2 + b2 - y
    d_out = 2.0 * diff * w[:, None] / diff.size
    d_h = (d_out @ w2.T) * (1.0 - h**2)
    grads = [x.T @ d_h, d_h.sum(axis=0), h.T @ d_out, d_out.sum(axis=0)]
    params = [p - learning_rate * g for p, g in zip(state["params"], grads)]
    return {"params": params, "momentum": []}


def weighted_backward_sgd(params, batches, window):
    """The backward iterate after the last of `batches` `(x, y, w)` (docs/design.md §1.2)."""
    k = len(batches)
    w = k if window is None else min(window, k)
    state = reference.initial_state(params, 0.0)
    for i in [*range(k - w), *range(k - 1, k - w - 1, -1)]:
        state = weighted_map(state, batches[i], LEARNING_RATE)
    return state


def stream(seed=41):
    """Batches `(x, y, w)` (float32) and the MLP's initial parameters."""
    batches, params = make_stream(seed=seed, num_batches=NUM_BATCHES, batch_size=BATCH)
    rng = np.random.default_rng(seed + 1)
    weighted = [
        (x.astype("float32"), y.astype("float32"), rng.uniform(0.2, 3.0, BATCH).astype("float32"))
        for x, y in batches
    ]
    return weighted, params


def compiled(params, mode, **compile_kwargs):
    model = make_mlp(params)
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(LEARNING_RATE, **MODES[mode]), loss="mse",
        weighted_metrics=["mae"], **compile_kwargs,
    )
    return model


def without_weights(batches, kept):
    """`batches` whose weights are kept where `kept(i)`, dropped elsewhere."""
    return [b if kept(i) else b[:2] for i, b in enumerate(batches)]


def with_ones(batches):
    return [(*b[:2], np.ones(BATCH, "float32")) if len(b) == 2 else b for b in batches]


def train(model, batches, api, calls=2):
    """Trains on `batches` in order (`train_on_batch`, or `calls` fit() calls); returns the logs."""
    if api == "train_on_batch":
        return [model.train_on_batch(*b, return_dict=True) for b in batches]
    logs, size = [], len(batches) // calls
    for start in range(0, len(batches), size):
        part = batches[start : start + size]
        if api == "fit_arrays":
            x, y = (np.concatenate([b[j] for b in part]) for j in (0, 1))
            weights = None if len(part[0]) == 2 else np.concatenate([b[2] for b in part])
            history = model.fit(
                x, y, sample_weight=weights, batch_size=BATCH, shuffle=False, verbose=0
            )
        else:
            history = model.fit(Batches(part), shuffle=False, verbose=0)
        logs.append(history.history)
    return logs


def assert_same_weights(a, b):
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


def state_of(model):
    return {"params": [v.numpy() for v in model.trainable_variables], "momentum": []}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("api", ["train_on_batch", "fit_batches", "fit_arrays"])
def test_weights_that_appear_at_step_k_are_ones_before_it(mode, api):
    batches, params = stream()
    k = NUM_BATCHES // 2
    # Weights from step k + 1 on; in fit_arrays, from the second fit() on.
    appearing = without_weights(batches, lambda i: i >= k)
    model, ones = compiled(params, mode), compiled(params, mode)
    logs = train(model, appearing, api)
    assert train(ones, with_ones(appearing), api) == logs
    assert_same_weights(model, ones)
    assert int(model.optimizer.iterations) == NUM_BATCHES
    window = MODES[mode].get("window")
    expected = weighted_backward_sgd(params, with_ones(appearing), window)
    assert max_relative_error(state_of(model), expected) <= 1e-5
    # Exact mode on arrays buffers example indices; the rest whole batches.
    assert (model.data_store is not None) == (mode == "exact" and api == "fit_arrays")


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("api", ["train_on_batch", "fit_batches", "fit_arrays"])
def test_weights_dropped_after_being_used_are_ones(mode, api):
    batches, params = stream(seed=43)
    dropping = without_weights(batches, lambda i: i < NUM_BATCHES // 2)
    model, ones = compiled(params, mode), compiled(params, mode)
    logs = train(model, dropping, api)
    assert train(ones, with_ones(dropping), api) == logs
    assert_same_weights(model, ones)
    expected = weighted_backward_sgd(params, with_ones(dropping), MODES[mode].get("window"))
    assert max_relative_error(state_of(model), expected) <= 1e-5


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("execution", [dict(run_eagerly=True), dict(jit_compile=True)],
                         ids=["eager", "xla"])
def test_weights_that_come_and_go_eager_and_under_xla(mode, execution):
    batches, params = stream(seed=44)
    alternating = without_weights(batches, lambda i: i % 3 == 1)
    model = compiled(params, mode, **execution)
    train(model, alternating, "train_on_batch")
    expected = weighted_backward_sgd(params, with_ones(alternating), MODES[mode].get("window"))
    assert max_relative_error(state_of(model), expected) <= 1e-5


@pytest.mark.parametrize("mode", list(MODES))
def test_class_weight_after_a_fit_without_it(mode):
    batches, params = stream(seed=45)
    x, y = (np.concatenate([b[j] for b in batches]) for j in (0, 1))
    class_weight = {0: 0.5, 1: 2.0}
    half = len(x) // 2
    model, explicit = compiled(params, mode), compiled(params, mode)
    arguments = dict(batch_size=BATCH, shuffle=False, verbose=0)
    model.fit(x[:half], y[:half], **arguments)
    model.fit(x[half:], y[half:], class_weight=class_weight, **arguments)
    explicit.fit(x[:half], y[:half], sample_weight=np.ones(half, "float32"), **arguments)
    weights = keras_private.class_weight_to_sample_weights(y[half:], class_weight)
    explicit.fit(x[half:], y[half:], sample_weight=weights, **arguments)
    assert_same_weights(model, explicit)
    assert not np.allclose(weights, 1.0)


def continue_run(model, batches):
    """The run's second half: weights on the first two batches, none after."""
    train(model, without_weights(batches, lambda i: i < 2), "fit_batches", calls=2)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
@pytest.mark.parametrize("saved_with_weights", [True, False])
def test_resume_after_the_relay_continues_bit_for_bit(tmp_path, mode, suffix, saved_with_weights):
    batches, params = stream(seed=47)
    first, second = batches[: NUM_BATCHES // 2], batches[NUM_BATCHES // 2 :]
    # Saved after the re-lay (weights from the third batch on), or before
    # it: the loaded buffer then gets its ones when the weights come.
    first = without_weights(first, lambda i: saved_with_weights and i >= 2)
    expected = compiled(params, mode)
    train(expected, first, "fit_batches")
    continue_run(expected, second)

    model = compiled(params, mode)
    train(model, first, "fit_batches")
    path = tmp_path / f"run{suffix}"
    model.save(path) if suffix == ".keras" else model.save_weights(path)
    if suffix == ".keras":
        resumed = keras.models.load_model(path)
    else:
        resumed = compiled(params, mode)
        resumed.load_weights(path)
    continue_run(resumed, second)
    assert_same_weights(resumed, expected)
    assert resumed.gradient_evaluations == expected.gradient_evaluations


def test_index_buffered_resume_after_the_relay_continues_bit_for_bit(tmp_path):
    batches, params = stream(seed=48)
    x, y, w = (np.concatenate([b[j] for b in batches]) for j in (0, 1, 2))
    half = len(x) // 2

    def second_half(model):
        model.fit(x, y, sample_weight=w, batch_size=BATCH, shuffle=False, verbose=0)
        model.fit(x[:half], y[:half], batch_size=BATCH, shuffle=False, verbose=0)

    expected = compiled(params, "exact")
    expected.fit(x[:half], y[:half], batch_size=BATCH, shuffle=False, verbose=0)
    expected.fit(x, y, sample_weight=w, batch_size=BATCH, shuffle=False, verbose=0)
    second_half(expected)

    model = compiled(params, "exact")
    model.fit(x[:half], y[:half], batch_size=BATCH, shuffle=False, verbose=0)
    model.fit(x, y, sample_weight=w, batch_size=BATCH, shuffle=False, verbose=0)
    assert model.data_store is not None
    model.save(tmp_path / "run.keras")
    resumed = keras.models.load_model(tmp_path / "run.keras")
    if keras.backend.backend() == "jax":
        # The JAX trainer resumes index-buffered runs of one dataset only.
        with pytest.raises(ValueError, match="runs of one dataset"):
            second_half(resumed)
        return
    resumed.fit(x[:half], y[:half], batch_size=BATCH, shuffle=False, epochs=0, verbose=0)
    second_half(resumed)
    assert_same_weights(resumed, expected)


@pytest.mark.parametrize("mode", ["windowed", "exact"])
def test_other_structures_stay_refused_with_the_state_kept(mode):
    batches, params = stream(seed=49)
    model = compiled(params, mode)
    train(model, without_weights(batches[:2], lambda i: False), "train_on_batch")
    before = model.get_weights()
    x, y, w = batches[2]
    other_inputs = [
        (np.concatenate([x, x], axis=1), y, w),  # another input shape, with the first weights
        (x.astype("float64")[:, :2], y),
        ((x, x), y),  # two inputs
    ]
    for batch in other_inputs:
        with pytest.raises(ValueError, match="Received"):
            model.train_on_batch(*batch)
        for a, b in zip(model.get_weights(), before, strict=True):
            np.testing.assert_array_equal(a, b)
    assert int(model.optimizer.iterations) == 2
    # The run goes on with weights, as if the refused batches never came.
    model.train_on_batch(x, y, sample_weight=w)
    expected = weighted_backward_sgd(
        params, with_ones(without_weights(batches[:3], lambda i: i == 2)), MODES[mode].get("window")
    )
    assert max_relative_error(state_of(model), expected) <= 1e-5


def traces_of(params, mode, batches):
    """How many times the run's step is traced over `batches` (train_on_batch)."""
    model = compiled(params, mode)
    traces = []
    step = model.train_step
    model.train_step = lambda *args: traces.append(1) or step(*args)
    train(model, batches, "train_on_batch")
    return len(traces)


@pytest.mark.parametrize("mode", ["windowed", "exact"])
def test_the_relay_traces_the_step_once_more(mode):
    batches, params = stream(seed=50)
    # Weights appear at step 3 and go at step 6: the first batches trace as
    # a run that always has weights does (TensorFlow traces twice where the
    # step creates the buffer), the re-lay once more, the batches given ones
    # never.
    changing = traces_of(params, mode, without_weights(batches, lambda i: 2 <= i < 5))
    assert changing == traces_of(params, mode, batches) + 1
