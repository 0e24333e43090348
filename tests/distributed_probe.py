"""Subprocess body of distributed_test: one device vs MirroredStrategy on 2 logical CPUs.

TensorFlow must split the CPU before it initializes, so this runs in its own
process. Prints one JSON line with the measured errors.
Usage: python -m tests.distributed_probe WINDOW [xla]  (an int, or "exact")
       python -m tests.distributed_probe WINDOW PATH  (resume checks)
       python -m tests.distributed_probe refusals
       python -m tests.distributed_probe all DIR  (every case above, by name)
"""

import functools
import json
import os
import sys
import traceback

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bsgd  # noqa: E402
from tests.regression_stream import stream  # noqa: E402

STEPS, BATCH = 20, 8


def build(window, jit_compile=False, batchnorm=True, **schedule):
    keras.utils.set_random_seed(0)
    # XLA compiles each replica's pass alone: no synchronized BatchNorm then.
    norm = [keras.layers.BatchNormalization(synchronized=True)] if batchnorm else []
    model = keras_bsgd.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), *norm, keras.layers.Dense(2)]
    )
    # Exact mode sizes its buffer for the whole run, so a resumed run fits.
    max_steps = STEPS if window is None else None
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(
            0.1, momentum=0.5, window=window, max_steps=max_steps, **schedule
        ),
        loss="mse",
        jit_compile=jit_compile,
    )
    return model


class Trajectory(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.states = []

    def on_train_batch_end(self, batch, logs=None):
        self.states.append([keras.ops.convert_to_numpy(v) for v in self.model.variables])


@functools.cache
def mirrored_strategy():
    # One per process: two strategies number their collective ops alike, and
    # then ops of one run abort those of the next ("Shape mismatch in the
    # collective instance").
    return tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])


@functools.cache
def mirrored_run(window, jit_compile=False):
    """A 2-replica model trained over the whole stream, and its per-step states.

    Cached: `main` and `resume` share the graph-mode run in `all`.
    """
    strategy = mirrored_strategy()
    with strategy.scope():
        mirrored = build(window, jit_compile, not jit_compile)
    trajectory = Trajectory()
    mirrored.fit(stream(STEPS, BATCH), verbose=0, callbacks=[trajectory])
    return strategy, mirrored, trajectory


