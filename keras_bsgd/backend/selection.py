"""Which trainer the model classes extend: the one of the Keras backend in use.

Each backend's trainer is imported only when that backend is in use, so
that `import keras_bsgd` imports no TensorFlow under JAX.
"""

import importlib

import keras

from keras_bsgd.optimizer import BackwardSGD

SUPPORTED_BACKENDS = ("tensorflow", "jax")


def trainer_class(backend=None):
    """The trainer mixin of a Keras backend.

    Args:
        backend: A Keras backend name, or `None` for
            `keras.backend.backend()`. Defaults to `None`.

    Returns:
        The backend's `ReplayTrainer`, or `UnsupportedBackendTrainer` for a
        backend keras_bsgd has no trainer for (in this install).
    """
    backend = keras.backend.backend() if backend is None else backend
    if backend not in SUPPORTED_BACKENDS:
        return UnsupportedBackendTrainer
    module = f"keras_bsgd.backend.{backend}.trainer"
    try:
        return importlib.import_module(module).ReplayTrainer
    except ModuleNotFoundError as error:
        # Only the backend's own trainer may be missing (an install that
        # predates it); a missing dependency of it is a real error.
        if error.name not in (module, module.rpartition(".")[0]):
            raise
        return UnsupportedBackendTrainer


class UnsupportedBackendTrainer:
    """Trainer mixin for a backend without a backward-SGD trainer: it refuses to train.

    The model trains as plain Keras with any other optimizer; with a
    `BackwardSGD` it raises rather than train as forward SGD.
    """

    def fit(self, *args, **kwargs):
        self._check_backend()
        return super().fit(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        self._check_backend()
        return super().train_on_batch(*args, **kwargs)

    def _check_backend(self):
        optimizer = getattr(self, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        if isinstance(optimizer, BackwardSGD):
            backend = keras.backend.backend()
            raise ValueError(
                f"keras_bsgd has no backward-SGD trainer for the {backend!r} "
                "backend in this install. It trains on the backends "
                f"{', '.join(map(repr, SUPPORTED_BACKENDS))}: set "
                "`KERAS_BACKEND` to one of them and install its extra "
                "(`pip install 'keras-bsgd[tensorflow]'`). "
                f"Received: backend={backend!r}"
            )
