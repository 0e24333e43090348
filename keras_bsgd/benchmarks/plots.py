"""The comparison figure: every method on the same axes, seeds thin, mean bold."""

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from keras_bsgd.benchmarks.contraction import fit_rate

# (column, x column, y label, log y), one panel each.
_PANELS = (
    ("test_loss", "step", "test loss", False),
    ("param_movement", "step", "‖θk − θk−E‖ (parameters, log)", True),
    ("logit_rms_change", "step", "RMS change of test logits (log)", True),
    ("test_loss", "grad_evals", "test loss", False),
    ("distance_to_final", "step", "‖θk − θN‖ (log)", True),
    ("test_accuracy", "step", "test accuracy", False),
)


def _series(runs, method, column, x_column):
    """`x` (from the first seed) and one row of `column` per seed, for one method."""
    rows = [run["evals"] for run in runs if run["method"] == method]
    x = np.array([r[x_column] for r in rows[0]], "float64")
    values = np.array([[r[column] for r in run_rows] for run_rows in rows], "float64")
    return x, values


def _contraction(ax, runs, method, color):
    """The geometric fit of the mean movement over the second half, dashed, and its label."""
    x, values = _series(runs, method, "param_movement", "step")
    late = x >= x[-1] / 2
    late[np.argmax(late)] = False  # A movement counts when both its ends are in the 2nd half.
    fit = fit_rate(x[late], values[:, late].mean(axis=0))
    if np.isnan(fit.rate):
        return method
    ax.plot(x[late], fit.scale * fit.rate ** x[late], color=color, linewidth=1.0,
            linestyle="--")
    half_life = "∞" if np.isinf(fit.half_life) else f"{fit.half_life:,.0f}"
    return f"{method}: ρ={fit.rate:.5f}/step, t½={half_life}"


def comparison_figure(runs, methods, title=""):
    """Draws the evaluation curves of every method, one panel per quantity.

    Panels: test loss against step and against gradient evaluations (log
    x), the iterate movement between evaluations in parameter space and in
    function space (log y), the distance to the run's final iterate (log y)
    and the test accuracy. Thin lines are seeds, the bold line their mean.
    The parameter-movement panel adds, dashed, the geometric fit
    `scale * rho**k` of the mean movement over the second half, and its
    legend gives each method's rate `rho` per step and half-life.
    Uses Matplotlib's object API (no global backend is set).

    Args:
        runs: Run dicts with `method` and `evals` rows (with the columns of
            `keras_bsgd.benchmarks.metrics.evaluation_columns`).
        methods: Method names, in legend order; forward SGD first.
        title: Figure title. Defaults to `""`.

    Returns:
        A Matplotlib `Figure`.
    """
    figure = Figure(figsize=(16, 9))
    FigureCanvasAgg(figure)
    axes = list(figure.subplots(2, 3).flat)
    colors = [f"C{i}" for i in range(10)]
    for i, method in enumerate(methods):
        color = "black" if i == 0 else colors[(i - 1) % len(colors)]
        for ax, (column, x_column, label, log_y) in zip(axes, _PANELS):
            x, values = _series(runs, method, column, x_column)
            keep = np.isfinite(values).all(axis=0)
            if log_y:  # A zero distance (the final iterate to itself) has no log.
                keep &= (values > 0).all(axis=0)
            if x_column == "grad_evals":
                keep &= x > 0
            for seed_values in values[:, keep]:
                ax.plot(x[keep], seed_values, color=color, linewidth=0.5, alpha=0.35)
            legend = method
            if column == "param_movement":
                legend = _contraction(ax, runs, method, color)
            ax.plot(x[keep], values[:, keep].mean(axis=0), color=color, linewidth=1.8,
                    label=legend)
            ax.set_ylabel(label)
            ax.set_xlabel("gradient evaluations (log)" if x_column == "grad_evals" else
                          "step after the warm-up")
            if x_column == "grad_evals":
                ax.set_xscale("log")
            if log_y:
                ax.set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=8)
    figure.axes[1].legend(fontsize=7, title="dashed: geometric fit, 2nd half",
                          title_fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_comparison(runs, methods, path, title=""):
    """Draws `comparison_figure` into a PNG file.

    Args:
        runs: Run dicts, as `comparison_figure`'s.
        methods: Method names, in legend order; forward SGD first.
        path: The PNG file to write.
        title: Figure title. Defaults to `""`.

    Returns:
        `path`.
    """
    figure = comparison_figure(runs, methods, title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=80)
    return path
