"""The benchmark models, as plain `keras.Model` builders, and their one registry.

`keras_bsgd.wrap(model)` (or the runner) turns any of them into a model
that trains by backward-SGD. `MODELS` names every model of `keras-bsgd
compare` and of the speed benchmark (`keras-bsgd bench`).
"""

import keras


def mlp(input_shape, num_classes, hidden=(64,), name="mlp"):
    """A multilayer perceptron with ReLU hidden layers and logits output.

    Args:
        input_shape: Shape of one example; it is flattened.
        num_classes: Number of output logits.
        hidden: Widths of the hidden layers. Defaults to `(64,)`.
        name: Model name. Defaults to `"mlp"`.

    Returns:
        A `keras.Model` mapping `input_shape` to `num_classes` logits.

    Example:

    >>> model = mlp((8, 8, 1), 10)
    >>> model.output_shape
    (None, 10)
    """
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    for i, width in enumerate(hidden):
        x = keras.layers.Dense(width, activation="relu", name=f"dense_{i}")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def small_cnn(input_shape=(32, 32, 3), num_classes=10):
    """A small CNN: two 3x3 convolution (16, 32 filters) and pooling blocks, a dense head.

    Args:
        input_shape: Image shape. Defaults to `(32, 32, 3)`.
        num_classes: Number of output logits. Defaults to `10`.

    Returns:
        A `keras.Model` outputting logits.

    Example:

    >>> small_cnn().count_params()
    25578
    """
    inputs = keras.Input(input_shape)
    x = inputs
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def _conv_bn(x, filters, kernel, strides=1, relu=True):
    x = keras.layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.layers.ReLU()(x) if relu else x


def _shortcut(x, filters, strides):
    if strides == 1 and x.shape[-1] == filters:
        return x
    return _conv_bn(x, filters, 1, strides, relu=False)


def _basic_block(x, filters, strides):
    y = _conv_bn(x, filters, 3, strides)
    y = _conv_bn(y, filters, 3, relu=False)
    return keras.layers.ReLU()(keras.layers.Add()([y, _shortcut(x, filters, strides)]))


def _bottleneck_block(x, filters, strides):
    y = _conv_bn(x, filters, 1)
    y = _conv_bn(y, filters, 3, strides)
    y = _conv_bn(y, 4 * filters, 1, relu=False)
    shortcut = _shortcut(x, 4 * filters, strides)
    return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))


def _resnet(input_shape, num_classes, block, depths, width, name):
    inputs = keras.Input(input_shape)
    # CIFAR stem (He et al., 2016, §4.2): one 3x3 convolution, no pooling.
    x = _conv_bn(inputs, width, 3)
    for stage, depth in enumerate(depths):
        for i in range(depth):
            strides = 2 if stage > 0 and i == 0 else 1
            x = block(x, width * 2**stage, strides)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def resnet18(input_shape=(32, 32, 3), num_classes=10, width=64):
    """ResNet-18 for 32x32 images: a 3x3 stem and four stages of basic blocks.

    Args:
        input_shape: Image shape. Defaults to `(32, 32, 3)`.
        num_classes: Number of output logits. Defaults to `10`.
        width: Filters of the first stage (doubled at each stage).
            Defaults to `64`.

    Returns:
        A `keras.Model` with BatchNormalization, outputting logits.

    Example:

    >>> resnet18(width=8).output_shape
    (None, 10)
    """
    return _resnet(input_shape, num_classes, _basic_block, (2, 2, 2, 2), width, "resnet18")


def resnet50(input_shape=(32, 32, 3), num_classes=100, width=64):
    """ResNet-50 for 32x32 images: a 3x3 stem and four stages of bottleneck blocks.

    Args:
        input_shape: Image shape. Defaults to `(32, 32, 3)`.
        num_classes: Number of output logits. Defaults to `100`.
        width: Bottleneck filters of the first stage (doubled at each
            stage; block outputs are 4x wider). Defaults to `64`.

    Returns:
        A `keras.Model` with BatchNormalization, outputting logits.

    Example:

    >>> resnet50(width=4).output_shape
    (None, 100)
    """
    return _resnet(input_shape, num_classes, _bottleneck_block, (3, 4, 6, 3), width, "resnet50")


MODELS = {
    # `keras-bsgd compare`'s models, for the datasets of `keras_bsgd.datasets`.
    "linear": lambda input_shape, num_classes: mlp(input_shape, num_classes, (), name="linear"),
    "mlp": lambda input_shape, num_classes: mlp(input_shape, num_classes, (64,)),
    "mlp_fashion": lambda input_shape, num_classes: mlp(
        input_shape, num_classes, (256, 256), name="mlp_fashion"
    ),
    "resnet18": lambda input_shape, num_classes: resnet18(input_shape, num_classes),
    # ResNet-18 at an eighth of its width (177,602 weights for 10 classes): the
    # paper's family at a size whose exact backward-SGD runs in minutes on 2 CPUs.
    "resnet18_w8": lambda input_shape, num_classes: resnet18(input_shape, num_classes, width=8),
    "resnet50": lambda input_shape, num_classes: resnet50(input_shape, num_classes),
    # The speed benchmark's (with `resnet18`), timed on synthetic batches.
    "mlp_1024": lambda input_shape, num_classes: mlp(
        input_shape, num_classes, (1024, 1024), name="mlp_1024"
    ),
    "mlp_tiny": lambda input_shape, num_classes: mlp(
        input_shape, num_classes, (32,), name="mlp_tiny"
    ),
    "cnn": lambda input_shape, num_classes: small_cnn(input_shape, num_classes),
}
"""Model builders by name, each `(input_shape, num_classes) -> keras.Model`."""


def build(name, input_shape, num_classes):
    """Builds the benchmark model `name`.

    Args:
        name: One of `MODELS`: `"linear"` (softmax regression, a convex
            loss), `"mlp"` (one hidden layer of 64, for the
            embedded datasets), `"mlp_fashion"` (two of 256, the paper's
            Fashion-MNIST MLP), `"resnet18"`, `"resnet18_w8"` (at width 8
            instead of 64), `"resnet50"`; and the speed
            benchmark's `"mlp_1024"` (two hidden layers of 1024),
            `"mlp_tiny"` (one of 32, for smoke tests) and `"cnn"`
            (`small_cnn`).
        input_shape: Shape of one example.
        num_classes: Number of output logits.

    Returns:
        A plain `keras.Model` outputting logits.

    Example:

    >>> build("mlp", (40,), 10).count_params()
    3274
    """
    if name not in MODELS:
        raise ValueError(
            f"Unknown model. Expected one of {sorted(MODELS)}. Received: name={name!r}"
        )
    return MODELS[name](tuple(input_shape), num_classes)
