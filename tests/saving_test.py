"""Saving and exact resume: the buffer, anchor, counters and seeds survive.

On both backends, except `tf.train.Checkpoint` and string batches
(TensorFlow only). Files across backends: `tests/cross_backend_saving_test.py`.
"""

import os
import pathlib
import pickle
import signal
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

import keras_bsgd

ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
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


def arrays(start, stop):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 3)).astype("float32")
    y = rng.normal(size=(160, 1)).astype("float32")
    return x[start:stop], y[start:stop]


class Batches(keras.utils.PyDataset):
    """Batches of 8 of `arrays(start, stop)`, whole batches only (no index buffering).

    Keras shuffles a PyDataset's batches unless `fit(shuffle=False)`.
    """

    def __init__(self, start, stop):
        super().__init__()
        self.x, self.y = arrays(start, stop)

    def __len__(self):
        return len(self.x) // 8

    def __getitem__(self, i):
        return self.x[8 * i : 8 * (i + 1)], self.y[8 * i : 8 * (i + 1)]


def stream(start, stop):
    """Examples `start:stop` in batches of 8: a `tf.data.Dataset` on TensorFlow, else a PyDataset."""
    if not ON_TENSORFLOW:
        return Batches(start, stop)
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(arrays(start, stop)).batch(8, drop_remainder=True)


OPTIMIZERS = {
    "exact": lambda: keras_bsgd.BackwardSGD(0.05, momentum=0.5, max_steps=20),
    "window": lambda: keras_bsgd.BackwardSGD(0.05, momentum=0.5, nesterov=True, window=3),
}


def uninterrupted(kind):
    model = make_model()
    model.compile(optimizer=OPTIMIZERS[kind](), loss="mse", jit_compile=True)
    model.fit(stream(0, 160), shuffle=False, verbose=0)
    return model.get_weights()


