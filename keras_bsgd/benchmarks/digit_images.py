"""Image tasks at Fashion-MNIST's and CIFAR's shapes, rendered from the embedded digits.

No image dataset can be downloaded here, and the paper's model families (an
MLP on Fashion-MNIST, a ResNet-18 on CIFAR-10) need their input shapes.
These tasks are scikit-learn's 1,797 handwritten digits (`bsgd_digits`:
1,437 train, 360 test, 10 classes), re-rendered offline and
deterministically:

* `digits_28x28`: each 8x8 digit resized to 28x28x1 (bilinear), the shape
  of Fashion-MNIST;
* `digits_32x32x3`: each digit resized to 24x24, placed at a random offset
  in a 32x32 canvas, coloured (a random background colour, and a
  foreground whose every channel differs from it by 0.25 to 0.75) with
  Gaussian pixel noise (std 0.05), clipped to [0, 1]: the shape of CIFAR-10,
  with colour and position that the label does not depend on.

They have the shapes of the paper's datasets, not their size or
difficulty: 1,437 training images instead of 50,000-60,000.
"""

import numpy as np

from keras_bsgd.datasets import DatasetInfo

DATASETS = {
    "digits_28x28": DatasetInfo("digits_28x28", (28, 28, 1), 10, 1.0, True),
    "digits_32x32x3": DatasetInfo("digits_32x32x3", (32, 32, 3), 10, 1.0, True),
}
"""The rendered tasks, by name; both from `bsgd_digits`."""

_SEEDS = {"train": 1, "test": 2}


def render(name, x, split):
    """Renders `bsgd_digits` images as the task `name`.

    Args:
        name: One of `DATASETS`.
        x: `bsgd_digits` images, float32 `(examples, 8, 8, 1)` in [0, 1].
        split: `"train"` or `"test"`: the seed of the colours, offsets and
            noise (fixed per split, so every call gives the same images).

    Returns:
        A float32 array of shape `(examples,) + DATASETS[name].input_shape`,
        values in [0, 1].

    Example:

    >>> import numpy as np
    >>> render("digits_32x32x3", np.ones((2, 8, 8, 1), "float32"), "test").shape
    (2, 32, 32, 3)
    """
    if name not in DATASETS:
        raise ValueError(
            f"Unknown task. Expected one of {sorted(DATASETS)}. Received: name={name!r}"
        )
    if split not in _SEEDS:
        raise ValueError(f"`split` must be 'train' or 'test'. Received: split={split!r}")
    x = np.asarray(x, "float32")
    if name == "digits_28x28":
        return resize_bilinear(x, 28, 28).clip(0.0, 1.0)
    rng = np.random.default_rng(_SEEDS[split])
    n = len(x)
    digits = resize_bilinear(x, 24, 24).clip(0.0, 1.0)
    background = rng.uniform(0.0, 1.0, (n, 1, 1, 3))
    foreground = (background + rng.uniform(0.25, 0.75, (n, 1, 1, 3))) % 1.0
    mask = np.zeros((n, 32, 32, 1), "float32")
    offsets = rng.integers(0, 9, (n, 2))
    for i, (row, column) in enumerate(offsets):
        mask[i, row : row + 24, column : column + 24] = digits[i]
    images = background + (foreground - background) * mask
    images += rng.normal(0.0, 0.05, images.shape)
    return images.clip(0.0, 1.0).astype("float32")


def _bilinear_weights(in_size, out_size):
    """Source rows (or columns) and weights of TensorFlow's half-pixel bilinear resize."""
    scale = np.float32(in_size) / np.float32(out_size)
    centers = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(centers)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(centers).astype(np.int64), in_size - 1)
    return lower, upper, centers - floor


def resize_bilinear(images, height, width):
    """`tf.image.resize(images, (height, width), "bilinear")` in NumPy, float32.

    TensorFlow's kernel (half-pixel centres, no antialiasing), operation for
    operation in float32, so that the rendered tasks are the same bit for bit
    without TensorFlow (`tests/benchmarks_test.py` compares the two).

    Args:
        images: Array of shape `(n, rows, columns, channels)`.
        height: Rows of the result.
        width: Columns of the result.

    Returns:
        A float32 array of shape `(n, height, width, channels)`.
    """
    images = np.asarray(images, np.float32)
    top_row, bottom_row, y_lerp = _bilinear_weights(images.shape[1], height)
    left, right, x_lerp = _bilinear_weights(images.shape[2], width)
    x_lerp, y_lerp = x_lerp[None, None, :, None], y_lerp[None, :, None, None]
    top, bottom = images[:, top_row], images[:, bottom_row]
    top = top[:, :, left] + (top[:, :, right] - top[:, :, left]) * x_lerp
    bottom = bottom[:, :, left] + (bottom[:, :, right] - bottom[:, :, left]) * x_lerp
    return top + (bottom - top) * y_lerp
