"""`UniformAverage`: the Polyak (SWA) average of a run's iterates, step by step."""

import numpy as np


class UniformAverage:
    """The uniform average of the values a list of variables takes, one per step.

    After `update()` has been called at steps 1..k, `mean()` is
    `(theta_1 + ... + theta_k) / k`: Polyak-Ruppert averaging, or stochastic
    weight averaging (Izmailov et al., 2018) with one snapshot per step.
    The sum is kept in float64 on the host, so the average of thousands of
    float32 iterates loses nothing to rounding; Keras has no uniform
    average of its own (`use_ema` is exponential).

    Args:
        variables: The variables to average (a model's trainable variables).

    Example:

    >>> import keras
    >>> v = keras.Variable([1.0, 2.0])
    >>> average = UniformAverage([v])
    >>> average.update()
    >>> _ = v.assign([3.0, 6.0])
    >>> average.update()
    >>> average.mean()[0].tolist(), average.count
    ([2.0, 4.0], 2)
    """

    def __init__(self, variables):
        self.variables = list(variables)
        self.count = 0
        self._sums = [np.zeros(v.shape, "float64") for v in self.variables]

    def update(self):
        """Adds the variables' current values to the average."""
        for total, variable in zip(self._sums, self.variables):
            total += np.asarray(variable.numpy(), "float64")
        self.count += 1

    def mean(self):
        """The average so far, one float64 array per variable.

        Returns:
            A list of arrays; raises before the first `update()`.
        """
        if not self.count:
            raise ValueError(
                "The average of no iterates is undefined: call update() first. "
                f"Received: count={self.count}"
            )
        return [total / self.count for total in self._sums]
