"""The comparison figure: forward and backward SGD on the same axes."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _curves(runs, method, key, column, x_column="step"):
    """Mean and std over seeds of `column` against `x_column`, for one method."""
    rows = [run[key] for run in runs if run["method"] == method]
    x = np.array([r[x_column] for r in rows[0]], "float64")
    values = np.array([[r[column] for r in run_rows] for run_rows in rows], "float64")
    return x, values.mean(axis=0), values.std(axis=0)


def _moving_average(values, width):
    width = max(1, min(width, len(values)))
    return np.convolve(values, np.ones(width) / width, mode="valid"), width


def plot_comparison(runs, methods, path, title=""):
    """Draws test loss and accuracy (vs steps and vs gradient evaluations),
    iterate distance (log scale) and train loss, every method in each panel.

    Lines are means over seeds; bands are ± one standard deviation.

    Args:
        runs: Run dicts with `method`, `steps` rows and `evals` rows.
        methods: Method names, in legend order; forward SGD first.
        path: The PNG file to write.
        title: Figure title. Defaults to `""`.

    Returns:
        `path`.
    """
    figure, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(1, len(methods) - 1)))
    panels = [
        (axes[0, 0], "evals", "test_loss", "step", "test loss", False),
        (axes[0, 1], "evals", "test_accuracy", "step", "test accuracy", False),
        (axes[0, 2], "steps", "iterate_distance", "step", "‖θk − θk−1‖ (log)", True),
        (axes[1, 0], "evals", "test_loss", "grad_evals", "test loss", False),
        (axes[1, 1], "evals", "test_accuracy", "grad_evals", "test accuracy", False),
        (axes[1, 2], "steps", "train_loss", "step", "train loss (moving avg 10)", False),
    ]
    for i, method in enumerate(methods):
        color = "black" if i == 0 else colors[i - 1]
        style = "--" if i == 0 else "-"
        for ax, key, column, x_column, label, log_y in panels:
            x, mean, std = _curves(runs, method, key, column, x_column)
            if column == "train_loss":
                mean, width = _moving_average(mean, 10)
                x, std = x[width - 1 :], np.zeros_like(mean)
            if x_column == "grad_evals":  # Log axis: drop the initial point.
                x, mean, std = x[x > 0], mean[x > 0], std[x > 0]
            ax.plot(x, mean, style, color=color, label=method, linewidth=1.4)
            if std.any():
                low = np.maximum(mean - std, 1e-12) if log_y else mean - std
                ax.fill_between(x, low, mean + std, color=color, alpha=0.15)
            ax.set_ylabel(label)
            ax.set_xlabel("gradient evaluations (log)" if x_column == "grad_evals" else "step")
            if x_column == "grad_evals":
                ax.set_xscale("log")
            if log_y:
                ax.set_yscale("log")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
