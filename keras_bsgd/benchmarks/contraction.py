"""The contraction of a run, measured: the geometric rate of its iterate movements.

Where the maps contract (docs/design.md §1), exact backward-SGD's iterates
converge to a point and the distance between successive evaluated iterates
falls geometrically, `||theta_k - theta_{k-E}|| ~ C * rho**k` with `rho < 1`;
forward SGD's iterates keep moving (`rho` near 1). `fit_rate` fits `rho` by
least squares on the log of those distances, so a run shows whether it sits
in a contractive region, and how fast it contracts.
"""

import collections
import math

import numpy as np

Fit = collections.namedtuple("Fit", ["rate", "half_life", "scale"])
Fit.__doc__ = """A geometric fit `distance ~ scale * rate**step` (`fit_rate`)."""


def fit_rate(steps, distances):
    """Fits the geometric rate per step of a decaying sequence of distances.

    A least-squares line through `(steps[i], log(distances[i]))`; the rate
    is `exp(slope)` (per step, whatever the spacing of `steps`) and the
    half-life `log(2) / -slope` steps. Zero distances (no movement at float
    resolution) have no logarithm and are left out of the fit.

    Args:
        steps: The steps at which the distances were measured.
        distances: Non-negative distances, one per step.

    Returns:
        A `Fit(rate, half_life, scale)`: `rate` below 1 means the distances
        shrink (a contraction), 1 or above that they do not; `half_life` is
        the steps over which they halve (`inf` when `rate >= 1`); the line
        is `scale * rate**step`. All NaN with fewer than two positive
        distances.

    Example:

    >>> rate, half_life, scale = fit_rate([10, 20, 30], [1.0, 0.5, 0.25])
    >>> round(rate ** 10, 6), round(half_life, 6), round(scale, 6)
    (0.5, 10.0, 2.0)
    """
    steps = np.asarray(steps, "float64").reshape(-1)
    distances = np.asarray(distances, "float64").reshape(-1)
    if steps.shape != distances.shape:
        raise ValueError(
            "Give one distance per step. Received: "
            f"steps={len(steps)} values, distances={len(distances)} values"
        )
    keep = np.isfinite(distances) & (distances > 0)
    if np.count_nonzero(keep) < 2 or np.ptp(steps[keep]) == 0:
        return Fit(math.nan, math.nan, math.nan)
    slope, intercept = np.polyfit(steps[keep], np.log(distances[keep]), 1)
    half_life = math.log(2.0) / -slope if slope < 0 else math.inf
    return Fit(float(math.exp(slope)), float(half_life), float(math.exp(intercept)))
