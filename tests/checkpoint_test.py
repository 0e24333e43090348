"""tf.train.Checkpoint carries the whole training state: resume is bitwise exact."""

import functools

import numpy as np
import pytest
import tensorflow as tf

import keras_bsgd
from tests.saving_test import OPTIMIZERS
from tests.saving_test import make_model
from tests.saving_test import stream
from tests.saving_test import trained_model
from tests.saving_test import uninterrupted

pytestmark = pytest.mark.tensorflow

expected = functools.cache(uninterrupted)


def compiled(kind, seed=0):
    model = make_model(seed)
    model.compile(optimizer=OPTIMIZERS[kind](), loss="mse", jit_compile=True)
    return model


def checkpoint_of(model):
    return tf.train.Checkpoint(model=model, optimizer=model.optimizer)


def seeds(model):
    return [v.numpy()[0] for v in model._seed_states()]


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize("into", ["fresh", "trained"])
def test_tf_checkpoint_resume_is_bitwise_exact(kind, into, tmp_path):
    model = compiled(kind)
    model.fit(stream(0, 56), verbose=0)  # 7 steps: the window has wrapped
    manager = tf.train.CheckpointManager(checkpoint_of(model), tmp_path, max_to_keep=1)
    manager.save()
    if into == "fresh":
        # Other initial weights and layer seeds, no buffer and an unbuilt
        # optimizer: everything must come from the checkpoint.
        saved_seeds, model = seeds(model), compiled(kind, seed=5)
        assert seeds(model) != saved_seeds
    else:
        # The live buffer, anchor and counters move on and must be rewound.
        model.fit(stream(56, 80), verbose=0)
    status = checkpoint_of(model).restore(manager.latest_checkpoint)
    if into == "fresh":
        assert seeds(model) == saved_seeds
    model.fit(stream(56, 160), verbose=0)
    status.assert_consumed()
    assert int(model.optimizer.iterations) == 20
    for a, b in zip(model.get_weights(), expected(kind), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "saved, restored, match",
    [
        (dict(window=3), dict(window=8), "window=3.*window=8"),
        (dict(max_steps=20), dict(max_steps=30), "max_steps=20.*max_steps=30"),
        # TF would restore the first 10 of 22 variables by position, silently.
        (dict(momentum=0.9, window=3), dict(window=3), "holds 23 .* has 11"),
    ],
)
def test_tf_checkpoint_into_another_optimizer_is_a_clear_error(
    saved, restored, match, tmp_path
):
    model = trained_model(keras_bsgd.BackwardSGD(0.05, **saved))
    path = checkpoint_of(model).save(tmp_path / "ckpt")
    other = make_model()
    other.compile(optimizer=keras_bsgd.BackwardSGD(0.05, **restored), loss="mse")
    with pytest.raises(ValueError, match=match):
        checkpoint_of(other).restore(path)
        # An unbuilt optimizer checks its layout when the first step builds it.
        other.optimizer.build(other.trainable_variables)


def test_exported_model_holds_no_replay_state(tmp_path):
    model = make_model()
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.05, window=2), loss="mse")
    model.export(tmp_path / "exported", verbose=False)
    assert not hasattr(tf.saved_model.load(tmp_path / "exported"), "_replay_state")
    assert "_replay_state" in model._trackable_children("checkpoint")
