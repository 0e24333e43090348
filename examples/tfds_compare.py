"""Backward-SGD against forward SGD, a cosine schedule and an EMA, from a warm start, on TFDS.

    python examples/tfds_compare.py --dataset mnist1d --forward-steps 5000 --steps 1000
    python examples/tfds_compare.py --dataset fashion_mnist --model mlp_fashion \\
        --data-dir /path/to/prepared/tfds --no-exact --steps 2000

The same comparison as `keras-bsgd compare`, called from Python. The
embedded datasets (bsgd_digits, mnist1d) build offline; mnist, fashion_mnist,
cifar10 and cifar100 must already be prepared in --data-dir.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_bsgd import benchmarks  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--forward-steps", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--windows", type=int, nargs="*", default=[16])
    parser.add_argument("--no-exact", dest="exact", action="store_false")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--output", default="tfds_compare")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    result = benchmarks.compare(
        dataset=args.dataset, model=args.model, batch_size=args.batch_size,
        learning_rate=args.learning_rate, weight_decay=args.weight_decay or None,
        forward_steps=args.forward_steps, steps=args.steps, windows=args.windows,
        exact=args.exact, seeds=args.seeds, eval_every=args.eval_every,
        output=args.output, data_dir=args.data_dir, progress=True,
    )
    print()
    for method, stats in result.summary["methods"].items():
        print(f"{method:>16}: test acc {stats['final_test_accuracy']['mean']:.4f}, "
              f"test-loss std (2nd half) {stats['test_loss_std_last_half']['mean']:.2e}, "
              f"{stats['grad_evals']['mean']:,.0f} gradient evaluations")
    print(f"Report: {result.paths['summary_md']}\nPlot:   {result.paths['plot']}")


if __name__ == "__main__":
    main()
