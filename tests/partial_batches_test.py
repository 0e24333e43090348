"""Partial batches on the active backend: a shorter batch is skipped, against the float64 reference.

The definition (docs/semantics.md, "Partial batches"): a run's batches hold
its first batch's number of examples; a shorter batch is not a map (no
state changes, no step counted) and `fit()` warns once with what it
skipped; a larger one is refused with the state kept.
"""

import warnings

import keras
import numpy as np
import pytest

import keras_bsgd
from keras_bsgd.partial_batches import PartialBatches
from tests import reference
from tests.backends_test import LEARNING_RATE
from tests.backends_test import Recorder
from tests.backends_test import make_mlp
from tests.backends_test import numpy
from tests.trajectories import Batches


def examples(seed, n):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)), rng.normal(size=(n, 2)), reference.init_mlp(rng, 3, 5, 2)


def full_batches(x, y, batch_size):
    return [
        (x[i : i + batch_size], y[i : i + batch_size])
        for i in range(0, len(x) - batch_size + 1, batch_size)
    ]


def fit_and_expect(n, batch_size, window, epochs, jit_compile=True, seed=0, **fit_kwargs):
    """Fits `n` examples in batches of `batch_size`; returns (recorder, expected states, warnings)."""
    x, y, params = examples(seed, n)
    full = full_batches(x, y, min(batch_size, n)) * epochs
    expected = reference.backward_sgd(
        reference.initial_state(params, 0.0), full, [LEARNING_RATE] * len(full), window=window,
    )
    model = make_mlp(params)
    optimizer = keras_bsgd.BackwardSGD(LEARNING_RATE, window=window)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    recorder = Recorder()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(
            x.astype("float32"), y.astype("float32"), batch_size=batch_size, epochs=epochs,
            shuffle=False, verbose=0, callbacks=[recorder], **fit_kwargs,
        )
    skipped = [str(w.message) for w in caught if "partial batch" in str(w.message)]
    return model, recorder, expected, skipped


def trained_states(recorder):
    """The recorded states of the steps that trained (a skipped step repeats the state before)."""
    states = []
    for state in recorder.states:
        repeated = states and all(
            np.array_equal(a, b) for a, b in zip(state["params"], states[-1]["params"])
        )
        if not repeated:
            states.append(state)
    return states


def max_error(states, expected):
    return max(
        np.abs(a - b).max()
        for s, e in zip(states, expected, strict=True)
        for a, b in zip(s["params"], e["params"], strict=True)
    )


@pytest.mark.parametrize("jit_compile", [True, False])
@pytest.mark.parametrize("window", [None, 2])
def test_partial_last_batch_is_skipped_against_the_reference(window, jit_compile):
    model, recorder, expected, skipped = fit_and_expect(
        n=22, batch_size=4, window=window, epochs=2, jit_compile=jit_compile
    )
    # 22 = 5 batches of 4 and a partial one of 2, twice.
    assert int(numpy(model.optimizer.iterations)) == 10
    assert len(recorder.states) == 12  # Keras still counts the skipped batch as a step
    assert max_error(trained_states(recorder), expected) <= 1e-6
    assert skipped == [
        "keras_bsgd skipped 2 partial batch(es) (4 examples): backward-SGD replays "
        "batches of one size, and this run's batches hold 4 examples. To train on every "
        "example, use a batch size that divides the number of training examples; with "
        "`shuffle=True` each epoch skips other examples."
    ]


