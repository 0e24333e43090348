"""Saving and exact resume: the buffer, anchor, counters and seeds survive."""

import os
import pathlib
import pickle
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bsgd

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras_bsgd.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(6, activation="tanh"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1),
        ]
    )


def stream(start, stop):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 3)).astype("float32")
    y = rng.normal(size=(160, 1)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x[start:stop], y[start:stop])).batch(
        8, drop_remainder=True
    )


OPTIMIZERS = {
    "exact": lambda: keras_bsgd.BackwardSGD(0.05, momentum=0.5, max_steps=20),
    "window": lambda: keras_bsgd.BackwardSGD(0.05, momentum=0.5, nesterov=True, window=3),
}


def uninterrupted(kind):
    model = make_model()
    model.compile(optimizer=OPTIMIZERS[kind](), loss="mse", jit_compile=True)
    model.fit(stream(0, 160), verbose=0)
    return model.get_weights()


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_resume_from_keras_file_in_a_fresh_process_is_bitwise_exact(kind, tmp_path):
    model = make_model()
    model.compile(optimizer=OPTIMIZERS[kind](), loss="mse", jit_compile=True)
    model.fit(stream(0, 56), verbose=0)  # 7 steps: the window has wrapped
    model.save(tmp_path / "run.keras")
    script = (
        "import sys, numpy as np, keras\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from tests.saving_test import stream\n"
        "model = keras.models.load_model(sys.argv[2])\n"
        "model.fit(stream(56, 160), verbose=0)\n"
        "np.savez(sys.argv[3], *model.get_weights(), it=int(model.optimizer.iterations))\n"
    )
    out = tmp_path / "resumed.npz"
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    done = subprocess.run(
        [sys.executable, "-c", script, str(ROOT), str(tmp_path / "run.keras"), str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = np.load(out)
    assert int(resumed["it"]) == 20
    for i, expected in enumerate(uninterrupted(kind)):
        np.testing.assert_array_equal(resumed[f"arr_{i}"], expected)


class Interrupt(keras.callbacks.Callback):
    def __init__(self, at_step):
        super().__init__()
        self.at_step = at_step
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at_step:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_backup_and_restore_after_an_interruption(kind, tmp_path):
    def epochs():
        return stream(0, 160).take(4)  # 4 steps per epoch, 5 epochs

    model = make_model()
    model.compile(optimizer=OPTIMIZERS[kind](), loss="mse", jit_compile=True)
    model.fit(epochs(), epochs=5, verbose=0)
    expected = model.get_weights()

    backup = keras.callbacks.BackupAndRestore(tmp_path / "backup")
    model = make_model()
    model.compile(optimizer=OPTIMIZERS[kind](), loss="mse", jit_compile=True)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(epochs(), epochs=5, verbose=0, callbacks=[backup, Interrupt(11)])
    model = make_model(seed=1)  # a new process would start from other weights
    model.compile(optimizer=OPTIMIZERS[kind](), loss="mse", jit_compile=True)
    model.fit(epochs(), epochs=5, verbose=0, callbacks=[backup])
    for a, b in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_array_equal(a, b)


def compiled_model(optimizer, seed=0, build=True):
    """A fresh model compiled with `optimizer`, built so that it can load weights."""
    model = make_model(seed)
    model.compile(optimizer=optimizer, loss="mse")
    if build:
        model.optimizer.build(model.trainable_variables)
    return model


def trained_model(optimizer, stop=40):
    """A model trained on the first `stop` examples of the stream."""
    model = compiled_model(optimizer, build=False)
    model.fit(stream(0, stop), verbose=0)
    return model


def test_weights_only_checkpoint_restores_optimizer_and_buffer(tmp_path):
    model = trained_model(OPTIMIZERS["window"](), stop=56)
    model.save_weights(tmp_path / "w.weights.h5")
    model.fit(stream(56, 160), verbose=0)
    expected = model.get_weights()

    other = compiled_model(OPTIMIZERS["window"](), seed=5)
    other.load_weights(tmp_path / "w.weights.h5")
    other.fit(stream(56, 160), verbose=0)
    for a, b in zip(other.get_weights(), expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_loading_with_another_window_is_a_clear_error(tmp_path):
    trained_model(keras_bsgd.BackwardSGD(0.05, window=3)).save_weights(tmp_path / "w.weights.h5")
    other = compiled_model(keras_bsgd.BackwardSGD(0.05, window=8))
    with pytest.raises(ValueError, match="window=3.*window=8"):
        other.load_weights(tmp_path / "w.weights.h5")


def test_loading_another_optimizer_layout_is_a_clear_error(tmp_path):
    trained_model(keras_bsgd.BackwardSGD(0.05, momentum=0.9, window=3)).save_weights(
        tmp_path / "w.weights.h5"
    )
    other = compiled_model(keras_bsgd.BackwardSGD(0.05, window=3))
    with pytest.raises(ValueError, match="holds 22 optimizer variables and this BackwardSGD has 10"):
        other.load_weights(tmp_path / "w.weights.h5")


def test_tf_checkpoint_and_pickle(tmp_path):
    model = trained_model(OPTIMIZERS["window"]())
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    path = checkpoint.save(tmp_path / "ckpt")
    saved = [np.array(v) for v in model.optimizer.variables]
    model.fit(stream(40, 80), verbose=0)
    checkpoint.restore(path)
    for a, b in zip(model.optimizer.variables, saved, strict=True):
        np.testing.assert_array_equal(np.array(a), b)

    optimizer = pickle.loads(pickle.dumps(model.optimizer))
    assert isinstance(optimizer, keras_bsgd.BackwardSGD) and optimizer.window == 3
    compiled_model(optimizer)  # its state is restored when it builds
    for a, b in zip(optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    clone = pickle.loads(pickle.dumps(model))
    assert isinstance(clone, keras_bsgd.Sequential)
    for a, b in zip(clone.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_loaded_into_an_unbuilt_optimizer_is_applied_when_it_builds(tmp_path):
    model = trained_model(OPTIMIZERS["window"]())
    model.save_weights(tmp_path / "w.weights.h5")
    other = compiled_model(OPTIMIZERS["window"](), build=False)
    other.load_weights(tmp_path / "w.weights.h5")
    assert not other.optimizer.built
    other.optimizer.build(other.trainable_variables)
    for a, b in zip(other.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
