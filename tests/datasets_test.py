"""Tests of keras_bsgd.datasets: the embedded TFDS builds, their NumPy twins, offline loading.

They run on either backend: `load_arrays` takes the TFDS path on TensorFlow
and the NumPy path on JAX; the tests of TFDS itself need TFDS installed.
"""

import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_bsgd import datasets  # noqa: E402
from keras_bsgd.datasets import sources  # noqa: E402

needs_tfds = pytest.mark.skipif(not datasets.tfds_available(),
                                reason="needs TensorFlow and TFDS installed")

SIZES = {
    "bsgd_digits": {"train": 1437, "test": 360},
    "mnist1d": {"train": 4000, "test": 1000},
}


def _arrays(name, split, data_dir):
    return datasets.load_arrays(name, split, data_dir=data_dir)


def _tfds_arrays(name, split, data_dir):
    ds = datasets.load(name, split, data_dir=data_dir)
    x, y = next(iter(ds.batch(10_000)))
    return x.numpy(), y.numpy()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("name", sorted(SIZES))
@pytest.mark.parametrize("split", ["train", "test"])
def test_sizes_shapes_dtypes_labels(name, split, data_dir):
    x, y = _arrays(name, split, data_dir)
    spec = datasets.info(name)
    assert x.shape == (SIZES[name][split], *spec.input_shape)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert np.all(np.isfinite(x))
    assert set(np.unique(y)) == set(range(10))
    if name == "bsgd_digits":
        assert x.min() == 0.0 and x.max() == 1.0  # 0..16 scaled by 1/16


@needs_tfds
def test_builders_are_real_tfds_builders(data_dir):
    import tensorflow_datasets as tfds

    datasets.load("bsgd_digits", "test", data_dir=data_dir)
    builder = tfds.builder("bsgd_digits", data_dir=data_dir)
    assert isinstance(builder, datasets.BsgdDigits)
    assert builder.info.supervised_keys == ("image", "label")
    assert "Alpaydin" in builder.info.citation
    assert builder.info.splits["train"].num_examples == 1437
    ds = tfds.load("mnist1d", split="test", data_dir=data_dir, as_supervised=True)
    signal, label = next(iter(ds))
    assert signal.shape == (40,) and label.dtype.name == "int64"


def test_digits_split_is_sklearn_order(data_dir):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = _arrays("bsgd_digits", "test", data_dir)
    # TFDS stores examples in its own (deterministic) order; compare as sets.
    expected = digits.images[1437:].reshape(360, -1) / 16.0
    got = x.reshape(360, -1)
    order = np.lexsort(np.c_[expected, digits.target[1437:]].T)
    got_order = np.lexsort(np.c_[got, y].T)
    np.testing.assert_allclose(got[got_order], expected[order], atol=1e-6)


@needs_tfds
@pytest.mark.parametrize("name", sorted(SIZES))
def test_two_builds_are_identical(name, data_dir, tmp_path):
    x1, y1 = _tfds_arrays(name, "train", data_dir)
    x2, y2 = _tfds_arrays(name, "train", str(tmp_path))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_mnist1d_build_keeps_global_rng(tmp_path):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    datasets.load_arrays("mnist1d", "test", data_dir=str(tmp_path))
    assert np.random.rand() == expected


@needs_tfds
@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_unprepared_dataset_fails_fast_and_clearly(name, tmp_path):
    started = time.perf_counter()
    with pytest.raises(datasets.DatasetNotPreparedError, match="never downloads") as info:
        datasets.load(name, "train", data_dir=str(tmp_path))
    assert time.perf_counter() - started < 20
    assert f"tfds build {name}" in str(info.value)
    assert not (tmp_path / "downloads").exists()  # Nothing was fetched.


def test_unknown_dataset_is_a_value_error():
    with pytest.raises(ValueError, match="Received: name='nope'"):
        datasets.load("nope", "train")
    with pytest.raises(ValueError, match="Received: name='nope'"):
        datasets.load_arrays("nope", "train")


@needs_tfds
def test_prepared_real_dataset_loads_as_float_pairs():
    import tensorflow_datasets as tfds

    # tfds' mock stands in for a prepared cifar10 (no data here, no network).
    with tfds.testing.mock_data(num_examples=6):
        x, y = next(iter(datasets.load("cifar10", "train").batch(6)))
    assert x.shape == (6, 32, 32, 3) and x.dtype.name == "float32"
    assert 0.0 <= float(x.numpy().min()) and float(x.numpy().max()) <= 1.0
    assert y.dtype.name == "int64"


@needs_tfds
@pytest.mark.parametrize("name", sorted(SIZES))
@pytest.mark.parametrize("split", ["train", "test"])
def test_numpy_arrays_are_the_tfds_arrays_bitwise(name, split, data_dir):
    # What JAX trains on is what TensorFlow trains on: same order, same bits.
    x, y = _tfds_arrays(name, split, data_dir)
    spec = datasets.info(name)
    x_numpy, y_numpy = sources.load_arrays(name, split, spec.scale)
    assert x_numpy.dtype == x.dtype and y_numpy.dtype == y.dtype
    assert x_numpy.tobytes() == x.tobytes() and y_numpy.tobytes() == y.tobytes()


def test_numpy_path_refuses_a_split_slice():
    with pytest.raises(ValueError, match="Received: split='train\\[:10%\\]'"):
        sources.load_arrays("bsgd_digits", "train[:10%]", 16.0)


def test_numpy_path_needs_no_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['tensorflow_datasets'] = None\n"
        "from keras_bsgd.datasets import sources\n"
        "x, y = sources.load_arrays('bsgd_digits', 'test', 16.0)\n"
        "print(x.shape, y.dtype)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "KERAS_BACKEND": "jax"}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(360, 8, 8, 1) int64"
