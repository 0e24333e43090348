"""A slow reference built from plain Keras: backward-SGD as repeated `train_on_batch`.

For every step k it resets a plain `keras.Model` to S_0 and applies Keras'
own SGD step to the batches in the composition order of docs/design.md §1, with
each random layer keyed to the batch's arrival index exactly as documented
in `keras_bsgd.random_layers` (SeedGenerator counter = index * 2**20). No code of
keras_bsgd runs here.
"""

import numpy as np


def seed_random_layers(model, index, draws_per_map=2**20):
    for state in model.non_trainable_variables:
        if state.name == "seed_generator_state":
            value = np.array(state.numpy())
            state.assign(np.array([value[0], index * draws_per_map], value.dtype))


def composition_order(k, window):
    """1-based arrival indices applied at step k, first to last."""
    w = k if window is None else min(window, k)
    return list(range(1, k - w + 1)) + list(range(k, k - w, -1))


def backward_states(
    model, optimizer, batches, window=None, learning_rates=None, draws_per_map=2**20,
    **compile_kwargs,
):
    """Per-step states (all model variables, in `model.variables` order).

    Args:
        model: A built plain Keras model holding S_0 (it is modified).
        optimizer: A plain Keras optimizer; its slots are zeroed before each step.
        batches: List of dicts of `train_on_batch` keyword arguments.
        window: None for exact backward-SGD, else the window.
        learning_rates: Optional per-batch learning rates (the rate each
            map was frozen with); by default the optimizer's own.
        draws_per_map: The seed-counter stride per arrival index (the
            backend's; TensorFlow's by default).
    """
    model.compile(optimizer=optimizer, loss=compile_kwargs.pop("loss", "mse"), **compile_kwargs)
    initial = [np.array(v.numpy()) for v in model.variables]
    states = []
    for k in range(1, len(batches) + 1):
        for v, value in zip(model.variables, initial):
            v.assign(value)
        if optimizer.built:
            for v in optimizer.variables:
                if v is not optimizer.iterations and "learning_rate" not in v.name:
                    v.assign(np.zeros(v.shape, v.dtype))
        for index in composition_order(k, window):
            seed_random_layers(model, index, draws_per_map)
            if learning_rates is not None:
                optimizer.learning_rate = learning_rates[index - 1]
            model.train_on_batch(**batches[index - 1])
        states.append([np.array(v.numpy()) for v in model.variables])
    return states
