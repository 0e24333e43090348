"""Step timing of BackwardSGD against Keras SGD on any backend, as JSON and Markdown.

    KERAS_BACKEND=jax python -m keras_bsgd.benchmarks.step_bench --out bench_gpu
    KERAS_BACKEND=jax python -m keras_bsgd.benchmarks.step_bench --tiny --out /tmp/tiny

Runs `keras_bsgd.benchmarks.step_timing.time_model` for every model and
batch size of the configuration, each within its share of `--time-limit-s`
(what one leaves unused goes to the rest), and rewrites
`OUT/step_timing.json` and `OUT/step_timing.md` after each, so that a hard
stop keeps what was finished. Imports neither TensorFlow nor JAX itself.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import sys
import time

import keras

from keras_bsgd.benchmarks import step_report
from keras_bsgd.benchmarks import step_timing

CONFIGS = {
    "full": {
        # (model, input shape, batch size, share of the time limit)
        "runs": [
            ("mlp_1024", (784,), 32, 1),
            ("mlp_1024", (784,), 128, 1),
            ("resnet18", (32, 32, 3), 32, 3),
            ("resnet18", (32, 32, 3), 128, 3),
        ],
        "windows": [1, 4, 16, 64],
        "depths": [16, 64, 256],
        "steps": 10,
    },
    "tiny": {
        "runs": [
            ("mlp_tiny", (784,), 8, 1),
            ("cnn", (16, 16, 3), 8, 1),
        ],
        "windows": [1, 4],
        "depths": [16],
        "steps": 3,
    },
}
"""The full run (one GPU, about 7 minutes at most) and the CPU smoke test."""

JSON_NAME = "step_timing.json"
MARKDOWN_NAME = "step_timing.md"


def machine_info():
    """Backend, its devices and versions, CPU and Python, as a dict (no TensorFlow needed)."""
    import importlib.metadata

    backend = keras.backend.backend()
    try:
        version = importlib.metadata.version(backend)
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "backend": backend,
        "backend_version": version,
        "devices": [str(d) for d in keras.distribution.list_devices()],
        "keras": keras.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "matmul_precision": os.environ.get("JAX_DEFAULT_MATMUL_PRECISION"),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def _build(name, num_classes):
    from keras_bsgd.benchmarks.models import MODELS

    return lambda input_shape: MODELS[name](input_shape, num_classes)


def run(config, time_limit_s=None, out_dir=None, command=None, log=print):
    """Times every model and batch size of `config` (one of `CONFIGS`).

    Args:
        config: A dict like `CONFIGS["full"]`.
        time_limit_s: Seconds for the whole run; runs not started by then
            are listed in `skipped`. `None`: no limit.
        out_dir: Folder for `step_timing.json` and `step_timing.md`,
            rewritten after each model and batch size; `None`: not written.
        command: The command line, recorded in the result.
        log: Progress printer (`None`: silent).

    Returns:
        A JSON-ready dict: `command`, `date`, `machine`, `config`, `runs`
        (`time_model` results with `model` and `input_shape`), `skipped`,
        `finished`, `wall_time_s`.
    """
    log = log or (lambda *args, **kwargs: None)
    start = time.perf_counter()
    deadline = step_timing.Deadline(time_limit_s)
    result = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "config": {
            **{k: v for k, v in config.items() if k != "runs"},
            "runs": [list(r[:3]) for r in config["runs"]],
            "time_limit_s": time_limit_s,
            "learning_rate": step_timing.LEARNING_RATE,
            "distinct_batches": step_timing.NUM_BATCHES,
            "data": "synthetic float32 inputs in [0, 1), int32 labels in [0, 10), "
            "sparse cross-entropy from logits",
        },
        "runs": [],
        "skipped": [],
        "finished": False,
    }
    log(f"backend {result['machine']['backend']}, devices {result['machine']['devices']}")
    for i, (name, input_shape, batch_size, share) in enumerate(config["runs"]):
        later = sum(r[3] for r in config["runs"][i:])
        # Out of time: start nothing that cannot even compile (5 s).
        if deadline.left() < 5:
            result["skipped"].append(f"{name} b{batch_size}")
            continue
        limit = None if time_limit_s is None else deadline.left() * share / later
        log(f"{name} b{batch_size}: {'no limit' if limit is None else f'{limit:.0f} s'}")
        timing = step_timing.time_model(
            lambda: _build(name, step_timing.NUM_CLASSES)(input_shape),
            input_shape, batch_size, config["windows"], config["depths"],
            steps=config["steps"], time_limit_s=limit, log=log,
        )
        result["runs"].append({"model": name, "input_shape": list(input_shape), **timing})
        keras.backend.clear_session()
        result["wall_time_s"] = time.perf_counter() - start
        write(result, out_dir)
    result["finished"] = True
    result["wall_time_s"] = time.perf_counter() - start
    write(result, out_dir)
    return result


def write(result, out_dir):
    """Writes `result` as `step_timing.json` and `step_timing.md` into `out_dir` (if any)."""
    if out_dir is None:
        return
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(result, indent=1) + "\n")
    (out / MARKDOWN_NAME).write_text(step_report.to_markdown(result) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_bsgd.benchmarks.step_bench",
        description="Per-step time of BackwardSGD against Keras SGD on the current Keras "
        "backend: R(w) = t(w) / ((w+1) t_sgd), R_exact(k) = t(k) / (k t_sgd).",
    )
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test (under a minute)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "bench_gpu",
                        help="output folder (default: $OUT, else bench_gpu)")
    parser.add_argument("--time-limit-s", type=float, default=None,
                        help="start nothing after this many seconds (default: no limit)")
    parser.add_argument("--models", nargs="+", help="only these models of the configuration")
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="only these batch sizes")
    parser.add_argument("--windows", nargs="*", type=int, help="windows to time instead")
    parser.add_argument("--depths", nargs="*", type=int, help="exact-mode depths to time instead")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", "keras_bsgd.benchmarks.step_bench", *argv])
    config = dict(CONFIGS["tiny" if args.tiny else "full"])
    config["runs"] = [
        r for r in config["runs"]
        if (args.models is None or r[0] in args.models)
        and (args.batch_sizes is None or r[2] in args.batch_sizes)
    ]
    for key in ("windows", "depths"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    result = run(config, args.time_limit_s, args.out, command)
    print(f"wrote {pathlib.Path(args.out) / JSON_NAME} and {MARKDOWN_NAME} "
          f"in {result['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
