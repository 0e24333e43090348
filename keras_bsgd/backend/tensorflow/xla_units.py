"""What one XLA program covers on this device (`compile(xla_unit=...)`), and XLA:CPU's pitfalls."""

import warnings

import tensorflow as tf

from keras_bsgd.xla_cpu import has_convolution


def on_cpu():
    devices = tf.config.list_logical_devices()
    return not any(d.device_type in ("GPU", "TPU") for d in devices)


def xla_unit(model):
    """The unit `model.compile(xla_unit=...)` chose, `"auto"` resolved for this device and model."""
    if model.xla_unit != "auto":
        return model.xla_unit
    return "map" if on_cpu() and has_convolution(model) else "step"


def warn_random_draws_into_convolutions(model):
    # XLA:CPU fuses a random layer's draws into a convolution that consumes
    # them and recomputes them inside the convolution's loops.
    if on_cpu() and has_convolution(model) and model._seed_states():
        warnings.warn(
            "jit_compile=True on a CPU for a model with convolutions and random "
            "layers (Dropout, noise, augmentation): XLA:CPU runs such models "
            "many times slower than TensorFlow without XLA, in Keras itself too "
            "(measured, Dropout before a Conv2D: 98 ms per Keras SGD step with "
            "XLA, 14 ms without; keras_bsgd's maps alike). Compile with "
            "`jit_compile=False` on CPUs (docs/performance.md, 'XLA on CPUs').",
            stacklevel=3,
        )


def xla_gradients(compiled):
    """`compiled`, with a clear error for a forward pass XLA cannot hold."""

    def gradients(*args):
        try:
            return compiled(*args)
        except RuntimeError as error:
            if "merge_call" not in str(error):
                raise
            raise ValueError(
                "With `jit_compile=True` under a multi-replica strategy, "
                "keras_bsgd compiles each replica's forward and backward pass "
                "with XLA, one device at a time, so the model's forward pass "
                "cannot synchronize replicas (e.g. "
                "`BatchNormalization(synchronized=True)`). Compile with "
                "`jit_compile=False`, or use layers that do not synchronize in "
                "the forward pass. Received: a forward pass that calls "
                "merge_call"
            ) from error

    return gradients
