"""Writing a comparison to disk: per-step CSV and JSON, summary JSON and Markdown."""

import csv
import json
import math
import os

from keras_bsgd.benchmarks.metrics import RUN_METRICS

STEP_COLUMNS = (
    "method", "seed", "step", "train_loss", "learning_rate", "grad_evals", "wall_time_s",
)
EVAL_COLUMNS = (
    "method", "seed", "step", "grad_evals", "wall_time_s", "test_loss", "test_accuracy",
    "param_movement", "logit_rms_change", "distance_to_final",
)

_HEADERS = {
    "final_test_accuracy": "final test acc",
    "final_test_loss": "final test loss",
    "test_loss_mean_last_half": "mean test loss (2nd half)",
    "test_loss_std_last_half": "test-loss std (2nd half)",
    "param_movement_last_half": "‖θk−θk−E‖ (2nd half)",
    "contraction_rate_last_half": "contraction rate ρ per step (2nd half)",
    "half_life_steps_last_half": "half-life (steps)",
    "logit_rms_change_last_half": "RMS Δ test logits (2nd half)",
    "distance_to_final_last_half": "‖θk−θN‖ (2nd half)",
    "accuracy_at_forward_budget": "test acc at forward's grad budget",
    "grad_evals": "grad evals",
    "wall_time_s": "train time (s)",
    "peak_gpu_mb": "peak GPU memory (MB)",
}


def _write_csv(path, columns, runs, key):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for run in runs:
            for row in run[key]:
                writer.writerow({"method": run["method"], "seed": run["seed"], **row})


def _cell(stats, key):
    mean, std = stats["mean"], stats["std"]
    if math.isnan(mean):
        return "–"
    if math.isinf(mean):
        seeds = stats.get("seeds", 1)
        return "∞ (no contraction)" if seeds == 1 else (
            f"∞ (no contraction in {stats['infinite']} of {seeds} seeds)")
    if key == "contraction_rate_last_half":
        return f"{mean:.5f} ± {std:.5f}"
    if key == "half_life_steps_last_half":
        return f"{mean:,.0f} ± {std:,.0f}"
    if key == "grad_evals":
        return f"{mean:,.0f}"
    if key in ("wall_time_s", "peak_gpu_mb"):
        return f"{mean:.1f} ± {std:.1f}"
    if key.endswith("_last_half") and key != "test_loss_mean_last_half":
        return f"{mean:.2e} ± {std:.1e}"
    return f"{mean:.4f} ± {std:.4f}"


def _start(config):
    steps = config["forward_steps"]
    if not steps:
        return "Cold start (no warm-up)"
    wall = sum(config.get("warmup_wall_time_s", ())) / max(1, len(config["seeds"]))
    return f"Warm start: {steps} shared forward-SGD steps ({wall:.1f} s per seed)"


def _backend(config):
    """`"Backend: jax 0.10.2 (Keras 3.15.1). "`, or nothing for a config without one."""
    if "backend" not in config:
        return ""
    return (f"Backend: {config['backend']} {config.get('backend_version', '')} "
            f"(Keras {config.get('keras_version', '?')}). ")


def markdown_table(summary):
    """Formats `summary["methods"]` as a Markdown table, one row per method.

    Args:
        summary: The comparison summary (see `write`).

    Returns:
        A Markdown string: the learning rate each method used, then cells
        `mean ± std` over seeds; peak GPU memory, per run, appears when a
        GPU was used.
    """
    keys = list(RUN_METRICS)
    if "peak_gpu_mb" in next(iter(summary["methods"].values())):
        keys.append("peak_gpu_mb")
    rates = summary["config"].get("method_learning_rates", {})
    header = "| method | learning rate | " + " | ".join(_HEADERS[k] for k in keys) + " |"
    lines = [header, "|" + "---|" * (len(keys) + 2)]
    for method, stats in summary["methods"].items():
        cells = " | ".join(_cell(stats[k], k) for k in keys)
        lines.append(f"| {method} | {rates.get(method, '–')} | {cells} |")
    return "\n".join(lines) + "\n"


def schedule_free_note(config):
    """How `schedule_free_adamw`'s learning rate was chosen, one Markdown paragraph.

    Args:
        config: The comparison's settings.

    Returns:
        A string, empty when the method did not run.
    """
    rate = config.get("schedule_free_learning_rate")
    if rate is None or "schedule_free_adamw" not in config["methods"]:
        return ""
    sweep = config.get("schedule_free_sweep")
    if not sweep:
        return f"schedule_free_adamw: learning rate {rate:g}, as given (no sweep).\n"
    losses = ", ".join(f"{float(r):g}: {loss:.4f}" for r, loss in sweep["held_out_loss"].items())
    return (
        f"schedule_free_adamw (Adam-based, Keras' `ScheduleFreeAdamW`): learning rate "
        f"{rate:g}, the lowest held-out loss of its averaged iterate x after "
        f"{config['steps']} steps from seed {sweep['seed']}'s warm start, on "
        f"{config['validation_examples']} training examples held out of every run "
        f"(never the test set). Held-out loss by learning rate: {losses}.\n"
    )


def write(output, config, runs, summary):
    """Writes the comparison files into `output` (created if needed).

    Files: `steps.csv` (one row per method, seed and step), `evaluations.csv`
    (one row per evaluation), `runs.json` (config and every row),
    `summary.json` and `summary.md`.

    Args:
        output: The output folder.
        config: The comparison's settings (JSON-serializable dict).
        runs: List of run dicts with `method`, `seed`, `steps` (rows),
            `evals` (rows) and `summary`.
        summary: Dict with `config`, `methods` (the aggregated metrics by
            method) and `runs` (per-run summaries).

    Returns:
        A dict of the written paths by kind.
    """
    os.makedirs(output, exist_ok=True)
    paths = {
        "steps_csv": os.path.join(output, "steps.csv"),
        "evaluations_csv": os.path.join(output, "evaluations.csv"),
        "runs_json": os.path.join(output, "runs.json"),
        "summary_json": os.path.join(output, "summary.json"),
        "summary_md": os.path.join(output, "summary.md"),
    }
    _write_csv(paths["steps_csv"], STEP_COLUMNS, runs, "steps")
    _write_csv(paths["evaluations_csv"], EVAL_COLUMNS, runs, "evals")
    with open(paths["runs_json"], "w") as f:
        json.dump({"config": config, "runs": runs}, f)
    with open(paths["summary_json"], "w") as f:
        json.dump(summary, f, indent=2)
    seeds = ", ".join(str(s) for s in config["seeds"])
    with open(paths["summary_md"], "w") as f:
        f.write(
            f"# Forward vs backward SGD: {config['dataset']}, {config['model']}\n\n"
            f"{_backend(config)}{_start(config)}, then {config['steps']} steps per method; batch "
            f"{config['batch_size']}, learning rate {config['learning_rate']}, momentum "
            f"{config['momentum']}, weight decay {config['weight_decay'] or 0}, seeds {seeds}; "
            f"evaluated every {config['eval_every']} steps (backward-SGD replays there). "
            "Cells: mean ± std over seeds; 2nd half: the evaluations at steps ≥ N/2; "
            "contraction rate: ‖θk−θk−E‖ ∝ ρ^k fitted over the 2nd half (ρ < 1: the "
            "iterates contract); gradient evaluations and train time after the warm-up.\n\n"
        )
        f.write(markdown_table(summary))
        note = schedule_free_note(config)
        if note:
            f.write("\n" + note)
    return paths
