"""Random layers keyed to a batch on JAX (the layout contract is `keras_bsgd.random_layers`').

A Keras `SeedGenerator` state is `[seed, counter]`, uint32 on JAX, and the
counter advances by one per draw.
"""

from keras import ops

# Draws per map and random layer before two maps' counters could meet. A
# layer draws once or twice per forward pass; with uint32 counters this
# keeps maps apart for 2**26 (67 million) batches. (TensorFlow's int64
# counters use 2**20.)
DRAWS_PER_MAP = 2**6


def is_seed_state(variable):
    """Whether `variable` is the state of a `keras.random.SeedGenerator`."""
    return variable.name == "seed_generator_state"


def keyed(state, index):
    """The seed state `state` with its counter keyed to the batch's arrival `index`."""
    counter = ops.cast(index, state.dtype) * ops.cast(DRAWS_PER_MAP, state.dtype)
    return ops.stack([state[0], counter])
