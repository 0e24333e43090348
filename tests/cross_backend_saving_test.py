"""A run saved on one backend continues on the other, ending at the float64 reference.

Both trainers write the same file format (`keras_bsgd.saved_run`): this test
saves a run on the backend under test, resumes it in a subprocess on the
other (`KERAS_BACKEND`), and resumes there-saved runs here. The models have
no random layers: the backends key random draws with different seed-counter
strides (docs/backends.md), so a model with Dropout would draw other masks
after the switch, and only a model without them has one reference to end at.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_bsgd
from tests import reference

BACKEND = keras.backend.backend()
OTHER = "jax" if BACKEND == "tensorflow" else "tensorflow"
ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH, BATCHES, RATE = 4, 6, 0.1
# Optimizer settings, compile() settings, and the reference's window and
# forward steps. "indexed" buffers example indices (exact mode on arrays);
# the others whole batches.
KINDS = {
    "window": (dict(window=3, replay_every=2, forward_steps=2), {}, 3, 2),
    "exact": (dict(max_steps=2 * BATCHES), dict(index_buffering=False), None, 0),
    "indexed": (dict(max_steps=2 * BATCHES), {}, None, 0),
}
TOLERANCE = 1e-5


def data():
    """One epoch of `BATCHES` batches, and the MLP's float64 initial parameters."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(BATCH * BATCHES, 3)).astype("float32")
    y = rng.normal(size=(BATCH * BATCHES, 2)).astype("float32")
    return x, y, reference.init_mlp(rng, 3, 5, 2)


def fresh(kind):
    """The model at the reference's initial parameters, compiled for `kind`."""
    _, _, params = data()
    model = keras_bsgd.Sequential(
        [keras.Input((3,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(2)]
    )
    model.set_weights([p.astype("float32") for p in params])
    settings, compile_settings = KINDS[kind][:2]
    model.compile(optimizer=keras_bsgd.BackwardSGD(RATE, momentum=0.5, **settings), loss="mse",
                  **compile_settings)
    return model


def one_epoch(model):
    x, y, _ = data()
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)


def expected_weights(kind):
    """The float64 reference after two epochs."""
    x, y, params = data()
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)] * 2
    _, _, window, forward_steps = KINDS[kind]
    iterates = reference.warm_backward_sgd(
        reference.initial_state(params, 0.5), batches, [RATE] * len(batches),
        window=window, forward_steps=forward_steps, momentum=0.5,
    )
    return iterates[-1]["params"]


def max_error(model, kind):
    return max(
        float(np.abs(np.asarray(a, np.float64) - b).max())
        for a, b in zip(model.get_weights(), expected_weights(kind), strict=True)
    )


# The other backend's side: resumes this backend's file, then saves its own first epoch.
OTHER_SIDE = """
import sys
import keras, numpy as np
sys.path.insert(0, sys.argv[1])
import keras_bsgd
from tests.cross_backend_saving_test import fresh, max_error, one_epoch
kind, incoming, outgoing = sys.argv[2:5]
model = keras.models.load_model(incoming)
one_epoch(model)
print("ERROR", max_error(model, kind), int(model.optimizer.iterations))
model = fresh(kind)
one_epoch(model)
model.save(outgoing)
"""


@pytest.mark.skipif(
    importlib.util.find_spec(OTHER) is None, reason=f"needs {OTHER} for the other side"
)
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_run_saved_on_one_backend_continues_on_the_other(kind, tmp_path):
    model = fresh(kind)
    one_epoch(model)
    model.save(tmp_path / "here.keras")
    done = subprocess.run(
        [sys.executable, "-c", OTHER_SIDE, str(ROOT), kind, tmp_path / "here.keras",
         tmp_path / "there.keras"],
        env=dict(os.environ, KERAS_BACKEND=OTHER, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [l for l in done.stdout.splitlines() if l.startswith("ERROR")]
    _, there_error, there_steps = line.split()

    resumed = keras.models.load_model(tmp_path / "there.keras")
    one_epoch(resumed)
    here_error = max_error(resumed, kind)
    print(f"{kind}: {BACKEND}->{OTHER} {float(there_error):.2e}, {OTHER}->{BACKEND} {here_error:.2e}")
    assert int(there_steps) == int(resumed.optimizer.iterations) == 2 * BATCHES
    assert float(there_error) <= TOLERANCE
    assert here_error <= TOLERANCE
