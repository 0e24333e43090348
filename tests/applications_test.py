"""Real models no one here wrote, trained a few steps under XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bsgd

pytestmark = pytest.mark.tensorflow


def count_traces(model):
    calls = []
    original = model.train_step

    def counted(data):
        calls.append(1)
        return original(data)

    model.train_step = counted
    return calls


APPLICATIONS = {
    "MobileNetV3Small": keras.applications.MobileNetV3Small,
    "ResNet50": keras.applications.ResNet50,
}


# XLA compiles each for one to two minutes on 2 CPU cores, so each model runs
# in one mode: exact mode shares every code path with windowed mode except
# the anchor advance.
@pytest.mark.slow
@pytest.mark.parametrize("name, window", [("MobileNetV3Small", 2), ("ResNet50", None)])
def test_keras_application_trains_under_xla(name, window):
    model = keras_bsgd.wrap(
        APPLICATIONS[name](input_shape=(32, 32, 3), weights=None, classes=10)
    )
    before = [np.array(v) for v in model.trainable_variables]
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(0.01, momentum=0.9, window=window),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        jit_compile=True,
    )
    traces = count_traces(model)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4 * 4, 32, 32, 3)).astype("uint8")
    y = rng.integers(0, 10, 4 * 4)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4, drop_remainder=True)
    history = model.fit(ds, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert int(model.optimizer.iterations) == 4
    assert 1 <= len(traces) <= 2
    changed = [not np.array_equal(a, np.array(b)) for a, b in zip(before, model.trainable_variables)]
    assert np.mean(changed) > 0.9
    # uint8 images are buffered as uint8.
    assert keras.tree.flatten(model.replay_buffer.spec)[0].dtype == tf.uint8
