"""XLA:CPU's pitfall that every backend meets: convolution gradients inside a loop.

XLA:CPU emits the gradients of convolutions as a naive loop nest when they sit
inside a loop or conditional rather than at the top of a program
(docs/performance.md, "CNN"), and backward-SGD's replay is such a loop.
"""

import keras

from keras_bsgd import keras_private

CONVOLUTIONS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    keras.layers.ConvLSTM1D,
    keras.layers.ConvLSTM2D,
    keras.layers.ConvLSTM3D,
)


def has_convolution(model):
    """Whether `model` has a convolution layer, at any depth."""
    return any(isinstance(layer, CONVOLUTIONS) for layer in keras_private.nested_layers(model))