def main(window, jit_compile=False):
    single, single_traj = build(window, jit_compile, not jit_compile), Trajectory()
    single.fit(stream(STEPS, BATCH), verbose=0, callbacks=[single_traj])
    strategy, mirrored, mirrored_traj = mirrored_run(window, jit_compile)

    errors = [
        max(
            float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))
            for a, b in zip(s, m)
        )
        for s, m in zip(single_traj.states, mirrored_traj.states, strict=True)
    ]
    # Every replica holds the same weights, anchor and optimizer state...
    replica_spread = max(
        float(np.max(np.abs(components[0].numpy() - c.numpy())))
        for v in mirrored.variables + mirrored.optimizer.variables
        for components in [strategy.experimental_local_results(v.value)]
        for c in components
    )
    # ... and its own shard of every buffered batch: replica r holds rows
    # [r * B/2, (r + 1) * B/2) of the global batch.
    last = list(stream(STEPS, BATCH))[-1][0].numpy()
    buffer_x = strategy.experimental_local_results(mirrored.replay_buffer._slots[0])
    slot = (STEPS - 1) % mirrored.replay_buffer.capacity
    shards_ok = all(
        np.array_equal(component.numpy()[slot], last[r * BATCH // 2 : (r + 1) * BATCH // 2])
        for r, component in enumerate(buffer_x)
    )
    return dict(
        steps=len(errors),
        max_error=max(errors),
        replica_spread=replica_spread,
        shards_ok=shards_ok,
        iterations=int(keras.ops.convert_to_numpy(mirrored.optimizer.iterations)),
    )


def resume(window, path):
    """Saves a 2-replica run at step 10; resumes it on 2 replicas and on 1 device.

    Both ways of saving: a `.keras` file and a `tf.train.Checkpoint`.
    """
    half = stream(STEPS, BATCH).take(STEPS // 2)
    rest = stream(STEPS, BATCH).skip(STEPS // 2)
    # The uninterrupted run is the one `main(window)` checks against one device.
    _, uninterrupted, _ = mirrored_run(window, False)
    strategy = mirrored_strategy()
    with strategy.scope():
        model = build(window)
    model.fit(half, verbose=0)
    model.save(path)
    checkpoint = checkpoint_of(model).save(os.path.join(os.path.dirname(path), "ckpt"))
    with strategy.scope():
        on_two = keras.models.load_model(path)
    on_two.fit(rest, verbose=0)
    on_one = keras.models.load_model(path)
    on_one.fit(rest, verbose=0)
    # The same state through tf.train.Checkpoint, restored before the first step.
    with strategy.scope():
        tf_on_two = build(window)
    checkpoint_of(tf_on_two).restore(checkpoint)
    tf_on_two.fit(rest, verbose=0)
    tf_on_one = build(window)
    checkpoint_of(tf_on_one).restore(checkpoint)
    tf_on_one.fit(rest, verbose=0)
    expected = uninterrupted.get_weights()

    def error(model):
        return max(
            float(np.linalg.norm(a - b) / np.linalg.norm(b))
            for a, b in zip(model.get_weights(), expected)
        )

    return dict(
        two_replicas=error(on_two),
        one_device=error(on_one),
        tf_two_replicas=error(tf_on_two),
        tf_one_device=error(tf_on_one),
    )


def scheduled():
    """replay_every=3 and forward_steps=4 on 2 replicas against one device, every step."""
    strategy = mirrored_strategy()
    errors = {}
    for window in (3, None):
        schedule = dict(replay_every=3, forward_steps=4)
        single, single_traj = build(window, **schedule), Trajectory()
        single.fit(stream(STEPS, BATCH), verbose=0, callbacks=[single_traj])
        with strategy.scope():
            mirrored = build(window, **schedule)
        mirrored_traj = Trajectory()
        mirrored.fit(stream(STEPS, BATCH), verbose=0, callbacks=[mirrored_traj])
        errors[f"max_error_{window or 'exact'}"] = max(
            float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))
            for s, m in zip(single_traj.states, mirrored_traj.states, strict=True)
            for a, b in zip(s, m)
        )
        errors[f"evaluations_{window or 'exact'}"] = [
            single.gradient_evaluations, mirrored.gradient_evaluations
        ]
    return errors


def report(results):
    """Prints the one line that distributed_test reads."""
    print("RESULT " + json.dumps(results))


def checkpoint_of(model):
    return tf.train.Checkpoint(model=model, optimizer=model.optimizer)


def refusals():
    """What a multi-replica step refuses, each with a ValueError before any step."""
    strategy = mirrored_strategy()
    cases = {
        "steps_per_execution": dict(steps_per_execution=2),
        "mixed_float16": dict(),
        "synchronized_batchnorm_under_xla": dict(jit_compile=True),
    }
    messages = {}
    for name, compile_kwargs in cases.items():
        if name == "mixed_float16":
            keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            with strategy.scope():
                model = build(3)
                model.compile(optimizer=model.optimizer, loss="mse", **compile_kwargs)
            before = [v.numpy() for v in model.weights]
            try:
                model.fit(stream(STEPS, BATCH), verbose=0)
                messages[name] = None
            except ValueError as error:
                messages[name] = str(error)
            unchanged = all(
                np.array_equal(a, v.numpy()) for a, v in zip(before, model.weights)
            )
            messages[name + "_unchanged"] = unchanged
        finally:
            keras.mixed_precision.set_global_policy("float32")
    return messages


def run(argv):
    """The results of the case that `argv` (this module's arguments) names."""
    if argv[0] == "refusals":
        return refusals()
    if argv[0] == "scheduled":
        return scheduled()
    window = None if argv[0] == "exact" else int(argv[0])
    if len(argv) > 1 and argv[1] == "xla":
        return main(window, jit_compile=True)
    if len(argv) > 1:
        return resume(window, argv[1])
    return main(window)


def run_all(directory):
    """Every case in this one process, by name: TensorFlow's start-up costs seconds.

    A case that raises reports its traceback as {"error": ...}; the rest still run.
    """
    cases = {}
    for window in ("3", "exact"):
        # Each resume case saves its `.keras` file and checkpoint in a folder of its own.
        folder = os.path.join(directory, window)
        os.makedirs(folder)
        cases[f"{window}-graph"] = [window]
        cases[f"{window}-xla"] = [window, "xla"]
        cases[f"{window}-resume"] = [window, os.path.join(folder, "run.keras")]
    cases["refusals"] = ["refusals"]
    cases["scheduled"] = ["scheduled"]
    results = {}
    for name, argv in cases.items():
        keras.backend.clear_session()
        try:
            results[name] = run(argv)
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    return results


if __name__ == "__main__":
    if sys.argv[1] == "all":
        report(run_all(sys.argv[2]))
    else:
        report(run(sys.argv[1:]))
