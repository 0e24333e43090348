"""Summary metrics of a comparison run: accuracy, within-run stability, cost."""

import math

import numpy as np

TAIL = 0.25
"""Stability is measured over the last `TAIL` fraction of the steps."""

RUN_METRICS = (
    "final_test_accuracy",
    "final_test_loss",
    "test_loss_std_last25",
    "iterate_distance_mean_last25",
    "accuracy_at_forward_budget",
    "grad_evals",
    "wall_time_s",
    "peak_rss_mb",
)
"""The keys of `summarize_run`, in report order."""


def summarize_run(step_rows, eval_rows, forward_budget=None):
    """Summarizes one training run.

    Args:
        step_rows: One dict per step, as `StepRecorder.rows`.
        eval_rows: One dict per evaluation, with `step`, `grad_evals`,
            `test_loss` and `test_accuracy` (step 0 included).
        forward_budget: Gradient evaluations of the forward-SGD run, or
            `None`. Defaults to `None`.

    Returns:
        A dict with the keys `RUN_METRICS`:

        * `final_test_accuracy`, `final_test_loss`: at the last step;
        * `test_loss_std_last25`: standard deviation of the test loss over
          the evaluations in the last 25% of the steps (within-run stability;
          0 when there is a single such evaluation);
        * `iterate_distance_mean_last25`: mean `||theta_k - theta_{k-1}||`
          over the last 25% of the steps;
        * `accuracy_at_forward_budget`: test accuracy at the last evaluation
          that used at most `forward_budget` gradient evaluations (equal
          compute), or NaN;
        * `grad_evals`, `wall_time_s`, `peak_rss_mb`: totals and peak.

    Example:

    >>> steps = [{"step": k, "iterate_distance": 1.0 / k, "grad_evals": k,
    ...           "wall_time_s": 0.1 * k, "rss_mb": 100.0} for k in (1, 2, 3, 4)]
    >>> evals = [{"step": k, "grad_evals": k, "test_loss": 1.0,
    ...           "test_accuracy": 0.5} for k in (0, 2, 4)]
    >>> summarize_run(steps, evals)["iterate_distance_mean_last25"]
    0.25
    """
    if not step_rows or not eval_rows:
        raise ValueError(
            "A run summary needs at least one step and one evaluation. Received: "
            f"{len(step_rows)} steps, {len(eval_rows)} evaluations"
        )
    total = step_rows[-1]["step"]
    start = total * (1.0 - TAIL)
    distances = [r["iterate_distance"] for r in step_rows if r["step"] > start]
    tail_losses = [r["test_loss"] for r in eval_rows if r["step"] >= start]
    within = [r for r in eval_rows if forward_budget and r["grad_evals"] <= forward_budget]
    return {
        "final_test_accuracy": float(eval_rows[-1]["test_accuracy"]),
        "final_test_loss": float(eval_rows[-1]["test_loss"]),
        "test_loss_std_last25": float(np.std(tail_losses)) if tail_losses else math.nan,
        "iterate_distance_mean_last25": float(np.mean(distances)),
        "accuracy_at_forward_budget": (
            float(within[-1]["test_accuracy"]) if within else math.nan
        ),
        "grad_evals": int(step_rows[-1]["grad_evals"]),
        "wall_time_s": float(step_rows[-1]["wall_time_s"]),
        "peak_rss_mb": float(max(r["rss_mb"] for r in step_rows)),
    }


def aggregate(summaries):
    """Mean and standard deviation over seeds of run summaries.

    Args:
        summaries: A list of `summarize_run` dicts (one per seed).

    Returns:
        A dict `{metric: {"mean": float, "std": float}}`; `std` is the sample
        standard deviation (ddof=1), 0 for a single seed.

    Example:

    >>> aggregate([{"grad_evals": 2}, {"grad_evals": 4}])["grad_evals"]["mean"]
    3.0
    """
    result = {}
    for key in summaries[0]:
        values = np.array([s[key] for s in summaries], "float64")
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        result[key] = {"mean": float(np.mean(values)), "std": std}
    return result


def expected_grad_evals(step, window=None, forward=False):
    """Gradient evaluations that step `step` costs, from DESIGN.md §1.

    Args:
        step: The 1-based step `k`.
        window: The window `w`, or `None` for exact backward-SGD.
            Defaults to `None`.
        forward: Forward SGD (one per step). Defaults to `False`.

    Returns:
        `1` for forward SGD, `k` for exact backward-SGD, and
        `min(k, w) + (1 if k > w else 0)` for windowed backward-SGD.

    Example:

    >>> [expected_grad_evals(k, window=2) for k in (1, 2, 3, 4)]
    [1, 2, 3, 3]
    """
    if forward:
        return 1
    if window is None:
        return step
    return min(step, window) + (1 if step > window else 0)
