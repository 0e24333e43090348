"""`keras_bsgd.wrap`, functional and subclassed `keras_bsgd.Model`, and saving."""

import keras
import numpy as np
import pytest

import keras_bsgd
from tests import reference
from tests.trajectories import as_dataset
from tests.trajectories import make_stream
from tests.trajectories import max_relative_error
from tests.trajectories import run


def plain_functional(params):
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(5, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    model.set_weights([p.astype("float32") for p in params])
    return model


def plain_sequential(params):
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(2)]
    )
    model.set_weights([p.astype("float32") for p in params])
    return model


def io(model):
    return model.inputs, model.outputs


class Net(keras_bsgd.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(5, activation="tanh")
        self.out = keras.layers.Dense(2)

    def call(self, x):
        return self.out(self.hidden(x))


class PlainNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(5, activation="tanh")
        self.out = keras.layers.Dense(2)

    def call(self, x):
        return self.out(self.hidden(x))


def built(model, params):
    model(np.zeros((1, 3), "float32"))
    model.set_weights([p.astype("float32") for p in params])
    return model


@pytest.mark.parametrize(
    "make",
    [
        lambda p: keras_bsgd.wrap(plain_functional(p)),
        lambda p: keras_bsgd.wrap(plain_sequential(p)),
        lambda p: built(Net(), p),
        lambda p: keras_bsgd.wrap(built(PlainNet(), p)),
        lambda p: keras_bsgd.Model(*io(plain_functional(p))),
    ],
    ids=["wrap-functional", "wrap-sequential", "subclass", "wrap-subclass", "functional"],
)
def test_every_model_form_runs_backward_sgd(make):
    batches, params = make_stream(seed=11, num_batches=8)
    expected = reference.backward_sgd(
        reference.initial_state(params, 0.0), batches, [0.1] * 8, window=3
    )
    model = make(params)
    assert isinstance(model, keras_bsgd.Model)
    states = run(model, keras_bsgd.BackwardSGD(0.1, window=3), batches, "xla")
    for s, e in zip(states, expected, strict=True):
        assert max_relative_error(s, e) <= 1e-5


@pytest.mark.parametrize("subclassed", [False, True])
def test_wrap_shares_weights_with_the_original(subclassed):
    _, params = make_stream(seed=12, num_batches=1)
    original = built(PlainNet(), params) if subclassed else plain_functional(params)
    model = keras_bsgd.wrap(original)
    assert model.trainable_variables[0] is original.trainable_variables[0]
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    model.fit(np.ones((8, 3), "float32"), np.ones((8, 2), "float32"), batch_size=4, verbose=0)
    np.testing.assert_array_equal(model.get_weights()[0], original.get_weights()[0])
    assert not np.allclose(original.get_weights()[0], params[0])
    assert keras_bsgd.wrap(model) is model


def test_functional_construction_leaves_subclassing_intact():
    _, params = make_stream(seed=12, num_batches=1)
    functional = keras_bsgd.Model(*io(plain_functional(params)))
    assert isinstance(functional, keras_bsgd.FunctionalModel)
    assert isinstance(built(Net(), params), keras_bsgd.Model)  # still subclassable
    class Bare(keras_bsgd.Model):
        pass

    bare = Bare(*io(plain_functional(params)))  # the functional subclass pattern
    assert isinstance(bare, Bare) and isinstance(bare, keras_bsgd.FunctionalModel)
    assert not issubclass(keras_bsgd.Model, keras_bsgd.FunctionalModel)
    assert not issubclass(Bare, keras_bsgd.FunctionalModel)
    assert isinstance(built(Net(), params), keras_bsgd.Model)


def test_wrap_rejects_unbuilt_models_and_non_models():
    with pytest.raises(ValueError, match="needs a built model"):
        keras_bsgd.wrap(PlainNet())
    with pytest.raises(TypeError, match="Received: model of type Dense"):
        keras_bsgd.wrap(keras.layers.Dense(2))


def test_other_optimizers_train_as_plain_keras():
    batches, params = make_stream(seed=13, num_batches=6)
    ours = run(keras_bsgd.wrap(plain_functional(params)), keras.optimizers.SGD(0.1), batches)
    plain = run(plain_functional(params), keras.optimizers.SGD(0.1), batches)
    for a, b in zip(ours, plain, strict=True):
        assert max_relative_error(a, b) <= 1e-6


@pytest.mark.parametrize("subclassed", [False, True])
def test_keras_file_round_trip(subclassed, tmp_path):
    batches, params = make_stream(seed=14, num_batches=6)
    original = built(PlainNet(), params) if subclassed else plain_functional(params)
    model = keras_bsgd.wrap(original)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, momentum=0.5, window=3), loss="mse")
    model.fit(as_dataset(batches), verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, custom_objects={"PlainNet": PlainNet})
    assert type(loaded) is type(model)
    assert isinstance(loaded.optimizer, keras_bsgd.BackwardSGD)
    assert loaded.optimizer.window == 3
    assert int(loaded.optimizer.iterations) == 6
    # The saved state (on JAX `variables` also lists the live run's ring, which
    # the loaded model rebuilds at its next step).
    for a, b in zip(loaded.optimizer.state_variables, model.optimizer.state_variables, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    x = batches[0][0].astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