def test_random_lengths_train_every_full_batch_and_skip_the_rest():
    rng = np.random.default_rng(7)
    for case in range(6):
        n, batch_size = int(rng.integers(1, 30)), int(rng.integers(1, 9))
        window = [None, 3][case % 2]
        model, recorder, expected, skipped = fit_and_expect(
            n, batch_size, window, epochs=2, jit_compile=False, seed=case
        )
        full = max(n // batch_size, 1)
        remainder = n % batch_size if n >= batch_size else 0
        assert int(numpy(model.optimizer.iterations)) == 2 * full, (n, batch_size)
        np.testing.assert_allclose(
            numpy(model.trainable_variables[0]), expected[-1]["params"][0], atol=1e-6
        )
        assert len(skipped) == (1 if remainder else 0), (n, batch_size, skipped)
        if remainder:
            assert f"({2 * remainder} examples)" in skipped[0]


def test_validation_split_remainder_is_skipped():
    # 27 examples, 20% held out: 21 train (5 of 4, and 1 skipped), 6 validate.
    model, recorder, expected, skipped = fit_and_expect(
        n=27, batch_size=4, window=None, epochs=1, validation_split=0.2
    )
    assert int(numpy(model.optimizer.iterations)) == 5
    assert "(1 examples)" in skipped[0]
    x, y, params = examples(0, 27)
    expected = reference.backward_sgd(
        reference.initial_state(params, 0.0), full_batches(x[:21], y[:21], 4),
        [LEARNING_RATE] * 5, window=None,
    )
    assert max_error(trained_states(recorder), expected) <= 1e-6


def test_data_smaller_than_one_batch_is_one_batch():
    model, recorder, expected, skipped = fit_and_expect(n=3, batch_size=32, window=2, epochs=3)
    assert int(numpy(model.optimizer.iterations)) == 3
    assert model.replay_buffer is not None and not skipped
    assert max_error(recorder.states, expected) <= 1e-6


@pytest.mark.parametrize("window", [None, 2])
def test_train_on_batch_skips_a_shorter_batch_and_refuses_a_larger_one(window):
    x, y, params = examples(3, 12)
    x, y = x.astype("float32"), y.astype("float32")
    model = make_mlp(params)
    max_steps = 8 if window is None else None
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=window, max_steps=max_steps), loss="mse")
    model.train_on_batch(x[:4], y[:4])
    model.train_on_batch(x[4:8], y[4:8])
    before = [numpy(v) for v in model.variables]
    with pytest.warns(UserWarning, match=r"skipped 1 partial batch\(es\) \(3 examples\)"):
        logs = model.train_on_batch(x[8:11], y[8:11], return_dict=True)
    assert set(logs) == {"loss"}
    with pytest.raises(ValueError, match="holds batches of 4 examples.*Received: a batch of 5"):
        model.train_on_batch(x[:5], y[:5])
    for a, b in zip(before, [numpy(v) for v in model.variables], strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(numpy(model.optimizer.iterations)) == 2


def test_train_on_batch_in_an_index_buffered_run_is_refused_with_the_fix():
    x, y, params = examples(4, 8)
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1), loss="mse")
    model.fit(x.astype("float32"), y.astype("float32"), batch_size=4, verbose=0)
    before = [numpy(v) for v in model.variables]
    with pytest.raises(ValueError, match=r"index_buffering=False"):
        model.train_on_batch(x[:4].astype("float32"), y[:4].astype("float32"))
    for a, b in zip(before, [numpy(v) for v in model.variables], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("window", [None, 2])
def test_another_batch_size_in_a_later_fit_starts_a_new_run_against_the_reference(window):
    x, y, params = examples(5, 16)
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(LEARNING_RATE, window=window), loss="mse")
    model.fit(x.astype("float32"), y.astype("float32"), batch_size=4, verbose=0, shuffle=False)
    first = reference.backward_sgd(
        reference.initial_state(params, 0.0), full_batches(x, y, 4), [LEARNING_RATE] * 4,
        window=window,
    )
    # The new run's S_0 is the output iterate the first fit() left in the model.
    new_run = reference.backward_sgd(
        reference.initial_state(first[-1]["params"], 0.0), full_batches(x, y, 8) * 2,
        [LEARNING_RATE] * 4, window=window,
    )
    recorder = Recorder()
    with pytest.warns(UserWarning, match="holds batches of 4 examples and this fit.. has batches of 8"):
        model.fit(x.astype("float32"), y.astype("float32"), batch_size=8, verbose=0,
                  shuffle=False, callbacks=[recorder])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the same batch size: the same run
        model.fit(x.astype("float32"), y.astype("float32"), batch_size=8, verbose=0,
                  shuffle=False, callbacks=[recorder])
    assert int(numpy(model.optimizer.iterations)) == 8
    assert model.optimizer.run_state.batch_size == 8
    assert max_error(recorder.states, new_run) <= 1e-6


@pytest.mark.parametrize("window", [None, 2])
def test_a_run_started_by_another_batch_size_saves_and_resumes_bitwise(window, tmp_path):
    x, y, params = examples(8, 16)
    x, y = x.astype("float32"), y.astype("float32")
    model = make_mlp(params)
    max_steps = None if window is not None else 12
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(LEARNING_RATE, window=window, max_steps=max_steps),
        loss="mse",
    )
    model.fit(x, y, batch_size=4, verbose=0, shuffle=False)
    with pytest.warns(UserWarning, match="a new run starts"):
        model.fit(x, y, batch_size=8, verbose=0, shuffle=False)
    path = str(tmp_path / "model.keras")
    model.save(path)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    loaded = keras.saving.load_model(path)
    loaded.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert int(numpy(loaded.optimizer.iterations)) == 10
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_smaller_batches_in_a_row_are_refused_where_one_remainder_per_epoch_is_skipped():
    
    x, y, params = examples(6, 16)
    x, y = x.astype("float32"), y.astype("float32")
    model = make_mlp(params)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    # 4, 4, 2 per epoch: the remainder at each epoch's end is skipped.
    model.fit(Batches([(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:10], y[8:10])]), epochs=2,
              verbose=0, shuffle=False)
    assert int(numpy(model.optimizer.iterations)) == 4
    before = [numpy(v) for v in model.variables]
    # A dataset of batches of 2: skipping them all would train nothing.
    smaller = Batches([(x[i : i + 2], y[i : i + 2]) for i in range(0, 16, 2)])
    with pytest.raises(ValueError, match=r"two batches in a row were shorter.*batches of 2 and 2"):
        model.fit(smaller, verbose=0, shuffle=False)
    for a, b in zip(before, [numpy(v) for v in model.variables], strict=True):
        np.testing.assert_array_equal(a, b)
    model.fit(x, y, batch_size=4, verbose=0, shuffle=False)  # the run goes on
    assert int(numpy(model.optimizer.iterations)) == 8


def test_partial_batches_counts():
    skipped = PartialBatches()
    assert skipped.admits(4, None) and skipped.admits(4, 4) and skipped.admits(None, 4)
    assert not skipped.admits(1, 4) and skipped.admits(4, 4) and not skipped.admits(3, 4)
    assert (skipped.batches, skipped.examples) == (2, 4)
    with pytest.raises(ValueError, match="Received: batches of 3 and 2 examples"):
        skipped.admits(2, 4)
    with pytest.raises(ValueError, match="Received: a batch of 5 examples"):
        skipped.admits(5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PartialBatches().warn()  # nothing skipped: no warning
