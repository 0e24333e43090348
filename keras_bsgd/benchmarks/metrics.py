"""Metrics of a comparison run, as NumPy functions of its evaluated iterates.

Every metric is computed on the iterates at the evaluation steps (every `E`
steps and the last one): the test loss and accuracy, how far the iterate
moved between evaluations in parameter space (`||theta_k - theta_{k-E}||`)
and in function space (the RMS change of the test-set logits), and its
distance to the run's own final iterate, and the geometric rate at which
the movement shrinks (`keras_bsgd.benchmarks.contraction`). Stability is
measured over the second half of the run.
"""

import math

import numpy as np

from keras_bsgd.benchmarks.contraction import fit_rate

RUN_METRICS = (
    "final_test_accuracy",
    "final_test_loss",
    "test_loss_mean_last_half",
    "test_loss_std_last_half",
    "param_movement_last_half",
    "contraction_rate_last_half",
    "half_life_steps_last_half",
    "logit_rms_change_last_half",
    "distance_to_final_last_half",
    "accuracy_at_forward_budget",
    "grad_evals",
    "wall_time_s",
)
"""The keys of `summarize_run`, in report order."""


def cross_entropy_and_accuracy(logits, labels):
    """Mean softmax cross-entropy and accuracy of logits, in float64.

    Args:
        logits: Array of shape `(examples, classes)`.
        labels: Integer array of shape `(examples,)`.

    Returns:
        A tuple `(loss, accuracy)` of Python floats.

    Example:

    >>> import numpy as np
    >>> loss, accuracy = cross_entropy_and_accuracy(
    ...     np.array([[0.0, 0.0], [3.0, 0.0]]), np.array([0, 1]))
    >>> round(loss, 4), accuracy
    (1.8709, 0.5)
    """
    logits = np.asarray(logits, "float64")
    labels = np.asarray(labels).reshape(-1).astype("int64")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(labels)), labels].mean()
    accuracy = (logits.argmax(axis=1) == labels).mean()
    return float(loss), float(accuracy)


def movements(iterates):
    """Euclidean distances between successive iterates.

    Args:
        iterates: Array of shape `(evaluations, parameters)`.

    Returns:
        A float64 array of `evaluations - 1` distances
        `||theta_i - theta_{i-1}||`.

    Example:

    >>> movements([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0]]).tolist()
    [5.0, 0.0]
    """
    iterates = np.asarray(iterates, "float64")
    return np.linalg.norm(np.diff(iterates, axis=0), axis=1)


def rms_changes(logits):
    """Root-mean-square change of the logits between successive evaluations.

    Args:
        logits: Array of shape `(evaluations, examples, classes)`: the test
            set's logits at each evaluated iterate.

    Returns:
        A float64 array of `evaluations - 1` values
        `sqrt(mean((z_i - z_{i-1})**2))` over examples and classes.

    Example:

    >>> rms_changes([[[0.0, 0.0]], [[1.0, -1.0]]]).tolist()
    [1.0]
    """
    logits = np.asarray(logits, "float64")
    change = np.diff(logits.reshape(len(logits), -1), axis=0)
    return np.sqrt(np.mean(np.square(change), axis=1))


def distances_to_final(iterates):
    """Each iterate's Euclidean distance to the last one.

    Args:
        iterates: Array of shape `(evaluations, parameters)`.

    Returns:
        A float64 array of `evaluations` distances (the last is 0).

    Example:

    >>> distances_to_final([[0.0, 0.0], [3.0, 4.0]]).tolist()
    [5.0, 0.0]
    """
    iterates = np.asarray(iterates, "float64")
    return np.linalg.norm(iterates - iterates[-1], axis=1)


def evaluation_columns(iterates, logits):
    """The per-evaluation stability columns of one run.

    Args:
        iterates: Array `(evaluations, parameters)`, the flattened weights
            at each evaluation, step 0 first.
        logits: Array `(evaluations, examples, classes)`, the test logits
            at each evaluation.

    Returns:
        A dict of lists, one value per evaluation: `param_movement` and
        `logit_rms_change` (change since the previous evaluation; NaN at
        the first) and `distance_to_final`.

    Example:

    >>> columns = evaluation_columns([[0.0], [2.0]], [[[0.0]], [[1.0]]])
    >>> columns["param_movement"]
    [nan, 2.0]
    """
    nan = [math.nan]
    return {
        "param_movement": nan + movements(iterates).tolist(),
        "logit_rms_change": nan + rms_changes(logits).tolist(),
        "distance_to_final": distances_to_final(iterates).tolist(),
    }


