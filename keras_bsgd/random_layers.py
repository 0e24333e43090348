"""Random layers keyed to a batch, through a `SeedGenerator` state layout Keras does not publish.

Keras random ops (Dropout, GaussianNoise, RandomFlip, ...) are stateless
functions of a `keras.random.SeedGenerator`'s state variable, named
`seed_generator_state`, which holds `[seed, counter]`; the counter advances
by one per draw. Keras has no public API to set that state; keras_bsgd sets
the counter so that every replay of batch `i` draws the same numbers.
`tests/random_layers_test.py` fails if Keras changes the layout.
"""

import keras

# Draws per map and random layer before two maps' counters could meet. A
# layer draws once or twice per forward pass. TensorFlow's counters are
# int64; JAX's are uint32, where 2**6 keeps 2**26 (67 million) batches apart.
DRAWS_PER_MAP = {"tensorflow": 2**20, "jax": 2**6}


def draws_per_map():
    """The seed-counter stride per map of the Keras backend in use."""
    return DRAWS_PER_MAP[keras.backend.backend()]


def is_seed_state(variable):
    """Whether `variable` is the state of a `keras.random.SeedGenerator`."""
    return variable.name == "seed_generator_state"


def keyed(state, index):
    """The seed state `state` (a value) with its counter keyed to the batch's arrival `index`.

    Setting the counter to `index * draws_per_map()` makes the draws of map
    `T_index` the same at every replay, while each layer's own seed (set by
    `keras.utils.set_random_seed` or `seed=`) keeps runs reproducible and
    layers independent.

    Args:
        state: The value of a seed state (see `is_seed_state`).
        index: Scalar integer tensor, the batch's arrival step.
    """
    counter = keras.ops.cast(index, state.dtype) * draws_per_map()
    return keras.ops.stack([state[0], keras.ops.cast(counter, state.dtype)])


def key_to_batch(states, index):
    """Keys the draws of every seed-state variable in `states` to the arrival `index` of a batch."""
    for state in states:
        state.assign(keyed(state, index))
