"""The `keras-bsgd` command line: `keras-bsgd compare ...`, `keras-bsgd bench ...`.

Example:

```
keras-bsgd compare                        # bsgd_digits MLP from a warm start, ~3 min on 2 CPUs
keras-bsgd compare --weight-decay 0       # the same without weight decay
keras-bsgd compare --forward-steps 0 --steps 300 --eval-every 20   # a cold start
keras-bsgd compare --regime paper_mlp     # the paper's regime: no weight decay, an MLP
keras-bsgd compare --regime paper_resnet --forward-steps 0   # a ResNet-18 at width 8, cold
python -m keras_bsgd compare --forward-steps 20 --steps 20 --windows 4 --output /tmp/tiny
```

Both commands run on the Keras backend of `KERAS_BACKEND` (TensorFlow or JAX),
or of `--backend tensorflow|jax`, which sets it (`import keras_bsgd` imports
Keras, so a command line whose Keras already runs on the other backend
starts itself again; set `KERAS_BACKEND` to spare that). Their reports say
which backend ran.

TensorFlow's C++ start-up logs are hidden unless `TF_CPP_MIN_LOG_LEVEL` is set
(e.g. `TF_CPP_MIN_LOG_LEVEL=0 keras-bsgd compare` shows them all); see
`keras_bsgd.native_logs`.
"""

import argparse
import importlib.util
import sys

from keras_bsgd.benchmarks import backend_choice
from keras_bsgd.benchmarks.backend_choice import BACKENDS


def _parser():
    # The runner owns the defaults; importing it needs the `bench` extra,
    # which `main` checks first.
    from keras_bsgd.benchmarks.regimes import REGIMES
    from keras_bsgd.benchmarks.runner import DEFAULTS

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
        argument_default=argparse.SUPPRESS,
        help="Backward-SGD against forward SGD, a cosine schedule, an EMA, a uniform average "
        "and schedule-free AdamW, from a warm start.",
        description=(
            "For each seed: one forward-SGD warm-up of --forward-steps steps from the "
            "same initial weights, then every method runs --steps steps from that "
            "warm start on the same batch stream at the same learning rate, momentum "
            "and weight decay: forward_sgd (constant rate), forward_sgd_decay (cosine "
            "decay to 0), forward_sgd_ema (Keras use_ema), forward_sgd_polyak (uniform "
            "average of the iterates), schedule_free_adamw (Keras ScheduleFreeAdamW, its "
            "own learning rate chosen on a held-out split), backward_exact and "
            "backward_w<w>. Writes per-step CSV/JSON, a summary (Markdown, JSON) and "
            "plots into --output."
        ),
        epilog="TensorFlow's C++ logs are hidden unless TF_CPP_MIN_LOG_LEVEL is set.",
    )
    _compare_arguments(compare, DEFAULTS, REGIMES)
    return parser


