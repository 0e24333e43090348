"""The step-timing benchmark's Markdown: one table per model and batch size."""

R_TARGET = 1.10
"""The CPU target of `R(w)` (w >= 4) and `R_exact(k)` (k >= 16): the value of
`keras_bsgd.benchmarks.speed.R_TARGET`, whose package imports TensorFlow."""


def _ms(seconds):
    return f"{1e3 * seconds:.3f}" if seconds < 0.01 else f"{1e3 * seconds:.2f}"


def _target(value, bound):
    """`| target | met |` cells: targets apply from w = 4 and k = 16 on."""
    if bound is None:
        return "— | —"
    return f"≤ {R_TARGET:.2f} | {'yes' if value <= R_TARGET else 'no'}"


def _rows(run):
    for r in run["windowed"]:
        yield (f"window w={r['window']}", r, "R", 4 <= r["window"] or None)
    for r in run["exact"]:
        yield (f"exact, depth k={r['depth']}", r, "R_exact", 16 <= r["depth"] or None)


def run_markdown(run):
    """The Markdown of one `time_model` result (with `model` and `input_shape` added)."""
    lines = [
        f"### {run['model']}, batch {run['batch_size']} "
        f"({run['params']:,} parameters, input {tuple(run['input_shape'])})",
        "",
        f"t_sgd = **{_ms(run['t_sgd_s'])} ms** per step (Keras SGD; median of "
        f"{len(run['sgd_samples_s'])} `fit()`s' medians, fastest {_ms(run['t_sgd_min_s'])} ms).",
        "",
        "| setting | grad evals / step | steps timed | t (ms / step) | ratio | CPU target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r, ratio, bound in _rows(run):
        lines.append(
            f"| {name} | {r['grad_evals']} | {r['steps_timed']} | {_ms(r['t_s'])} | "
            f"{ratio} = {r['R']:.3f} | {_target(r['R'], bound)} |"
        )
    compiles = ", ".join(f"{k}: {v:.2f} s" for k, v in run["compile_s"].items())
    lines += ["", f"Compile time (first step minus one SGD step): {compiles}."]
    counts = [
        f"{key}: {r['grad_evals_counted']} (expected {r['grad_evals_expected']})"
        for key, r in [(f"w={r['window']}", r) for r in run["windowed"]]
        + ([("exact", run["exact_run"])] if run.get("exact_run") else [])
    ]
    if counts:
        lines.append(f"Gradient evaluations counted by the model: {', '.join(counts)}.")
    if run["skipped"]:
        lines.append(f"Skipped: {'; '.join(run['skipped'])}.")
    return lines + [""]


def to_markdown(result):
    """The whole result of `step_bench.run` as Markdown."""
    m, c = result["machine"], result["config"]
    lines = [
        "## Step timing: BackwardSGD against Keras SGD",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}; wall time {result.get('wall_time_s', 0):.0f} s"
        f"{'' if result.get('finished') else ' (unfinished)'}  ",
        f"Backend: {m['backend']}, devices: {', '.join(m['devices'])}  ",
        f"Software: Keras {m['keras']}, {m['backend']} {m['backend_version']}, "
        f"Python {m['python']}, {m['cpu']} ({m['logical_cores']} logical cores)  ",
        f"Configuration: windows {c['windows']}, exact depths {c['depths']}, {c['steps']} steps "
        f"timed per setting, learning rate {c['learning_rate']}, `jit_compile=True`, "
        f"{c['data']}. R(w) = t(w) / ((w + 1) t_sgd), R_exact(k) = t(k) / (k t_sgd).",
        "",
    ]
    for run in result["runs"]:
        lines += run_markdown(run)
    if result.get("skipped"):
        lines += [f"Not started (time limit): {', '.join(result['skipped'])}.", ""]
    return "\n".join(lines)
