"""Runs keras_bsgd on a fixed batch stream and records the state after each step."""

import keras
import numpy as np

import keras_bsgd
from tests import reference

EXECUTION_MODES = {
    "eager": dict(run_eagerly=True),
    "graph": dict(jit_compile=False),
    "xla": dict(jit_compile=True),
}


class StateRecorder(keras.callbacks.Callback):
    """Records trainable weights and momentum slots after every training step."""

    def __init__(self):
        super().__init__()
        self.states = []

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.states.append(
            {
                "params": [v.numpy() for v in self.model.trainable_variables],
                "momentum": [m.numpy() for m in getattr(optimizer, "momentums", [])],
            }
        )


class Batches(keras.utils.PyDataset):
    """The given batches as a `PyDataset`, as they are (never index-buffered)."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


def make_stream(seed, num_batches, batch_size=4, n_in=3, n_out=2):
    """A fixed list of float64 (x, y) batches and the initial MLP parameters."""
    rng = np.random.default_rng(seed)
    batches = [
        (rng.normal(size=(batch_size, n_in)), rng.normal(size=(batch_size, n_out)))
        for _ in range(num_batches)
    ]
    params = reference.init_mlp(rng, n_in, 5, n_out)
    return batches, params


def make_mlp(params, model_class=None):
    """The reference MLP as a Keras model (tanh hidden layer, linear output)."""
    n_in, n_hidden = params[0].shape
    layers = [
        keras.Input((n_in,)),
        keras.layers.Dense(n_hidden, activation="tanh"),
        keras.layers.Dense(params[2].shape[1]),
    ]
    model = (model_class or keras_bsgd.Sequential)(layers)
    model.set_weights([p.astype("float32") for p in params])
    return model


def as_dataset(batches):
    xs = np.concatenate([b[0] for b in batches]).astype("float32")
    ys = np.concatenate([b[1] for b in batches]).astype("float32")
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((xs, ys)).batch(
        len(batches[0][0]), drop_remainder=True
    )


def run(model, optimizer, batches, mode="graph", **compile_kwargs):
    """Fits `model` one epoch over `batches`; returns the per-step states."""
    model.compile(optimizer=optimizer, loss="mse", **EXECUTION_MODES[mode], **compile_kwargs)
    recorder = StateRecorder()
    model.fit(as_dataset(batches), epochs=1, verbose=0, callbacks=[recorder], shuffle=False)
    return recorder.states


def assert_states_equal(states, expected):
    """Asserts two per-step state lists (see `StateRecorder`) are bitwise equal."""
    for a, b in zip(states, expected, strict=True):
        for key in ("params", "momentum"):
            for x, y in zip(a[key], b[key], strict=True):
                np.testing.assert_array_equal(x, y)


def max_relative_error(state, expected):
    """The largest ||a - b|| / max(||b||, 1e-2) over all parameter and momentum arrays.

    The floor keeps float32 rounding in an array that happens to pass near
    zero from reading as a large relative error: the rounding of O(1)
    weights (float32 eps 6e-8) reaches every array through the gradients,
    so an output bias of norm 5.8e-3 held 6.6e-8 absolute error after 24
    steps of window 2 under XLA on an AMD EPYC (1.1e-5 relative). Arrays
    below the floor are compared to 1e-7 absolute at a 1e-5 tolerance.
    """
    errors = [
        np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-2)
        for key in ("params", "momentum")
        for a, b in zip(state[key], expected[key], strict=True)
    ]
    return max(errors)
