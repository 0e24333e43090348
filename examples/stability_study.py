"""The closed forms E1 and E2 of docs/design.md §1, reproduced with keras_bsgd.

A one-parameter model (a `Dense(1)` fed zeros, so its output is its bias
theta) with batch losses (theta - a_i)^2 / 2 and SGD step h has update maps
T_i(theta) = (1 - h) theta + h a_i. Then:

* E1, i.i.d. targets a_i: backward-SGD's iterates
  (1-h)^k theta_0 + h sum_j (1-h)^(j-1) a_j converge to a point within one
  run, while forward SGD's keep moving;
* E2, two batches alternating a, b: forward SGD ends in a 2-cycle, and
  backward-SGD converges to (a + (1-h) b) / (2 - h).

The script trains the model with `keras.optimizers.SGD` and with exact
`keras_bsgd.BackwardSGD`, checks both against the closed forms, and plots.

    python examples/stability_study.py --steps 40 --output stability
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import keras_bsgd  # noqa: E402


class _Iterates(keras.callbacks.Callback):
    def __init__(self, bias):
        super().__init__()
        self.bias, self.values = bias, []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(float(self.bias.numpy()[0]))


def train(targets, h, theta0, backward):
    """The iterates theta_1..theta_N of SGD or exact backward-SGD on batches a_i."""
    layer = keras.layers.Dense(
        1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(theta0)
    )
    model = keras_bsgd.Sequential([keras.Input((1,)), layer])
    n = len(targets)
    optimizer = (
        keras_bsgd.BackwardSGD(h, max_steps=n) if backward else keras.optimizers.SGD(h)
    )
    model.compile(optimizer=optimizer, loss=lambda y, p: 0.5 * keras.ops.square(p - y))
    iterates = _Iterates(layer.bias)
    x = np.zeros((n, 1), "float32")
    y = np.asarray(targets, "float32")[:, None]
    model.fit(x, y, batch_size=1, shuffle=False, verbose=0, callbacks=[iterates])
    return np.array(iterates.values)


def closed_forms(targets, h, theta0):
    """Forward and backward iterates in float64, from the formulas of E1."""
    forward, theta = [], theta0
    for a in targets:
        theta = (1 - h) * theta + h * a
        forward.append(theta)
    k = np.arange(1, len(targets) + 1)
    weights = h * (1 - h) ** np.arange(len(targets))
    backward = (1 - h) ** k * theta0 + np.cumsum(weights * np.asarray(targets))
    return np.array(forward), backward


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--learning-rate", type=float, default=0.3)
    parser.add_argument("--theta0", type=float, default=3.0)
    parser.add_argument("--output", default="stability_study")
    args = parser.parse_args(argv)
    h, theta0, n = args.learning_rate, args.theta0, args.steps
    os.makedirs(args.output, exist_ok=True)

    a_bar, sigma = 1.0, 1.0
    iid = np.random.default_rng(0).normal(a_bar, sigma, n)
    a, b = 0.0, 1.0
    alternating = np.where(np.arange(n) % 2 == 0, a, b)

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    worst = 0.0
    for name, targets in (("E1", iid), ("E2", alternating)):
        forward = train(targets, h, theta0, backward=False)
        backward = train(targets, h, theta0, backward=True)
        forward_ref, backward_ref = closed_forms(targets, h, theta0)
        worst = max(worst, np.abs(forward - forward_ref).max(),
                    np.abs(backward - backward_ref).max())
        steps = np.arange(1, n + 1)
        ax = axes[0] if name == "E1" else axes[2]
        ax.plot(steps, forward, "k.--", label="forward SGD (keras)")
        ax.plot(steps, backward, "C3.-", label="backward-SGD (keras_bsgd)")
        ax.plot(steps, backward_ref, "C3", alpha=0.3, linewidth=4, label="closed form")
        ax.set_xlabel("step k")
        ax.set_ylabel("θk")
        if name == "E1":
            ax.axhline(a_bar, color="gray", linewidth=0.8)
            ax.set_title(f"E1: i.i.d. targets N({a_bar}, {sigma}²), h={h}")
            distances = axes[1]
            distances.semilogy(steps[1:], np.abs(np.diff(forward)) + 1e-12, "k.--",
                               label="forward")
            distances.semilogy(steps[1:], np.abs(np.diff(backward)) + 1e-12, "C3.-",
                               label="backward")
            distances.semilogy(steps[1:], h * (1 - h) ** steps[:-1] * np.abs(iid[1:] - theta0),
                               "C3", alpha=0.3, linewidth=4,
                               label="h(1−h)^(k−1)|a_k − θ0| (closed form)")
            distances.set_xlabel("step k")
            distances.set_ylabel("|θk − θk−1|")
            distances.set_title("E1: distance between successive iterates")
            distances.legend(fontsize=8)
        else:
            limit = (a + (1 - h) * b) / (2 - h)
            ax.axhline(limit, color="C3", linewidth=0.8, linestyle=":")
            ax.axhline(((1 - h) * a + b) / (2 - h), color="k", linewidth=0.8, linestyle=":")
            ax.set_title(f"E2: alternating a={a}, b={b}; backward → {limit:.3f}", fontsize=10)
            print(f"E2: forward ends at {forward[-2]:.4f}, {forward[-1]:.4f} (2-cycle); "
                  f"backward ends at {backward[-1]:.4f}, limit {limit:.4f}")
        ax.legend(fontsize=8)
    figure.tight_layout()
    path = os.path.join(args.output, "stability_study.png")
    figure.savefig(path, dpi=80)
    print(f"Largest deviation from the closed forms (float32 vs float64): {worst:.2e}")
    print(f"Plot: {path}")
    if worst > 1e-4:
        raise SystemExit(f"keras_bsgd departs from the closed forms by {worst:.2e}")


if __name__ == "__main__":
    main()
