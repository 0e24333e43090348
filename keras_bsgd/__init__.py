"""keras_bsgd: backward-SGD (arXiv 2502.01557) for Keras 3 on TensorFlow."""

from keras_bsgd.buffer import ReplayBuffer
from keras_bsgd.data_store import DataStore
from keras_bsgd.optimizer import BackwardSGD
from keras_bsgd.trainer import FunctionalModel
from keras_bsgd.trainer import Model
from keras_bsgd.trainer import Sequential
from keras_bsgd.trainer import WrappedModel
from keras_bsgd.trainer import wrap

__version__ = "0.1.0"

__all__ = [
    "BackwardSGD",
    "DataStore",
    "FunctionalModel",
    "Model",
    "ReplayBuffer",
    "Sequential",
    "WrappedModel",
    "wrap",
]
