"""Index buffering: exact mode on NumPy arrays buffers indices into one `DataStore`."""

import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bsgd
from keras_bsgd import DataStore

pytestmark = pytest.mark.tensorflow

N, BATCH = 48, 8


def make_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,), dtype="uint8")
    hidden = keras.layers.Dense(6, activation="tanh")(keras.layers.Rescaling(1 / 255)(inputs))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dropout(0.2)(hidden))
    return keras_bsgd.Model(inputs, keras.layers.Dense(3)(hidden))


def make_data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 4)).astype("uint8")
    y = rng.integers(0, 3, n)
    return x, y


def compiled(index_buffering=True, seed=0, jit_compile=False, **optimizer_kwargs):
    model = make_model(seed)
    optimizer_kwargs.setdefault("max_steps", 40)
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(0.05, momentum=0.5, **optimizer_kwargs),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
        index_buffering=index_buffering,
    )
    return model


def fits(index_buffering, calls):
    """Runs the `fit()` calls on a fresh model; returns it and its histories."""
    model = compiled(index_buffering)
    histories = []
    for args, kwargs in calls:
        keras.utils.set_random_seed(1)  # the same shuffles for both runs
        histories.append(model.fit(*args, batch_size=BATCH, verbose=0, **kwargs).history)
    return model, histories