def summarize_run(step_rows, eval_rows, forward_budget=None):
    """Summarizes one training run from its step and evaluation rows.

    The second half is the evaluations at steps `>= N / 2` (`N`: the last
    evaluated step). Movements are changes between two successive
    evaluations, both in the second half.

    Args:
        step_rows: One dict per step with `grad_evals` and `wall_time_s`
            (cumulative), as `StepRecorder.rows`.
        eval_rows: One dict per evaluation, step 0 first, with `step`,
            `grad_evals`, `test_loss`, `test_accuracy` and the columns of
            `evaluation_columns`.
        forward_budget: Gradient evaluations of the forward-SGD run, or
            `None`. Defaults to `None`.

    Returns:
        A dict with the keys `RUN_METRICS`:

        * `final_test_accuracy`, `final_test_loss`: at the last step;
        * `test_loss_mean_last_half`, `test_loss_std_last_half`: mean and
          standard deviation (ddof 0) of the test loss over the evaluations
          of the second half (its level, and how much it moves within the
          run);
        * `param_movement_last_half`, `logit_rms_change_last_half`: mean
          movement between successive evaluations of the second half, in
          parameter space and in function space;
        * `contraction_rate_last_half`, `half_life_steps_last_half`: the
          geometric rate per step of those parameter movements and the
          steps over which they halve (`contraction.fit_rate`: below 1, the
          run contracts; `inf` half-life, it does not);
        * `distance_to_final_last_half`: mean distance of the second half's
          iterates (the last one excluded) to the final iterate;
        * `accuracy_at_forward_budget`: test accuracy at the last evaluation
          that used at most `forward_budget` gradient evaluations (equal
          compute), or NaN;
        * `grad_evals`, `wall_time_s`: totals of the run.

    Example:

    >>> steps = [{"grad_evals": k, "wall_time_s": 0.1 * k} for k in (1, 2, 3, 4)]
    >>> evals = [{"step": k, "grad_evals": k, "test_loss": 1.0 + k,
    ...           "test_accuracy": 0.5, "param_movement": 1.0,
    ...           "logit_rms_change": 1.0, "distance_to_final": 4.0 - k}
    ...          for k in (0, 2, 4)]
    >>> summarize_run(steps, evals)["test_loss_std_last_half"]
    1.0
    """
    if not step_rows or not eval_rows:
        raise ValueError(
            "A run summary needs at least one step and one evaluation. Received: "
            f"{len(step_rows)} steps, {len(eval_rows)} evaluations"
        )
    half = eval_rows[-1]["step"] / 2.0
    late = [i for i, r in enumerate(eval_rows) if r["step"] >= half]
    moves = [i for i in late if i > 0 and eval_rows[i - 1]["step"] >= half]

    def mean(column, rows):
        values = [eval_rows[i][column] for i in rows]
        return float(np.mean(values)) if values else math.nan

    within = [r for r in eval_rows if forward_budget and r["grad_evals"] <= forward_budget]
    rate, half_life, _ = fit_rate(
        [eval_rows[i]["step"] for i in moves], [eval_rows[i]["param_movement"] for i in moves]
    )
    return {
        "final_test_accuracy": float(eval_rows[-1]["test_accuracy"]),
        "final_test_loss": float(eval_rows[-1]["test_loss"]),
        "test_loss_mean_last_half": mean("test_loss", late),
        "test_loss_std_last_half": float(np.std([eval_rows[i]["test_loss"] for i in late])),
        "param_movement_last_half": mean("param_movement", moves),
        "contraction_rate_last_half": rate,
        "half_life_steps_last_half": half_life,
        "logit_rms_change_last_half": mean("logit_rms_change", moves),
        "distance_to_final_last_half": mean("distance_to_final", late[:-1]),
        "accuracy_at_forward_budget": (
            float(within[-1]["test_accuracy"]) if within else math.nan
        ),
        "grad_evals": int(step_rows[-1]["grad_evals"]),
        "wall_time_s": float(step_rows[-1]["wall_time_s"]),
    }


def aggregate(summaries):
    """Mean and standard deviation over seeds of run summaries.

    Args:
        summaries: A list of `summarize_run` dicts (one per seed).

    Returns:
        A dict `{metric: {"mean": float, "std": float}}`; `std` is the sample
        standard deviation (ddof=1), 0 for a single seed. A metric that is
        infinite in some seed (a half-life without contraction) has mean
        `inf`, std NaN, and the counts `infinite` and `seeds`.

    Example:

    >>> aggregate([{"grad_evals": 2}, {"grad_evals": 4}])["grad_evals"]["mean"]
    3.0
    """
    result = {}
    for key in summaries[0]:
        values = np.array([s[key] for s in summaries], "float64")
        if np.isinf(values).any():
            infinite = int(np.isinf(values).sum())
            result[key] = {"mean": math.inf, "std": math.nan, "infinite": infinite,
                           "seeds": len(values)}
            continue
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        result[key] = {"mean": float(np.mean(values)), "std": std}
    return result


def expected_grad_evals(step, window=None, forward=False, replay_every=1, last_step=None):
    """Gradient evaluations that step `step` costs, from docs/design.md §1.

    With `replay_every=E` nothing is computed between replays (a warm start
    in the library's `forward_steps` is not covered here). A replay at step
    `k` applies the maps after the anchor of the previous replay `p` (the
    last multiple of `E` before `k`): windowed mode advances its anchor from
    step `p - w` to `k - w` and replays `w` maps from there, exact mode
    replays all `k` maps from `S_0`.

    Args:
        step: The 1-based step `k`.
        window: The window `w`, or `None` for exact backward-SGD.
            Defaults to `None`.
        forward: Forward SGD (one per step). Defaults to `False`.
        replay_every: The replay interval `E`. Defaults to `1`.
        last_step: The run's last step (always replayed), or `None`.
            Defaults to `None`.

    Returns:
        `1` for forward SGD; 0 for backward-SGD at a step without a replay;
        at a replay, `k` for exact mode and `k - max(0, p - w)` for
        windowed mode (with `E = 1`: `min(k, w)`, plus one once `k > w`).

    Example:

    >>> [expected_grad_evals(k, window=2) for k in (1, 2, 3, 4)]
    [1, 2, 3, 3]
    >>> [expected_grad_evals(k, replay_every=2, last_step=3) for k in (1, 2, 3)]
    [0, 2, 3]
    """
    if forward:
        return 1
    if step % replay_every and step != last_step:
        return 0
    if window is None:
        return step
    previous = (step - 1) // replay_every * replay_every
    return step - max(0, previous - window)
