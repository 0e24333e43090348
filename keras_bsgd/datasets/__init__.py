"""Datasets for keras_bsgd's benchmarks: two embedded TFDS datasets and offline loading."""

from keras_bsgd.datasets.digits import BsgdDigits
from keras_bsgd.datasets.loader import DATASETS
from keras_bsgd.datasets.loader import DatasetInfo
from keras_bsgd.datasets.loader import DatasetNotPreparedError
from keras_bsgd.datasets.loader import info
from keras_bsgd.datasets.loader import load
from keras_bsgd.datasets.mnist_1d import Mnist1d

__all__ = [
    "BsgdDigits",
    "DATASETS",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "Mnist1d",
    "info",
    "load",
]
