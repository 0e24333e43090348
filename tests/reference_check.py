"""BackwardSGD's trajectory against the float64 NumPy reference on whatever device Keras uses.

Usage: python -m tests.reference_check [--steps N] [--json PATH]

A standalone check for a machine without pytest or TensorFlow (the GPU run
of scripts/bench_gpu.sh): backend-neutral (Keras and NumPy), it trains the
reference MLP (`tests.reference`: tanh hidden layer, mean squared error)
under XLA in each configuration of `CASES`, records the weights and
momentum slots after every step, and prints the largest absolute difference
from the float64 reference per configuration. Exits with status 1 if any
exceeds `TOLERANCE` or raises. On JAX it sets
`JAX_DEFAULT_MATMUL_PRECISION=highest` unless set: GPUs otherwise run
float32 matmuls in TF32 (10-bit mantissa).
"""

import os

os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tests import reference  # noqa: E402

LEARNING_RATE = 0.1
TOLERANCE = 1e-5
BATCH_SIZE = 4

CASES = {
    # name: (BackwardSGD keywords, the reference's window, forward steps, replay interval)
    "exact, momentum 0.9": (dict(momentum=0.9), None, 0, 1),
    "window 4, Nesterov 0.9": (dict(momentum=0.9, nesterov=True, window=4), 4, 0, 1),
    "exact, replay_every=3, momentum 0.5": (dict(momentum=0.5, replay_every=3), None, 0, 3),
    "exact, forward_steps=3, Nesterov 0.5": (
        dict(momentum=0.5, nesterov=True, forward_steps=3), None, 3, 1
    ),
}


class _StateRecorder(keras.callbacks.Callback):
    """Weights and momentum slots after every step, as float64 arrays."""

    def __init__(self):
        super().__init__()
        self.states = []

    def on_train_batch_end(self, batch, logs=None):
        model = self.model  # on JAX: writes the step's state back to the variables
        self.states.append({
            "params": [np.asarray(keras.ops.convert_to_numpy(v), np.float64)
                       for v in model.trainable_variables],
            "momentum": [np.asarray(keras.ops.convert_to_numpy(m), np.float64)
                         for m in getattr(model.optimizer, "momentums", [])],
        })


def stream(steps, seed=0, n_in=3, n_hidden=5, n_out=2):
    """A fixed list of float64 `(x, y)` batches and the MLP's initial parameters."""
    rng = np.random.default_rng(seed)
    batches = [(rng.normal(size=(BATCH_SIZE, n_in)), rng.normal(size=(BATCH_SIZE, n_out)))
               for _ in range(steps)]
    return batches, reference.init_mlp(rng, n_in, n_hidden, n_out)


def expected_states(params, batches, window, forward_steps, replay_every, **sgd):
    """The float64 states the model holds after each step."""
    state0 = reference.initial_state(params, sgd.get("momentum", 0.0))
    iterates = reference.warm_backward_sgd(
        state0, batches, [LEARNING_RATE] * len(batches), window=window,
        forward_steps=forward_steps, **sgd,
    )
    # Forward steps and the epoch's last step are always replayed.
    replayed = set(range(1, forward_steps + 1)) | {len(batches)}
    return [state0 if s is None else s
            for s in reference.observed(iterates, replay_every, replayed)]


def trajectory(params, batches, **settings):
    """Trains the reference MLP with `BackwardSGD(**settings)`; the state after each step."""
    import keras_bsgd

    n_in, n_hidden = params[0].shape
    model = keras_bsgd.Sequential([
        keras.Input((n_in,)),
        keras.layers.Dense(n_hidden, activation="tanh"),
        keras.layers.Dense(params[2].shape[1]),
    ])
    model.set_weights([p.astype("float32") for p in params])
    if settings.get("window") is None:  # exact mode: its buffer capacity
        settings = {**settings, "max_steps": len(batches)}
    model.compile(optimizer=keras_bsgd.BackwardSGD(LEARNING_RATE, **settings),
                  loss="mse", jit_compile=True)
    x = np.concatenate([b[0] for b in batches]).astype("float32")
    y = np.concatenate([b[1] for b in batches]).astype("float32")
    recorder = _StateRecorder()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, shuffle=False, verbose=0,
              callbacks=[recorder])
    return recorder.states


def max_abs_error(states, expected):
    """The largest absolute difference over every step, parameter and momentum slot."""
    if len(states) != len(expected):
        raise ValueError(f"Expected {len(expected)} recorded steps. Received: {len(states)}")
    errors = [0.0]
    for state, want in zip(states, expected):
        for key in ("params", "momentum"):
            if len(state[key]) != len(want[key]):
                raise ValueError(f"Expected {len(want[key])} {key} arrays. "
                                 f"Received: {len(state[key])}")
            errors += [float(np.max(np.abs(a - b))) for a, b in zip(state[key], want[key])]
    return max(errors)


def check(steps=20):
    """Every case of `CASES`: `{name: {"max_abs_error": e, "ok": bool}}` (or `"error"`)."""
    batches, params = stream(steps)
    results = {}
    for name, (settings, window, forward_steps, replay_every) in CASES.items():
        sgd = {k: settings[k] for k in ("momentum", "nesterov") if k in settings}
        try:
            error = max_abs_error(
                trajectory(params, batches, **settings),
                expected_states(params, batches, window, forward_steps, replay_every, **sgd),
            )
            results[name] = {"max_abs_error": error, "ok": error <= TOLERANCE}
        except Exception:  # reported per case; the check fails
            results[name] = {"error": traceback.format_exc(), "ok": False}
        keras.backend.clear_session()
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.reference_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    devices = [str(d) for d in keras.distribution.list_devices()]
    print(f"reference check on {keras.backend.backend()} {devices}, {args.steps} steps, "
          f"matmul precision {os.environ.get('JAX_DEFAULT_MATMUL_PRECISION')}")
    results = check(args.steps)
    for name, r in results.items():
        if "error" in r:
            print(f"  {name}: FAILED\n{r['error']}")
        else:
            print(f"  {name}: max abs error {r['max_abs_error']:.2e} "
                  f"({'ok' if r['ok'] else f'above {TOLERANCE:g}'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": keras.backend.backend(), "devices": devices,
                       "steps": args.steps, "tolerance": TOLERANCE, "cases": results}, f, indent=1)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
