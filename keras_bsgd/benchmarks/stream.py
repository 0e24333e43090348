"""`BatchStream`: the one fixed sequence of batches that every compared optimizer sees."""

import numpy as np


class BatchStream:
    """`steps` full batches drawn from a training set by a seeded shuffle.

    The examples are reshuffled every epoch (a fresh permutation from one
    `numpy.random.default_rng(seed)`), and the stream is cut into exactly
    `steps` batches of `batch_size`, so no batch is partial and two streams
    with the same arguments are identical.

    Args:
        x: Training inputs, a NumPy array with examples on axis 0.
        y: Training labels, a NumPy array with examples on axis 0.
        batch_size: Examples per batch.
        steps: Number of batches.
        seed: Seed of the shuffle.

    Example:

    >>> import numpy as np
    >>> stream = BatchStream(np.arange(10), np.arange(10), 4, steps=5, seed=0)
    >>> x, y = stream.chunk(0, 2)
    >>> x.shape
    (8,)
    """

    def __init__(self, x, y, batch_size, steps, seed):
        if batch_size < 1 or batch_size > len(x):
            raise ValueError(
                "`batch_size` must be between 1 and the training set size "
                f"{len(x)}. Received: batch_size={batch_size}"
            )
        if steps < 1:
            raise ValueError(f"`steps` must be a positive integer. Received: steps={steps}")
        self.x, self.y = x, y
        self.batch_size, self.steps, self.seed = batch_size, steps, seed
        rng = np.random.default_rng(seed)
        needed = batch_size * steps
        epochs = -(-needed // len(x))
        self.indices = np.concatenate([rng.permutation(len(x)) for _ in range(epochs)])[:needed]

    def chunk(self, start, count):
        """The examples of batches `start, ..., start + count - 1`, concatenated.

        Args:
            start: Index of the first batch (0-based).
            count: Number of batches.

        Returns:
            A tuple `(x, y)` of `count * batch_size` examples, in stream order.
        """
        index = self.indices[start * self.batch_size : (start + count) * self.batch_size]
        return self.x[index], self.y[index]