def _compare_arguments(compare, d, regimes):
    """The options of `keras-bsgd compare`; their help gives the runner's defaults `d`.

    The options have no argparse defaults (the subparser suppresses them): an
    option not given stays out of the namespace, and `_compare_settings`
    takes it from the `--regime`, else from `d`.
    """
    compare.add_argument("--regime", choices=sorted(regimes), help=(
        f"a named setting ({', '.join(sorted(regimes))}): the paper's regime, without "
        "weight decay, on image tasks rendered from the embedded digits "
        "(docs/results.md); options given explicitly override it, e.g. --forward-steps 0 "
        "for its cold start"))
    compare.add_argument("--dataset", help=(
        "bsgd_digits or mnist1d (built offline on first use), digits_28x28 or "
        "digits_32x32x3 (rendered from bsgd_digits at Fashion-MNIST's and CIFAR's shapes), "
        "or mnist, fashion_mnist, cifar10, cifar100 (must already be prepared in "
        f"--data-dir); default: {d['dataset']}"))
    compare.add_argument("--model", help=(
        "linear (softmax regression), mlp (one hidden layer of 64), mlp_fashion, resnet18, "
        f"resnet18_w8 or resnet50; default: {d['model']}"))
    compare.add_argument("--batch-size", type=int,
                         help=f"examples per batch; default: {d['batch_size']}")
    compare.add_argument("--learning-rate", type=float,
                         help=f"learning rate of every SGD method; default: {d['learning_rate']}")
    compare.add_argument("--momentum", type=float,
                         help=f"SGD momentum of every method; default: {d['momentum']}")
    compare.add_argument("--weight-decay", type=float,
                         help="Keras' decoupled weight decay of the warm-up and every method "
                         f"(0: none); default: {d['weight_decay']}")
    compare.add_argument("--forward-steps", type=int,
                         help="shared forward-SGD warm-up steps W (0: a cold start); default: "
                         f"{d['forward_steps']}")
    compare.add_argument("--steps", type=int,
                         help="steps N of every method after the warm-up (exact backward-SGD "
                         f"costs N(N+E)/(2E) gradients, E dividing N); default: {d['steps']}")
    compare.add_argument("--eval-every", type=int,
                         help="steps E between evaluations, and backward-SGD's replay_every; "
                         f"default: {d['eval_every']}")
    _method_arguments(compare, d)
    compare.add_argument("--seeds", type=int, nargs="+",
                         help="seeds of initial weights and batch order; default: "
                         + " ".join(map(str, d["seeds"])))
    compare.add_argument("--output", help=f"output folder; default: {d['output']}")
    compare.add_argument("--data-dir",
                         help="TFDS data directory (default: $TFDS_DATA_DIR or "
                         "~/tensorflow_datasets)")
    compare.add_argument("--no-jit", dest="jit_compile", action="store_false",
                         help="do not XLA-compile the training steps")
    compare.add_argument("--quiet", action="store_true", help="no progress bar")
    compare.add_argument("--backend", choices=BACKENDS, help=(
        "the Keras backend to train on (sets KERAS_BACKEND); default: $KERAS_BACKEND"))


def _method_arguments(compare, d):
    """The options of `keras-bsgd compare` that choose and set up the methods."""
    windows = " ".join(map(str, d["windows"])) or "none"
    compare.add_argument("--windows", type=int, nargs="*",
                         help="windows of windowed backward-SGD (give none to skip); default: "
                         f"{windows}")
    compare.add_argument("--no-exact", dest="exact", action="store_false",
                         help="skip exact backward-SGD")
    compare.add_argument("--no-baselines", dest="baselines", action="store_false",
                         help="skip forward_sgd_decay, forward_sgd_ema, forward_sgd_polyak and "
                         "schedule_free_adamw")
    grid = " ".join(f"{r:g}" for r in d["schedule_free_learning_rates"])
    compare.add_argument("--schedule-free-lr", dest="schedule_free_learning_rates", type=float,
                         nargs="+", help="learning rates tried for schedule_free_adamw "
                         "(Adam-based), the best on the held-out split wins; one: used as "
                         f"given; default: {grid}")
    compare.add_argument("--validation-fraction", type=float,
                         help="fraction of the training set held out of every run, to choose "
                         f"schedule_free_adamw's learning rate; default: "
                         f"{d['validation_fraction']}")


def _compare_settings(args):
    """`compare`'s keyword arguments: the runner's defaults, the regime's, the options given."""
    from keras_bsgd.benchmarks import regimes
    from keras_bsgd.benchmarks.runner import DEFAULTS

    settings = {k: v for k, v in DEFAULTS.items() if k != "eval_batch_size"}
    given = dict(vars(args))
    regime = given.pop("regime", None)
    if regime:
        settings.update(regimes.settings(regime))
    for name in ("command", "quiet", "backend"):
        given.pop(name, None)
    settings.update(given)
    settings["weight_decay"] = settings["weight_decay"] or None  # 0: none.
    return settings


def _compare(args):
    from keras_bsgd.benchmarks import compare
    from keras_bsgd.datasets import DatasetNotPreparedError

    try:
        result = compare(**_compare_settings(args), progress=not getattr(args, "quiet", False))
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
    command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["bench"], ["compare"]) and "-h" not in argv and "--help" not in argv:
        status = _select_backend(argv, command_line)
        if status is not None:
            return status
        argv = backend_choice.pop_backend(argv)[1]
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


def _select_backend(argv, command_line):
    """Applies `--backend`; an exit status if it cannot, else `None` (see `backend_choice`)."""
    try:
        requested = backend_choice.pop_backend(argv)[0]
        if requested is not None:
            backend_choice.select(requested, command_line)
    except (ValueError, RuntimeError) as error:
        print(f"keras-bsgd {argv[0]}: error: {error}", file=sys.stderr)
        return 2
    return None


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
