"""Random layers keyed to a batch: the one private Keras contract keras_bsgd relies on.

Keras random ops (Dropout, GaussianNoise, RandomFlip, ...) are stateless
functions of a `keras.random.SeedGenerator`'s state variable, named
`seed_generator_state`, which holds `[seed, counter]`; the counter advances
by one per draw. Keras has no public API to set that state; keras_bsgd sets
the counter so that every replay of batch `i` draws the same numbers.
`tests/random_layers_test.py` fails if Keras changes the layout.
"""

import keras

# Draws per map before two maps' counters could meet.
DRAWS_PER_MAP = 2**20


def is_seed_state(variable):
    """Whether `variable` is the state of a `keras.random.SeedGenerator`."""
    return variable.name == "seed_generator_state"


def key_to_batch(states, index):
    """Keys the draws of every seed state in `states` to the arrival `index` of a batch.

    Setting the counter to `index * 2**20` makes the draws of map `T_index`
    the same at every replay, while each layer's own seed (set by
    `keras.utils.set_random_seed` or `seed=`) keeps runs reproducible and
    layers independent.

    Args:
        states: Seed-state variables (see `is_seed_state`).
        index: Scalar integer tensor, the batch's arrival step.
    """
    for state in states:
        counter = keras.ops.cast(index, state.dtype) * DRAWS_PER_MAP
        state.assign(keras.ops.stack([state[0], counter]))
