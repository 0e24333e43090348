"""Datasets for keras_bsgd's benchmarks: two embedded datasets and offline loading.

The TFDS builders (`BsgdDigits`, `Mnist1d`) are imported on first use, so that
`load_arrays` serves the embedded datasets without TensorFlow or TFDS.
"""

import importlib

from keras_bsgd.datasets.loader import DATASETS
from keras_bsgd.datasets.loader import DatasetInfo
from keras_bsgd.datasets.loader import DatasetNotPreparedError
from keras_bsgd.datasets.loader import info
from keras_bsgd.datasets.loader import load
from keras_bsgd.datasets.loader import load_arrays
from keras_bsgd.datasets.loader import tfds_available

_BUILDERS = {"BsgdDigits": "keras_bsgd.datasets.digits", "Mnist1d": "keras_bsgd.datasets.mnist_1d"}


def __getattr__(name):
    if name not in _BUILDERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_BUILDERS[name]), name)


__all__ = [
    "BsgdDigits",
    "DATASETS",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "Mnist1d",
    "info",
    "load",
    "load_arrays",
    "tfds_available",
]
