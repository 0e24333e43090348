"""keras_bsgd: backward-SGD (arXiv 2502.01557) for Keras 3."""

import importlib

# Before anything imports TensorFlow: the command line starts without its C++ logs.
from keras_bsgd import native_logs

native_logs.quiet_for_command_line()

from keras_bsgd.optimizer import BackwardSGD  # noqa: E402
from keras_bsgd.models import FunctionalModel  # noqa: E402
from keras_bsgd.models import Model  # noqa: E402
from keras_bsgd.models import Sequential  # noqa: E402
from keras_bsgd.models import WrappedModel  # noqa: E402
from keras_bsgd.models import wrap  # noqa: E402

__version__ = "0.2.0"

# TensorFlow-backend classes, imported on first access so that `import
# keras_bsgd` imports no TensorFlow under another backend.
_TENSORFLOW_EXPORTS = {
    "DataStore": "keras_bsgd.backend.tensorflow.data_store",
    "ReplayBuffer": "keras_bsgd.backend.tensorflow.buffer",
}


def __getattr__(name):
    if name in _TENSORFLOW_EXPORTS:
        return getattr(importlib.import_module(_TENSORFLOW_EXPORTS[name]), name)
    raise AttributeError(f"module 'keras_bsgd' has no attribute {name!r}")


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
