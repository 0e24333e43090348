"""The model's non-trainable state (BatchNorm statistics) in the anchor, however Keras builds the optimizer."""

import gc
import weakref

import keras
import numpy as np

import keras_bsgd


def make_model(with_input):
    keras.utils.set_random_seed(7)
    layers = [
        keras.layers.Dense(4),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(1),
    ]
    if with_input:
        layers.insert(0, keras.Input((3,)))
    model = keras_bsgd.Sequential(layers)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.05, window=3, momentum=0.5), loss="mse")
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(48, 3)).astype("float32"), rng.normal(size=(48, 1)).astype("float32")


def arrays(model):
    # The saved state (on JAX, `optimizer.variables` also holds the run's ring).
    return [np.array(v.numpy()) for v in model.weights + model.optimizer.state_variables]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_the_optimizer_does_not_keep_its_model_alive():
    model = make_model(with_input=True)
    model.fit(*data(), batch_size=8, verbose=0)
    optimizer = model.optimizer
    model_ref = weakref.ref(model)
    del model
    gc.collect()
    assert model_ref() is None
    assert len(optimizer.anchor_model_state) == 2


def test_an_optimizer_built_before_its_lazily_built_model_gets_the_anchor_of_its_state():
    # Keras' documented way to restore an optimizer: build it, then load.
    late = make_model(with_input=False)
    late.build((None, 3))
    late.optimizer.build(late.trainable_variables)
    assert late.optimizer.anchor_model_state == []
    early = make_model(with_input=True)
    for model in (late, early):
        model.fit(*data(), batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert len(late.optimizer.anchor_model_state) == 2
    assert [v.shape for v in late.optimizer.variables] == [
        v.shape for v in early.optimizer.variables
    ]
    assert_same(arrays(late), arrays(early))


def test_a_file_loads_into_an_optimizer_built_before_its_lazily_built_model(tmp_path):
    x, y = data()
    trained = make_model(with_input=True)
    trained.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    path = str(tmp_path / "run.weights.h5")
    trained.save_weights(path)
    loaded = make_model(with_input=False)
    loaded.build((None, 3))
    loaded.optimizer.build(loaded.trainable_variables)
    loaded.load_weights(path)
    assert_same(arrays(loaded), arrays(trained))
    for model in (trained, loaded):
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    assert_same(arrays(loaded), arrays(trained))
