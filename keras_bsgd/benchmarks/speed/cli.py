"""`keras-bsgd bench` (`python -m keras_bsgd.benchmarks.speed`): the speed benchmark's options."""

import argparse
import json
import shlex
import sys

from keras_bsgd.benchmarks import backend_choice
from keras_bsgd.benchmarks.speed.config import DEFAULTS
from keras_bsgd.benchmarks.speed.config import INPUT_SHAPES
from keras_bsgd.benchmarks.speed.config import TINY

PROG = "python -m keras_bsgd.benchmarks.speed"


def build_parser(prog=PROG):
    """The argument parser of `main` (also used by `keras-bsgd bench`)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Speed and memory of BackwardSGD against Keras SGD: R(w) = t(w) / ((w+1) t_sgd), "
            "R_exact(k) = t(k) / (k t_sgd), compile times, peak RSS, replay-buffer bytes."
        ),
    )
    d = DEFAULTS
    parser.add_argument("--tiny", action="store_true",
                        help="smoke-test configuration (about 20 s); other flags override it")
    parser.add_argument("--models", nargs="+", choices=sorted(INPUT_SHAPES), default=None,
                        help=f"default: {' '.join(d['models'])}")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help=f"default: {' '.join(map(str, d['batch_sizes']))}")
    parser.add_argument("--windows", type=int, nargs="*", default=None,
                        help=f"default: {' '.join(map(str, d['windows']))}")
    parser.add_argument("--depths", type=int, nargs="*", default=None,
                        help=f"exact-mode depths; default: {' '.join(map(str, d['depths']))}")
    parser.add_argument("--sgd-steps-per-execution", type=int, default=None,
                        help=f"default: {d['sgd_steps_per_execution']}")
    parser.add_argument("--bsgd-steps-per-execution", type=int, default=None,
                        help="default: ceil(sgd_steps_per_execution / (w + 1)), capped so that "
                        "one execution takes about 2 s")
    parser.add_argument("--repeats", type=int, default=None, help=f"default: {d['repeats']}")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"timing seconds per setting; default: {d['budget_s']}")
    parser.add_argument("--no-fast-forward", dest="fast_forward", action="store_false",
                        default=None, help="run every step up to steady state / depth k")
    parser.add_argument("--memory-steps", type=int, default=None,
                        help=f"steps of the memory projection; default: {d['memory_steps']}")
    parser.add_argument("--memory-examples", type=int, default=None,
                        help="examples in the measured index-buffering data store; default: "
                        f"{d['memory_examples']}")
    parser.add_argument("--memory-only", action="store_true",
                        help="measure only the buffer memory and rewrite only its section of "
                        "--output (seconds, no timing)")
    parser.add_argument("--time-limit-s", type=float, default=None,
                        help="skip what remains after this many seconds")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--output", default=None,
                        help="Markdown file to write the tables into (e.g. docs/performance.md)")
    parser.add_argument("--json", default=None, help="also write the full result as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--steps", type=int, default=None,
                        help="JAX only: steps timed per setting inside fit(); default: 10 "
                        "(--tiny: 3)")
    parser.add_argument("--backend", choices=backend_choice.BACKENDS, default=None,
                        help="the Keras backend (sets KERAS_BACKEND before Keras is imported); "
                        "default: $KERAS_BACKEND. On JAX the steps are timed inside fit(), "
                        "without fast-forward (keras_bsgd.benchmarks.speed.jax_timing)")
    return parser


def main(argv=None, prog=PROG):
    """Runs the benchmark from the command line; prints the ratios.

    Args:
        argv: Arguments without the program name (default: `sys.argv[1:]`).
        prog: Program name for help and the recorded command.

    Returns:
        0.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog).parse_args(argv)
    if args.backend is not None:
        try:
            backend_choice.select(args.backend, command_line=False)
        except RuntimeError as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return 2
    config = dict(TINY if args.tiny else DEFAULTS)
    for key in config:
        value = getattr(args, key, None)
        if value is not None:
            config[key] = value
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    def checkpoint(partial):
        if args.json:
            with open(args.json, "w") as f:
                json.dump(partial, f, indent=1)

    import keras  # After --backend.

    if keras.backend.backend() == "jax":
        return _main_jax(args, config, prog, " ".join([prog, *map(shlex.quote, argv)]), log)
    if args.memory_only:
        return _memory_only(config, args.output)
    from keras_bsgd.benchmarks.speed import markdown
    from keras_bsgd.benchmarks.speed.harness import benchmark
    from keras_bsgd.benchmarks.speed.summary import summary_lines

    result = benchmark(**config, command=" ".join([prog, *map(shlex.quote, argv)]), log=log,
                       checkpoint=checkpoint)
    print()
    for line in summary_lines(result):
        print(line)
    return _write_outputs(result, args, markdown.write_report)


def _main_jax(args, config, prog, command, log):
    """The JAX benchmark: fit()-based step times (`jax_timing`); no buffer memory."""
    from keras_bsgd.benchmarks.speed import jax_timing

    if args.memory_only:
        print(f"{prog}: error: --memory-only measures TensorFlow's keras_bsgd.ReplayBuffer; "
              "run it with KERAS_BACKEND=tensorflow. Received: --memory-only on JAX",
              file=sys.stderr)
        return 2
    steps = args.steps or jax_timing.STEPS["tiny" if args.tiny else "full"]
    result = jax_timing.benchmark(config, steps, command=command, log=log)
    print()
    for line in jax_timing.summary_lines(result):
        print(line)
    print("(JAX: timed inside fit(), every step run; the buffer-memory section is "
          "TensorFlow's)")
    return _write_outputs(result, args, jax_timing.write_report)


def _write_outputs(result, args, write_report):
    """Writes the report (`--output`, with `write_report`) and the JSON (`--json`); returns 0."""
    if args.output:
        write_report(result, args.output)
        print(f"Wrote {args.output}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"Wrote {args.json}")
    return 0


def _memory_only(config, output):
    from keras_bsgd.benchmarks.speed import markdown
    from keras_bsgd.benchmarks.speed.memory import buffer_memory
    from keras_bsgd.benchmarks.speed.memory import memory_capacity
    from keras_bsgd.benchmarks.speed.summary import memory_summary_lines

    bm = buffer_memory(config["memory_batch_size"], (32, 32, 3),
                       memory_capacity(config["windows"]), config["memory_steps"],
                       config["memory_examples"])
    for line in memory_summary_lines(bm):
        print(line)
    if output:
        markdown.write_memory_section(bm, output)
        print(f"Wrote {output}")
    return 0