def run_script(script, *args, timeout=300):
    """Runs `script` in a fresh Python process: `sys.argv[1]` is the repository root.

    A script that outlives `timeout` seconds is killed (and the test fails
    with `subprocess.TimeoutExpired`).
    """
    return subprocess.run(
        [sys.executable, "-c", script, str(ROOT), *(str(a) for a in args)],
        env=dict(os.environ, KERAS_BACKEND=keras.backend.backend()),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_resume_from_keras_file_in_a_fresh_process_is_bitwise_exact(kind, tmp_path):
    model = make_model()
    model.compile(optimizer=OPTIMIZERS[kind](), loss="mse", jit_compile=True)
    model.fit(stream(0, 56), shuffle=False, verbose=0)  # 7 steps: the window has wrapped
    model.save(tmp_path / "run.keras")
    script = (
        "import sys, numpy as np, keras\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from tests.saving_test import stream\n"
        "model = keras.models.load_model(sys.argv[2])\n"
        "model.fit(stream(56, 160), shuffle=False, verbose=0)\n"
        "np.savez(sys.argv[3], *model.get_weights(), it=int(model.optimizer.iterations))\n"
    )
    out = tmp_path / "resumed.npz"
    done = run_script(script, tmp_path / "run.keras", out)
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


def epochs():
    return stream(0, 32)  # 4 steps per epoch, the same 4 batches


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_backup_and_restore_after_an_interruption(kind, tmp_path):
    model = make_model()
    model.compile(optimizer=OPTIMIZERS[kind](), loss="mse", jit_compile=True)
    model.fit(epochs(), epochs=5, shuffle=False, verbose=0)
    expected = model.get_weights()

    backup = keras.callbacks.BackupAndRestore(tmp_path / "backup")
    model = make_model()
    model.compile(optimizer=OPTIMIZERS[kind](), loss="mse", jit_compile=True)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(epochs(), epochs=5, shuffle=False, verbose=0, callbacks=[backup, Interrupt(11)])
    model = make_model(seed=1)  # a new process would start from other weights
    model.compile(optimizer=OPTIMIZERS[kind](), loss="mse", jit_compile=True)
    model.fit(epochs(), epochs=5, shuffle=False, verbose=0, callbacks=[backup])
    for a, b in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_backup_and_restore_of_an_index_buffered_run(tmp_path):
    # Exact mode on NumPy arrays buffers example indices: the restored run
    # gathers them from the arrays this fit() got.
    x, y = arrays(0, 32)

    def fit(seed, callbacks=()):
        model = make_model(seed)
        model.compile(optimizer=OPTIMIZERS["exact"](), loss="mse")
        model.fit(x, y, batch_size=8, epochs=5, shuffle=False, verbose=0, callbacks=list(callbacks))
        return model

    expected = fit(0).get_weights()
    backup = keras.callbacks.BackupAndRestore(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(0, [backup, Interrupt(11)])
    model = fit(1, [backup])
    assert model.data_store is not None
    for a, b in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_array_equal(a, b)


# Trains 5 epochs of `epochs()` with a backup every epoch ("epoch"), every
# `int` steps (BackupAndRestore), or every epoch through a
# tf.train.CheckpointManager ("manager"), and dies with SIGKILL after step
# `kill_at` (0: never). Run again, it resumes from the backup.
KILLED_RUN = """
import os, signal, sys
import keras, numpy as np
sys.path.insert(0, sys.argv[1])
from tests.saving_test import OPTIMIZERS, epochs, make_model
kind, save, backup, kill_at, out = sys.argv[2:7]

class KillAt(keras.callbacks.Callback):
    # Dies like a preempted machine: no exception, no on_train_end, no cleanup.
    seen = 0
    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

model = make_model()
model.compile(optimizer=OPTIMIZERS[kind](), loss="mse", jit_compile=True)
initial_epoch = 0
if save == "manager":
    import tensorflow as tf
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(checkpoint, backup, max_to_keep=2)
    checkpoint.restore(manager.latest_checkpoint)
    initial_epoch = int(model.optimizer.iterations) // 4
    backup_callback = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: manager.save()
    )
else:
    backup_callback = keras.callbacks.BackupAndRestore(
        backup, save_freq=save if save == "epoch" else int(save)
    )
model.fit(epochs(), epochs=5, initial_epoch=initial_epoch, shuffle=False, verbose=0,
          callbacks=[backup_callback, KillAt()])
np.savez(out, *model.get_weights(), it=int(model.optimizer.iterations))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "save", ["epoch", "2", pytest.param("manager", marks=pytest.mark.tensorflow)]
)
def test_resume_after_the_process_is_killed(save, tmp_path):
    backup, out = tmp_path / "backup", tmp_path / "final.npz"
    killed = run_script(KILLED_RUN, "window", save, backup, 11, out)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not out.exists()
    resumed = run_script(KILLED_RUN, "window", save, backup, 0, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed = np.load(out)

    model = make_model()
    model.compile(optimizer=OPTIMIZERS["window"](), loss="mse", jit_compile=True)
    if save == "2":
        # The last backup is at step 10, inside the third epoch. Keras 3.15's
        # BackupAndRestore records the epoch but not the batch, so the
        # resumed run starts that epoch again from its first batch: from the
        # state of step 10, for any optimizer.
        model.fit(epochs(), epochs=2, shuffle=False, verbose=0)
        model.fit(stream(0, 16), shuffle=False, verbose=0)
        model.fit(epochs(), epochs=3, shuffle=False, verbose=0)
    else:
        model.fit(epochs(), epochs=5, shuffle=False, verbose=0)
    assert int(resumed["it"]) == int(model.optimizer.iterations)
    for i, expected in enumerate(model.get_weights()):
        np.testing.assert_array_equal(resumed[f"arr_{i}"], expected)


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
    model.fit(stream(0, stop), shuffle=False, verbose=0)
    return model


def test_weights_only_checkpoint_restores_optimizer_and_buffer(tmp_path):
    model = trained_model(OPTIMIZERS["window"](), stop=56)
    model.save_weights(tmp_path / "w.weights.h5")
    model.fit(stream(56, 160), shuffle=False, verbose=0)
    expected = model.get_weights()

    other = compiled_model(OPTIMIZERS["window"](), seed=5)
    other.load_weights(tmp_path / "w.weights.h5")
    other.fit(stream(56, 160), shuffle=False, verbose=0)
    for a, b in zip(other.get_weights(), expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_loading_weights_into_a_model_that_trained_on_restores_its_buffer(tmp_path):
    # The compiled train function holds the live buffer's variables: loading
    # must overwrite them, not start a new buffer the function never reads.
    model = make_model()
    model.compile(optimizer=OPTIMIZERS["window"](), loss="mse", jit_compile=True)
    model.fit(stream(0, 56), shuffle=False, verbose=0)
    model.save_weights(tmp_path / "w.weights.h5")
    model.fit(stream(56, 80), shuffle=False, verbose=0)
    model.load_weights(tmp_path / "w.weights.h5")
    model.fit(stream(56, 160), shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), uninterrupted("window"), strict=True):
        np.testing.assert_array_equal(a, b)


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
    with pytest.raises(ValueError, match="holds 23 optimizer variables and this BackwardSGD has 11"):
        other.load_weights(tmp_path / "w.weights.h5")


def as_format_1(path):
    """Makes a `.weights.h5` file look written by keras-bsgd 0.1.0: no format version."""
    with h5py.File(path, "r+") as file:
        names = []
        file.visit(names.append)
        (key,) = [n for n in names if n.endswith("replay_buffer:format_version")]
        del file[key]


def test_files_of_the_older_state_format_are_refused(tmp_path):
    # Format 1 (keras-bsgd 0.1.0) wrote no format version; its optimizer
    # variables would load by position into other ones.
    path = tmp_path / "w.weights.h5"
    trained_model(keras_bsgd.BackwardSGD(0.05, momentum=0.9, window=3)).save_weights(path)
    as_format_1(path)
    other = compiled_model(keras_bsgd.BackwardSGD(0.05, momentum=0.9, window=3))
    with pytest.raises(ValueError, match="of format 1, and this keras_bsgd reads format 2"):
        other.load_weights(path)


@pytest.mark.parametrize("format_1", [False, True])
def test_weights_load_into_an_uncompiled_model_and_start_a_new_run(format_1, tmp_path):
    # Without a BackwardSGD a file gives weights only (a format-1 file too),
    # and the BackwardSGD compiled afterwards starts its own run from them.
    path = tmp_path / "w.weights.h5"
    trained = trained_model(keras_bsgd.BackwardSGD(0.05, momentum=0.9, window=3))
    trained.save_weights(path)
    if format_1:
        as_format_1(path)
    model = make_model(seed=1)
    model.load_weights(path)
    for a, b in zip(model.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.05, momentum=0.9, window=3), loss="mse")
    model.fit(stream(0, 16), shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 2 and model.gradient_evaluations == 3


@pytest.mark.tensorflow
def test_pickle():
    # tf.train.Checkpoint: tests/checkpoint_test.py.
    model = trained_model(OPTIMIZERS["window"]())
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
    for a, b in zip(
        other.optimizer.state_variables, model.optimizer.state_variables, strict=True
    ):
        np.testing.assert_array_equal(np.array(a), np.array(b))


SCHEDULED = {
    "exact": lambda **kw: keras_bsgd.BackwardSGD(
        0.05, momentum=0.5, max_steps=20, replay_every=3, forward_steps=4, **kw
    ),
    "window": lambda **kw: keras_bsgd.BackwardSGD(
        0.05, momentum=0.5, window=3, replay_every=3, forward_steps=4, **kw
    ),
}


class SaveAt(keras.callbacks.Callback):
    """Saves the model (`.keras`, and on TensorFlow a `tf.train.Checkpoint`) after the given steps."""

    def __init__(self, folder, steps):
        super().__init__()
        self.folder, self.steps, self.seen = folder, steps, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen in self.steps:
            self.model.save(self.folder / f"{self.seen}.keras")
            if not ON_TENSORFLOW:
                return
            import tensorflow as tf

            checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)
            checkpoint.write(str(self.folder / f"{self.seen}.ckpt"))


@pytest.mark.parametrize("kind", list(SCHEDULED))
def test_resume_mid_interval_and_across_the_switch_is_bitwise_exact(kind, tmp_path):
    # replay_every=3, forward_steps=4 over 20 steps: step 2 is in the
    # forward phase, step 7 between the replays of steps 6 and 9 (the
    # model holds S~_6 and the buffer batches 5-7).
    model = make_model()
    model.compile(optimizer=SCHEDULED[kind](), loss="mse", jit_compile=True)
    model.fit(stream(0, 160), shuffle=False, verbose=0, callbacks=[SaveAt(tmp_path, (2, 7))])
    expected = model.get_weights()
    for step in (2, 7):
        from_file = keras.models.load_model(tmp_path / f"{step}.keras")
        assert from_file.replayed_step == (step if step <= 4 else 6)
        resumes = [from_file]
        if ON_TENSORFLOW:
            import tensorflow as tf

            fresh = make_model(seed=3)
            fresh.compile(optimizer=SCHEDULED[kind](), loss="mse", jit_compile=True)
            tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).read(
                str(tmp_path / f"{step}.ckpt")
            )
            resumes.append(fresh)
        for resumed in resumes:
            resumed.fit(stream(8 * step, 160), shuffle=False, verbose=0)
            assert int(resumed.optimizer.iterations) == 20
            for a, b in zip(resumed.get_weights(), expected, strict=True):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "setting, other, match",
    [
        ("replay_every", dict(replay_every=2), "replay_every=3.*replay_every=2"),
        ("forward_steps", dict(forward_steps=0), "forward_steps=4.*forward_steps=0"),
    ],
)
def test_resuming_with_other_replay_settings_is_a_clear_error(setting, other, match, tmp_path):
    model = make_model()
    model.compile(optimizer=SCHEDULED["window"](), loss="mse")
    model.fit(stream(0, 56), shuffle=False, verbose=0)
    model.save_weights(tmp_path / "run.weights.h5")
    settings = {**dict(replay_every=3, forward_steps=4), **other}
    clashing = make_model()
    clashing.compile(
        optimizer=keras_bsgd.BackwardSGD(0.05, momentum=0.5, window=3, **settings), loss="mse"
    )
    clashing.fit(stream(0, 8), shuffle=False, verbose=0)
    # Keras loads every saveable before it raises the first error; keras_bsgd's
    # load_weights puts the state back (tests/atomic_load_test.py).
    with pytest.raises(ValueError, match=match):
        clashing.load_weights(tmp_path / "run.weights.h5")
    assert getattr(clashing.optimizer, setting) == other[setting]


def test_compiled_but_never_trained_model_reloads_and_trains_like_the_original(tmp_path):
    # Plain Keras reloads such a file; its optimizer held only the counter and
    # learning rate when it was saved.
    model = make_model()
    model.compile(optimizer=OPTIMIZERS["window"](), loss="mse")
    model.save(tmp_path / "untrained.keras")
    loaded = keras.models.load_model(tmp_path / "untrained.keras")
    assert int(loaded.optimizer.iterations) == 0
    loaded.fit(stream(0, 80), shuffle=False, verbose=0)
    model.fit(stream(0, 80), shuffle=False, verbose=0)
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def text_model():
    # keras-io "text classification from scratch", end to end: the model
    # takes raw strings.
    keras.utils.set_random_seed(0)
    vectorize = keras.layers.TextVectorization(max_tokens=30, output_sequence_length=6)
    vectorize.adapt(["the cat sat on the mat", "a dog ran in the park", "birds sing"])
    inputs = keras.Input((1,), dtype="string")
    hidden = keras.layers.Embedding(30, 4)(vectorize(inputs))
    hidden = keras.layers.Dropout(0.3)(keras.layers.GlobalAveragePooling1D()(hidden))
    model = keras_bsgd.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer=OPTIMIZERS["window"](), loss="mse", jit_compile=False)
    return model


def texts(start, stop):
    import tensorflow as tf

    words = np.array(["the cat", "a dog ran", "birds sing in the park", "on the mat", "sat"])
    rng = np.random.default_rng(1)
    x = np.array([[" ".join(rng.choice(words, 2))] for _ in range(64)])
    y = rng.normal(size=(64, 1)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x[start:stop], y[start:stop])).batch(
        4, drop_remainder=True
    )


@pytest.mark.tensorflow
@pytest.mark.parametrize("save", ["keras", "checkpoint"])
def test_model_with_string_inputs_saves_and_resumes_bitwise(save, tmp_path):
    model = text_model()
    model.fit(texts(0, 64), shuffle=False, verbose=0)
    expected = model.get_weights()

    model = text_model()
    model.fit(texts(0, 24), shuffle=False, verbose=0)  # 6 steps: the window of 3 has wrapped
    import tensorflow as tf

    assert model.replay_buffer.spec[0].dtype == tf.string
    if save == "keras":
        model.save(tmp_path / "text.keras")
        resumed = keras.models.load_model(tmp_path / "text.keras")
    else:
        path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(
            tmp_path / "ckpt"
        )
        resumed = text_model()
        tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).restore(path)
    resumed.fit(texts(24, 64), shuffle=False, verbose=0)
    for a, b in zip(resumed.get_weights(), expected, strict=True):
        np.testing.assert_array_equal(a, b)
