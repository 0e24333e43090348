"""The embedded datasets' examples as NumPy arrays, in the order TFDS serves them.

TFDS is not needed: the examples come from scikit-learn (`bsgd_digits`) and
the `mnist1d` generator, exactly as the TFDS builders generate them, and are
put in TFDS' order. TFDS' writer sorts a split's examples by the MD5 hash of
the split name followed by the example's key (`tfds.core.hashing.Hasher`),
and a one-shard split is read back in that order; `tests/datasets_test.py`
checks that these arrays equal the TFDS path's bit for bit.
"""

import hashlib

import numpy as np

DIGITS_TRAIN = 1437
"""The first `DIGITS_TRAIN` of scikit-learn's 1,797 digits form `bsgd_digits`' train split."""

MNIST1D_SEED = 42
"""Seed of `mnist1d.data.make_dataset` (the package's default, as in the paper)."""

SPLITS = ("train", "test")


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(
            "Without TFDS an embedded dataset loads whole splits only. Expected one of "
            f"{SPLITS}. Received: split={split!r}"
        )


def digits_examples(split):
    """`(keys, images, labels)` of a `bsgd_digits` split, in scikit-learn's order.

    Images are uint8 of shape `(n, 8, 8, 1)` (values 0..16), labels int64,
    keys the TFDS builder's example keys.
    """
    from sklearn.datasets import load_digits

    _check_split(split)
    digits = load_digits()
    index = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    images = digits.images.astype(np.uint8)[index][..., None]
    labels = digits.target.astype(np.int64)[index]
    return np.arange(len(digits.target))[index], images, labels


def mnist1d_generate():
    """Runs the `mnist1d` generator (seed 42) without disturbing the global RNGs."""
    import random

    from mnist1d.data import get_dataset_args
    from mnist1d.data import make_dataset

    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        args = get_dataset_args()
        args.seed = MNIST1D_SEED
        return make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def mnist1d_examples(split, data=None):
    """`(keys, signals, labels)` of an `mnist1d` split: float32 `(n, 40)`, int64."""
    _check_split(split)
    data = mnist1d_generate() if data is None else data
    x, y = (data["x"], data["y"]) if split == "train" else (data["x_test"], data["y_test"])
    return np.arange(len(y)), np.asarray(x, np.float32), np.asarray(y, np.int64)


def tfds_order(keys, split):
    """The permutation that puts examples with `keys` in the order TFDS writes `split` in."""
    salt = hashlib.md5(split.encode("utf-8"))

    def key_hash(key):
        digest = salt.copy()
        digest.update(str(int(key)).encode("utf-8"))
        return int(digest.hexdigest(), 16)

    return np.array(sorted(range(len(keys)), key=lambda i: key_hash(keys[i])), dtype=np.int64)


EXAMPLES = {"bsgd_digits": digits_examples, "mnist1d": mnist1d_examples}
"""The embedded datasets' example functions, by name."""


def load_arrays(name, split, scale):
    """`(x, y)` of an embedded dataset's split as TFDS' `load()` serves them, as NumPy.

    Args:
        name: `"bsgd_digits"` or `"mnist1d"`.
        split: `"train"` or `"test"`.
        scale: `x` is divided by this, in float32 (as `load()` does).

    Returns:
        `x` float32 of shape `(n, ...)`, `y` int64 of shape `(n,)`.
    """
    keys, x, y = EXAMPLES[name](split)
    order = tfds_order(keys, split)
    return x[order].astype(np.float32) / np.float32(scale), y[order]
