"""A refused load changes nothing: weights, optimizer variables and the run are as before, bit for bit.

Keras loads a file object by object and raises the first refusal only after
every other object has loaded; keras_bsgd models load all or nothing
(`keras_bsgd.models.AllOrNothingLoad`, `keras_bsgd.optimizer.all_or_nothing`).
"""

import shutil
import zipfile
import zlib

import h5py
import keras
import numpy as np
import pytest
import keras_bsgd

ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
N, BATCH = 32, 8
BASE = dict(learning_rate=0.05, momentum=0.5)


def make_model(seed=0, width=6):
    keras.utils.set_random_seed(seed)
    return keras_bsgd.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(width, activation="tanh"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1),
        ]
    )


def data(start=0):
    rng = np.random.default_rng(start)
    return rng.normal(size=(N, 3)).astype("float32"), rng.normal(size=(N, 1)).astype("float32")


def compiled(optimizer, seed=0, width=6):
    model = make_model(seed, width)
    model.compile(optimizer=optimizer, loss="mse")
    return model


def fit(model, start=0):
    x, y = data(start)
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)


def state(model):
    """Every array of the training state: model, metrics, optimizer, replay buffer."""
    variables = model.variables + model.metrics_variables + model.optimizer.variables
    if model.replay_buffer is not None:
        variables += model.replay_buffer.variables
    unique = {id(v): v for v in variables}
    return [np.array(keras.ops.convert_to_numpy(v)) for v in unique.values()]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def save(model, path):
    if str(path).endswith(".keras"):
        model.save(path)
    else:
        model.save_weights(path)


def as_format_1(path):
    """Makes a file look written by keras-bsgd 0.1.0: no format version."""

    def drop_version(h5):
        with h5py.File(h5, "r+") as file:
            names = []
            file.visit(names.append)
            (key,) = [n for n in names if n.endswith("replay_buffer:format_version")]
            del file[key]

    if str(path).endswith(".weights.h5"):
        drop_version(path)
        return
    folder = path.parent / "unzipped"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(folder)
    drop_version(folder / "model.weights.h5")
    with zipfile.ZipFile(path, "w") as archive:
        for member in sorted(folder.iterdir()):
            archive.write(member, member.name)
    shutil.rmtree(folder)


# Each family: (the saved model's optimizer and width, the loading model's), one setting apart.
def families(draw_value):
    return {
        "window": lambda: (dict(window=draw_value([2, 3])), dict(window=5)),
        "max_steps": lambda: (dict(max_steps=draw_value([8, 12])), dict(max_steps=16)),
        "replay_every": lambda: (
            dict(window=3, replay_every=draw_value([2, 3])), dict(window=3)
        ),
        "forward_steps": lambda: (
            dict(window=3, forward_steps=draw_value([1, 2])), dict(window=3)
        ),
        "momentum_layout": lambda: (dict(window=3), dict(window=3, momentum=0.0)),
        "ema_layout": lambda: (dict(window=3, use_ema=True), dict(window=3)),
        "keras_sgd_file": lambda: ("sgd", dict(window=3)),
        "format_1": lambda: (dict(window=3), dict(window=3)),
        "layer_shape": lambda: (dict(window=3, width=7), dict(window=3)),
    }


def optimizer_of(settings):
    if settings == "sgd":
        return keras.optimizers.SGD(0.05, momentum=0.5), 6
    settings = dict(settings)
    width = settings.pop("width", 6)
    return keras_bsgd.BackwardSGD(**{**BASE, **settings}), width


FAMILIES = sorted(families(lambda values: values[0]))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_refused_load_leaves_the_model_as_it_was_bitwise(family, tmp_path):
    """Property: over random file mismatches, nothing loads, and the run goes on as if untouched.

    Every family (which setting differs) runs; the file format, whether the
    loading model has trained (a live buffer, a built optimizer) or not (an
    optimizer that builds at its first step), and the saved values are
    drawn at random per family.
    """
    rng = np.random.default_rng(zlib.crc32(family.encode()))
    file_format = str(rng.choice([".keras", ".weights.h5"]))
    target_trained = bool(rng.integers(2))
    saved_settings, target_settings = families(lambda values: values[rng.integers(len(values))])[
        family
    ]()
    path = tmp_path / f"run{file_format}"
    optimizer, width = optimizer_of(saved_settings)
    source = compiled(optimizer, seed=3, width=width)
    fit(source, start=1)
    save(source, path)
    if family == "format_1":
        as_format_1(path)

    def target():
        optimizer, width = optimizer_of(target_settings)
        model = compiled(optimizer, width=width)
        if target_trained:
            fit(model)
        return model

    model, untouched = target(), target()
    before = state(model)
    with pytest.raises(ValueError) as error:
        model.load_weights(path)
    assert "nothing was loaded" in "".join(getattr(error.value, "__notes__", []))
    assert_same(state(model), before)
    # What a load leaves outside variables (the run, a loaded state waiting
    # for the optimizer's build) shows in the steps that follow.
    fit(model, start=2)
    fit(untouched, start=2)
    assert_same(state(model), state(untouched))