def assert_same_runs(calls):
    indexed, indexed_logs = fits(True, calls)
    batched, batched_logs = fits(False, calls)
    assert indexed.data_store is not None and batched.data_store is None
    assert indexed.replay_buffer.spec.is_compatible_with(tf.TensorSpec((BATCH,), "int32"))
    for a, b in zip(indexed.get_weights(), batched.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert indexed_logs == batched_logs
    return indexed


X, Y = make_data()
SW = np.random.default_rng(2).uniform(0.5, 2.0, N).astype("float64")
CASES = {
    "shuffle": ((X, Y), dict(epochs=2)),
    "validation_split": ((X, Y), dict(validation_split=0.5, epochs=2)),
    "class_weight": ((X, Y), dict(class_weight={0: 1.0, 1: 3.0, 2: 0.5}, shuffle="batch")),
    "float64_sample_weight": ((X, Y), dict(sample_weight=SW, validation_data=(X, Y))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_and_logs_equal_batch_buffering_bit_for_bit(case):
    model = assert_same_runs([CASES[case]])
    # The device copy keeps the data's own dtypes; float64 weights become floatx.
    dtypes = [v.dtype.name for v in model.data_store._variables if v is not None]
    assert dtypes[:2] == ["uint8", "int64"]
    assert dtypes[2:] == ([] if case in ("shuffle", "validation_split") else ["float32"])


def test_other_arrays_get_their_own_indices_and_the_same_arrays_no_second_copy():
    other = make_data(seed=7, n=16)
    model = assert_same_runs([((X, Y), {}), (other, {}), ((X.copy(), Y.copy()), {})])
    store = model.data_store
    assert store.size == N + 16 and len(store.fingerprints) == 2
    assert store.nbytes == (N + 16) * (4 + 8)
    assert int(model.optimizer.iterations) == (N + 16 + N) // BATCH


def test_arrays_changed_in_place_count_as_new_data():
    x, y = make_data()
    model = compiled()
    model.fit(x, y, batch_size=BATCH, verbose=0)
    x[0] = 255 - x[0]
    model.fit(x, y, batch_size=BATCH, verbose=0)
    assert model.data_store.size == 2 * N


def test_nonfinite_row_drops_its_batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype("float32")
    y = rng.normal(size=(N, 1)).astype("float32")
    x[13, 2] = np.nan  # in the second batch
    runs = []
    for index_buffering in (True, False):
        keras.utils.set_random_seed(0)
        model = keras_bsgd.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras_bsgd.BackwardSGD(0.05), loss="mse", jit_compile=True,
                      index_buffering=index_buffering)
        model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
        assert model.skipped_batches == 1
        assert int(model.optimizer.iterations) == N // BATCH - 1
        runs.append(model.get_weights())
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_resume_from_keras_file_is_bitwise_exact_and_holds_no_data(tmp_path):
    def first_half(model):
        model.fit(X, Y, batch_size=BATCH, shuffle=False, verbose=0)

    expected = compiled()
    first_half(expected)
    expected.fit(X, Y, batch_size=BATCH, shuffle=False, verbose=0)

    model = compiled()
    first_half(model)
    model.save(tmp_path / "run.keras")
    resumed = keras.models.load_model(tmp_path / "run.keras")
    resumed.fit(X.copy(), Y.copy(), batch_size=BATCH, shuffle=False, verbose=0)
    # Loading into the model that saved it, whose step was traced for its
    # own store, must trace the step again for the loaded one.
    model.fit(X, Y, batch_size=BATCH, shuffle=False, verbose=0)
    model.load_weights(tmp_path / "run.keras")
    model.fit(X, Y, batch_size=BATCH, shuffle=False, verbose=0)
    for run in (resumed, model):
        for a, b in zip(run.get_weights(), expected.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    assert resumed.replay_buffer.spec.is_compatible_with(tf.TensorSpec((BATCH,), "int32"))

    with zipfile.ZipFile(tmp_path / "run.keras") as archive:
        archive.extract("model.weights.h5", tmp_path)
    shapes = {}
    with h5py.File(tmp_path / "model.weights.h5") as f:
        f.visititems(lambda name, obj: shapes.update({name: obj.shape})
                     if isinstance(obj, h5py.Dataset) else None)
    assert not [name for name, shape in shapes.items() if N in shape[:1]]
    fingerprints = [name for name in shapes if name.endswith("replay_data:fingerprints")]
    assert len(fingerprints) == 1 and shapes[fingerprints[0]] == (1, 16)


def test_resume_with_other_arrays_is_a_clear_error(tmp_path):
    model = compiled()
    model.fit(X, Y, batch_size=BATCH, verbose=0)
    model.save(tmp_path / "run.keras")
    resumed = keras.models.load_model(tmp_path / "run.keras")
    x = X.copy()
    x[0, 0] += 1
    with pytest.raises(ValueError, match=(
        f"did not receive: fingerprint {DataStore.fingerprint((X, Y, None))} "
        rf"\({N} examples\).*Received: data with fingerprint"
    )):
        resumed.fit(x, Y, batch_size=BATCH, verbose=0)


def test_other_input_in_an_index_buffered_run_is_a_clear_error():
    model = compiled()
    model.fit(X, Y, batch_size=BATCH, verbose=0)
    ds = tf.data.Dataset.from_tensor_slices((X, Y)).batch(BATCH, drop_remainder=True)
    with pytest.raises(ValueError, match="index_buffering=False.*Received: x of type"):
        model.fit(ds, verbose=0)


def test_windowed_mode_and_strategies_buffer_whole_batches():
    model = compiled(window=3, max_steps=None)
    model.fit(X, Y, batch_size=BATCH, verbose=0)
    assert model.data_store is None
    assert keras.tree.flatten(model.replay_buffer.spec)[0].shape == (BATCH, 4)

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = make_model()
        model.compile(optimizer=keras_bsgd.BackwardSGD(0.05, max_steps=6),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X, Y, batch_size=BATCH, verbose=0)
    assert model.data_store is None
    assert keras.tree.flatten(model.replay_buffer.spec)[0].dtype == tf.uint8


def test_store_refuses_examples_of_another_structure():
    store = DataStore()
    store.add((np.zeros((4, 3), "float32"), np.zeros(4, "int32"), None))
    with pytest.raises(ValueError, match=r"0: \(3,\) float32.*Received: examples of 0: \(5,\)"):
        store.add((np.zeros((4, 5), "float32"), np.zeros(4, "int32"), None))
