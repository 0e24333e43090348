"""One process of a multi-process `keras.distribution.DataParallel` run (JAX, one CPU device each).

Usage: python -m tests.jax_multiprocess_probe PROCESS_ID NUM_PROCESSES PORT
(NUM_PROCESSES 1: one device, no distribution). Each process feeds its own
part of every global batch of 8. Prints one line "RESULT <json>": per
configuration, the trained weights and this process's bytes of the ring.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402

# Cross-process collectives on CPUs.
jax.config.update("jax_cpu_collectives_implementation", "gloo")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bsgd  # noqa: E402

CONFIGS = [
    dict(window=3),
    dict(window=3, replay_every=2, forward_steps=2),
    dict(max_steps=30, replay_every=3),
    dict(max_steps=30, forward_steps=4, momentum=0.5),
]
GLOBAL_BATCH = 8


def local_data(process, processes):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(3, 2))).astype("float32")
    size = GLOBAL_BATCH // processes
    rows = np.concatenate([
        np.arange(start, start + GLOBAL_BATCH)[process * size:(process + 1) * size]
        for start in range(0, len(x), GLOBAL_BATCH)
    ])
    return x[rows], y[rows]


def train(settings, x, y, batch_size):
    model = keras_bsgd.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(5, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(1)),
        keras.layers.Dense(2, kernel_initializer=keras.initializers.GlorotUniform(2)),
    ])
    # Whole batches on one device too, so that the rings compare (a distributed
    # run does not buffer example indices).
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, **settings), loss="mse",
                  index_buffering=False)
    # 24 steps; a second fit() continues the run (its batch size is this process' part).
    model.fit(x, y, batch_size=batch_size, epochs=2, shuffle=False, verbose=0)
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    ring = [v.value for v in model.optimizer.variables if "replay_batch" in v.path]
    return dict(
        weights=[np.asarray(v.value.addressable_shards[0].data).tolist()
                 for v in model.trainable_variables],
        ring_bytes=sum(shard.data.nbytes for r in ring for shard in r.addressable_shards),
    )


def main(process, processes, port):
    if processes > 1:
        keras.distribution.initialize(
            job_addresses=f"127.0.0.1:{port}", num_processes=processes, process_id=process
        )
        distribution = keras.distribution.DataParallel()
        distribution.auto_shard_dataset = False  # each process feeds its own part
        keras.distribution.set_distribution(distribution)
    x, y = local_data(process, processes)
    results = [train(settings, x, y, GLOBAL_BATCH // processes) for settings in CONFIGS]
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
