"""One trainer per Keras backend: `trainer_class()` picks the one the model classes extend."""

from keras_bsgd.backend.selection import SUPPORTED_BACKENDS
from keras_bsgd.backend.selection import UnsupportedBackendTrainer
from keras_bsgd.backend.selection import trainer_class
