"""Partial batches: a batch shorter than the run's batches is skipped, and `fit()` says so once.

The ring buffer holds batches of one static size (the run's first batch's),
so that a replay is one compiled loop. A shorter batch (the remainder of
data whose length is not a multiple of the batch size) is not a map: the
step skips it on the host, before any state changes, as
`drop_remainder=True` would have (docs/semantics.md, "Partial batches").
"""

import warnings

import keras
import numpy as np


def leading_size(batch):
    """The shared leading dimension of every array of `batch`, or None."""
    leaves = [t for t in keras.tree.flatten(batch) if t is not None]
    # `.shape`, not `np.shape`: that would copy a tensor to the host.
    shapes = [tuple(getattr(t, "shape", None) or np.shape(t)) for t in leaves]
    sizes = {int(s[0]) if s and s[0] is not None else None for s in shapes}
    return sizes.pop() if len(sizes) == 1 and None not in sizes else None


class PartialBatches:
    """What one `fit()` (or `train_on_batch()`) skipped: counts, and the one warning.

    Example:

    >>> import numpy as np
    >>> skipped = PartialBatches()
    >>> skipped.admits(leading_size((np.zeros((4, 2)), np.zeros(4))), batch_size=4)
    True
    >>> skipped.admits(3, batch_size=4)
    False
    >>> skipped.batches, skipped.examples
    (1, 3)
    """

    def __init__(self):
        self.batches = 0
        self.examples = 0
        self.batch_size = None
        self._skipped_last = None  # the size of the batch before, if it was skipped

    def admits(self, size, batch_size):
        """Whether a batch of `size` examples is a map of a run whose batches hold `batch_size`.

        A shorter batch is counted as skipped.

        Args:
            size: The batch's size, or None where it has none (scalars).
            batch_size: The run's batch size, or None where no batch fixed it yet.

        Returns:
            True for a batch of `batch_size` examples (or any batch if it is None).

        Raises:
            ValueError: if the batch holds more examples than `batch_size`, or
                fewer and so did the batch before it: a remainder comes once,
                at an epoch's end, and shorter batches in a row mean a smaller
                batch size, whose every batch would be skipped.
        """
        if batch_size is None or size is None or size == batch_size:
            self._skipped_last = None
            return True
        if size > batch_size:
            raise ValueError(
                f"This run's replay buffer holds batches of {batch_size} examples, "
                "and a larger batch does not fit it; training stopped before this "
                "step, with the state of the step before. Feed batches of at most "
                f"{batch_size} examples (shorter ones are skipped), or compile the "
                "model again with a new BackwardSGD to start a run with larger "
                f"batches. Received: a batch of {size} examples"
            )
        if self._skipped_last is not None:
            raise ValueError(
                f"This run's replay buffer holds batches of {batch_size} examples, "
                "and two batches in a row were shorter: that is a smaller batch "
                "size, not the remainder at an epoch's end, and every batch of it "
                "would be skipped. Training stopped before this step, with the "
                f"state of the step before. Feed batches of {batch_size} examples, "
                "or compile the model again with a new BackwardSGD to start a run "
                f"with smaller batches. Received: batches of {self._skipped_last} "
                f"and {size} examples"
            )
        self._skipped_last = size
        self.batches += 1
        self.examples += size
        self.batch_size = batch_size
        return False

    def warn(self, stacklevel=3):
        """Warns once about everything skipped so far (nothing if nothing was)."""
        if not self.batches:
            return
        warnings.warn(
            f"keras_bsgd skipped {self.batches} partial batch(es) ({self.examples} "
            f"examples): backward-SGD replays batches of one size, and this run's batches "
            f"hold {self.batch_size} examples. To train on every example, use a "
            "batch size that divides the number of training examples; with "
            "`shuffle=True` each epoch skips other examples.",
            stacklevel=stacklevel,
        )
