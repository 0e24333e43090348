"""keras_bsgd: backward-SGD (arXiv 2502.01557) for Keras 3 on TensorFlow."""

# Before anything imports TensorFlow: the command line starts without its C++ logs.
from keras_bsgd import native_logs

native_logs.quiet_for_command_line()

from keras_bsgd.buffer import ReplayBuffer  # noqa: E402
from keras_bsgd.data_store import DataStore  # noqa: E402
from keras_bsgd.optimizer import BackwardSGD  # noqa: E402
from keras_bsgd.models import FunctionalModel  # noqa: E402
from keras_bsgd.models import Model  # noqa: E402
from keras_bsgd.models import Sequential  # noqa: E402
from keras_bsgd.models import WrappedModel  # noqa: E402
from keras_bsgd.models import wrap  # noqa: E402

__version__ = "0.2.0"

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
