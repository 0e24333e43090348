"""`bsgd_digits`: scikit-learn's 8x8 handwritten digits as a TFDS dataset, built offline."""

import numpy as np
import tensorflow_datasets as tfds

from keras_bsgd.datasets import sources

NUM_TRAIN = sources.DIGITS_TRAIN
"""The first `NUM_TRAIN` of scikit-learn's 1,797 digits form the train split."""


class BsgdDigits(tfds.core.GeneratorBasedBuilder):
    """The UCI optical-recognition digits that ship inside scikit-learn.

    1,797 real handwritten digits, 8x8 pixels with 17 grey levels (0 to 16),
    10 classes. The data comes from `sklearn.datasets.load_digits`, so the
    build never touches the network. Splits keep scikit-learn's order: the
    first 1,437 examples are `train`, the last 360 are `test` (a 80/20 split,
    the same every build).

    Features: `image` (`uint8`, shape `(8, 8, 1)`, values 0..16), `label`
    (`ClassLabel`, 10 classes). Supervised keys: `("image", "label")`.

    Example:

    >>> import tempfile
    >>> import tensorflow_datasets as tfds
    >>> from keras_bsgd import datasets  # registers the builder
    >>> data_dir = tempfile.mkdtemp()
    >>> _ = datasets.load("bsgd_digits", "test", data_dir=data_dir)  # builds, offline
    >>> ds = tfds.load("bsgd_digits", split="train", data_dir=data_dir, as_supervised=True)
    >>> int(ds.cardinality())
    1437
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: train 1,437 / test 360, in scikit-learn order."}

    def _info(self):
        return self.dataset_info_from_configs(
            description=(
                "UCI ML hand-written digits (Alpaydin & Kaynak, 1998), 8x8 images "
                "with values 0..16, as shipped by scikit-learn's load_digits. "
                f"Train: the first {NUM_TRAIN} examples; test: the last "
                "360, in scikit-learn's order."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            citation=(
                "@misc{alpaydin1998optical,\n"
                "  author = {Alpaydin, E. and Kaynak, C.},\n"
                "  title = {Optical Recognition of Handwritten Digits},\n"
                "  year = {1998},\n"
                "  howpublished = {UCI Machine Learning Repository},\n"
                "  doi = {10.24432/C50P49}\n"
                "}"
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data ships with scikit-learn.
        return {split: self._generate_examples(split) for split in sources.SPLITS}

    def _generate_examples(self, split):
        keys, images, labels = sources.digits_examples(split)
        for key, image, label in zip(keys, images, labels):
            yield int(key), {"image": image, "label": int(label)}
