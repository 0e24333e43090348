"""Quickstart: train an MLP on the embedded digits with backward-SGD.

    python examples/quickstart.py                       # windowed, window 16
    python examples/quickstart.py --window 0 --steps 50  # exact backward-SGD

The dataset builds offline into --data-dir on first use.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

import keras_bsgd  # noqa: E402
from keras_bsgd import datasets  # noqa: E402
from keras_bsgd.benchmarks import models  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--window", type=int, default=16, help="0: exact backward-SGD")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    # Batches must have a static shape: drop the partial last batch.
    train = (
        datasets.load("bsgd_digits", "train", args.data_dir)
        .shuffle(2000, seed=0)
        .repeat()
        .batch(args.batch_size, drop_remainder=True)
        .take(args.steps)
    )
    test = datasets.load("bsgd_digits", "test", args.data_dir).batch(360)

    model = keras_bsgd.wrap(models.mlp((8, 8, 1), 10))
    if args.window:
        optimizer = keras_bsgd.BackwardSGD(args.learning_rate, window=args.window)
    else:  # Exact mode replays every batch: step k costs k gradients.
        optimizer = keras_bsgd.BackwardSGD(args.learning_rate, max_steps=args.steps)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=True,
    )
    model.fit(train, epochs=1, verbose=2)
    loss, accuracy = model.evaluate(test, verbose=0)
    print(f"steps={int(model.optimizer.iterations)} test_loss={loss:.4f} "
          f"test_accuracy={accuracy:.4f}")


if __name__ == "__main__":
    main()
