"""How the steps run (`xla_unit`, `index_buffering`): set at `compile()`, saved with it."""

import warnings

import keras
import numpy as np
import pytest

import keras_bsgd


def small_model():
    keras.utils.set_random_seed(0)
    return keras_bsgd.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 3)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")


def test_compile_sets_the_execution_settings_and_saving_keeps_them(tmp_path):
    model = small_model()
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, max_steps=8), loss="mse",
                  xla_unit="map", index_buffering=False)
    assert (model.xla_unit, model.index_buffering) == ("map", False)
    model.fit(*data(), batch_size=4, verbose=0)
    assert model.data_store is None  # whole batches buffered
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert (loaded.xla_unit, loaded.index_buffering) == ("map", False)
    assert "xla_unit" not in loaded.optimizer.get_config()


def test_defaults():
    model = small_model()
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, max_steps=8), loss="mse")
    assert (model.xla_unit, model.index_buffering) == ("auto", True)
    model.fit(*data(), batch_size=4, verbose=0)
    assert model.data_store is not None


def test_the_old_spelling_warns_with_the_fix_and_still_applies():
    with pytest.warns(UserWarning, match=r"model.compile\(\.\.\., index_buffering=False\)"):
        optimizer = keras_bsgd.BackwardSGD(0.1, max_steps=8, index_buffering=False)
    model = small_model()
    model.compile(optimizer=optimizer, loss="mse")
    assert model.index_buffering is False
    model.fit(*data(), batch_size=4, verbose=0)
    assert model.data_store is None
    # Defaults in the old place (files saved before the move) do not warn.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras_bsgd.BackwardSGD(0.1, xla_unit="auto", index_buffering=True)


def test_two_different_values_are_refused_before_compiling():
    with pytest.warns(UserWarning):
        optimizer = keras_bsgd.BackwardSGD(0.1, xla_unit="step")
    model = small_model()
    with pytest.raises(ValueError, match=r"set twice.*Received: compile\(xla_unit='map'\), "
                                         r"BackwardSGD\(xla_unit='step'\)"):
        model.compile(optimizer=optimizer, loss="mse", xla_unit="map")
    assert not model.compiled


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(xla_unit="program"), ValueError, r"Received: xla_unit='program'"),
        (dict(index_buffering="yes"), TypeError, r"Received: index_buffering='yes'"),
    ],
)
def test_bad_values_are_refused_naming_them(kwargs, error, match):
    model = small_model()
    with pytest.raises(error, match=match):
        model.compile(optimizer=keras_bsgd.BackwardSGD(0.1), loss="mse", **kwargs)
    with pytest.raises(error, match=match):
        keras_bsgd.BackwardSGD(0.1, **kwargs)