def test_a_refused_load_after_a_passing_model_entry_writes_no_buffer(tmp_path):
    """The run is checked and read in the model's own entry, before the layers; a layer refused
    after it must not leave the loaded buffer behind (it is written once everything loaded)."""
    source = compiled(keras_bsgd.BackwardSGD(**BASE, window=3), seed=3, width=7)
    fit(source, start=1)
    save(source, tmp_path / "w.weights.h5")
    model = compiled(keras_bsgd.BackwardSGD(**BASE, window=3))
    fit(model)
    buffer = [np.array(keras.ops.convert_to_numpy(v)) for v in model.replay_buffer.variables]
    with pytest.raises(ValueError, match="expected|shape"):
        model.load_weights(tmp_path / "w.weights.h5")
    assert_same(
        [np.array(keras.ops.convert_to_numpy(v)) for v in model.replay_buffer.variables], buffer
    )
    assert model.replayed_step == 4


@pytest.mark.parametrize("file_format", [".keras", ".weights.h5"])
def test_a_refused_optimizer_layout_leaves_the_model_as_it_was_on_every_backend(
    file_format, tmp_path
):
    """The optimizer layout is refused on both backends, and changes nothing."""
    source = compiled(keras_bsgd.BackwardSGD(**BASE, window=3), seed=3)
    fit(source, start=1)
    save(source, tmp_path / f"run{file_format}")
    model = compiled(keras_bsgd.BackwardSGD(0.05, window=3))
    fit(model)
    untouched = compiled(keras_bsgd.BackwardSGD(0.05, window=3))
    fit(untouched)
    before = state(model)
    with pytest.raises(ValueError, match="holds 23 optimizer variables and this BackwardSGD has 11"):
        model.load_weights(tmp_path / f"run{file_format}")
    assert_same(state(model), before)
    fit(model, start=2)
    fit(untouched, start=2)
    assert_same(state(model), state(untouched))


def test_a_load_that_passes_still_loads_everything(tmp_path):
    """The all-or-nothing wrapper changes nothing for a file that fits."""
    source = compiled(keras_bsgd.BackwardSGD(**BASE, window=3), seed=3)
    fit(source, start=1)
    save(source, tmp_path / "run.weights.h5")
    model = compiled(keras_bsgd.BackwardSGD(**BASE, window=3))
    fit(model)
    model.load_weights(tmp_path / "run.weights.h5")
    assert_same(
        [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights + model.optimizer.state_variables],
        [np.array(keras.ops.convert_to_numpy(v)) for v in source.weights + source.optimizer.state_variables],
    )


@pytest.mark.tensorflow
@pytest.mark.parametrize(
    "saved, loading",
    [(dict(window=3), dict(window=5)), (dict(window=3), dict(window=3, momentum=0.0))],
    ids=["window", "momentum_layout"],
)
def test_a_refused_checkpoint_restore_changes_nothing(saved, loading, tmp_path):
    """`tf.train.Checkpoint` restores the run's `_replay_state` (which refuses) before any variable."""
    import tensorflow as tf

    source = compiled(keras_bsgd.BackwardSGD(**{**BASE, **saved}), seed=3)
    fit(source, start=1)
    path = tf.train.Checkpoint(model=source, optimizer=source.optimizer).save(tmp_path / "run")
    model = compiled(keras_bsgd.BackwardSGD(**{**BASE, **loading}))
    fit(model)
    before = state(model)
    with pytest.raises(ValueError, match="window=3|holds 23 optimizer variables"):
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).restore(path)
    assert_same(state(model), before)
