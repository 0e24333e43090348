"""The `keras-bsgd` command line: `keras-bsgd compare ...`.

Example:

```
keras-bsgd compare                                  # bsgd_digits, MLP, ~100 s on 2 CPUs
keras-bsgd compare --dataset mnist1d --steps 300 --windows 8 32
python -m keras_bsgd compare --steps 20 --windows 4 --output /tmp/tiny
```
"""

import argparse
import importlib.util
import sys

DEFAULTS = {
    "dataset": "bsgd_digits",
    "model": "mlp",
    "batch_size": 16,
    "learning_rate": 0.1,
    "steps": 300,
    "windows": [8, 32],
    "seeds": [0, 1, 2],
    "eval_every": 20,
    "output": "bsgd_compare",
}
"""`keras-bsgd compare`'s defaults: about 100 s on 2 CPU cores (exact mode: 45,150 gradients)."""


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-bsgd",
        description="Backward-SGD (arXiv 2502.01557) for Keras: tools.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "bench",
        add_help=False,
        help="Speed and memory of the replay against Keras SGD (see --help).",
    )
    compare = commands.add_parser(
        "compare",
        help="Forward SGD vs exact and windowed backward-SGD on one batch stream.",
        description=(
            "Trains one model from the same initial weights, on the same batch "
            "stream, with the same constant learning rate, by forward SGD, exact "
            "backward-SGD and windowed backward-SGD; writes per-step CSV/JSON, a "
            "summary (Markdown, JSON) and plots into --output."
        ),
    )
    d = DEFAULTS
    compare.add_argument("--dataset", default=d["dataset"], help=(
        "bsgd_digits or mnist1d (built offline on first use), or mnist, "
        "fashion_mnist, cifar10, cifar100 (must already be prepared in --data-dir); "
        f"default: {d['dataset']}"))
    compare.add_argument("--model", default=d["model"],
                         help=f"linear, mlp, mlp_fashion, resnet18 or resnet50; default: {d['model']}")
    compare.add_argument("--batch-size", type=int, default=d["batch_size"],
                         help=f"examples per batch; default: {d['batch_size']}")
    compare.add_argument("--learning-rate", type=float, default=d["learning_rate"],
                         help=f"constant learning rate; default: {d['learning_rate']}")
    compare.add_argument("--momentum", type=float, default=0.0,
                         help="SGD momentum for every method; default: 0")
    compare.add_argument("--steps", type=int, default=d["steps"],
                         help="steps per run (exact backward-SGD costs steps*(steps+1)/2 "
                         f"gradients); default: {d['steps']}")
    compare.add_argument("--windows", type=int, nargs="*", default=d["windows"],
                         help="windows of windowed backward-SGD (give none to skip); default: "
                         + " ".join(map(str, d["windows"])))
    compare.add_argument("--no-exact", dest="exact", action="store_false",
                         help="skip exact backward-SGD (its cost is quadratic in --steps)")
    compare.add_argument("--seeds", type=int, nargs="+", default=d["seeds"],
                         help="seeds of initial weights and batch order; default: "
                         + " ".join(map(str, d["seeds"])))
    compare.add_argument("--eval-every", type=int, default=d["eval_every"],
                         help=f"steps between test evaluations; default: {d['eval_every']}")
    compare.add_argument("--output", default=d["output"], help=f"output folder; default: {d['output']}")
    compare.add_argument("--data-dir", default=None,
                         help="TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    compare.add_argument("--no-jit", dest="jit_compile", action="store_false",
                         help="do not XLA-compile the training steps")
    compare.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _compare(args):
    from keras_bsgd.benchmarks import compare
    from keras_bsgd.datasets import DatasetNotPreparedError

    try:
        result = compare(
            dataset=args.dataset,
            model=args.model,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            momentum=args.momentum,
            steps=args.steps,
            windows=args.windows,
            exact=args.exact,
            seeds=args.seeds,
            eval_every=args.eval_every,
            output=args.output,
            data_dir=args.data_dir,
            jit_compile=args.jit_compile,
            progress=not args.quiet,
        )
    except (ValueError, DatasetNotPreparedError) as error:
        print(f"keras-bsgd compare: error: {error}", file=sys.stderr)
        return 2
    print()
    with open(result.paths["summary_md"]) as f:
        print(f.read())
    print(f"Done in {result.wall_time_s:.1f} s.")
    print(f"Report:   {result.paths['summary_md']} (and summary.json)")
    print(f"Per step: {result.paths['steps_csv']}, {result.paths['evaluations_csv']}, "
          f"{result.paths['runs_json']}")
    print(f"Plots:    {result.paths['plot']}")
    return 0


BENCH_MODULES = (
    "tensorflow_datasets", "importlib_resources", "pandas", "sklearn", "mnist1d", "matplotlib",
    "psutil",
)
"""Top-level modules of the `bench` extra, which `compare` and `bench` import."""

BENCH_HINT = "pip install 'keras-bsgd[bench]'"


def _missing_bench_modules():
    """The `bench`-extra modules that are not installed (looked up, not imported)."""
    return [name for name in BENCH_MODULES if importlib.util.find_spec(name) is None]


def _bench_extra_error(command, missing):
    print(f"keras-bsgd {command}: needs the benchmark dependencies ({', '.join(missing)} "
          f"not installed): {BENCH_HINT}", file=sys.stderr)
    return 2


def main(argv=None):
    """Runs the `keras-bsgd` command line.

    Args:
        argv: The arguments, without the program name. Defaults to `None`
            (`sys.argv[1:]`).

    Returns:
        The exit status: 0 on success, 2 on a usage or data error or when
        the `bench` extra is not installed.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    # The tools need the `bench` extra and the library does not: a lean
    # install gets one line saying what to install, before TensorFlow's
    # import can print anything.
    if argv[:1] in (["bench"], ["compare"]) and "-h" not in argv and "--help" not in argv:
        missing = _missing_bench_modules()
        if missing:
            return _bench_extra_error(argv[0], missing)
    try:
        return _run(argv)
    except ImportError as error:
        missing = (error.name or "").split(".")[0]
        if missing not in BENCH_MODULES:
            raise
        return _bench_extra_error(argv[0], [missing])


def _run(argv):
    if argv[:1] == ["bench"]:
        # The benchmark owns its options; imported here to keep `compare` light.
        from keras_bsgd.benchmarks import speed

        return speed.main(argv[1:], prog="keras-bsgd bench")
    args = _parser().parse_args(argv)
    if args.command == "compare":
        return _compare(args)
    raise AssertionError(f"unhandled command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
