"""What a backward-SGD `fit()` checks and decides before its first step.

Batches must all have one size (the buffer's slots are static), exact mode's
buffer must be sized from the run's length, and an index-buffered run needs
in-memory arrays in every `fit()`. All of it is checked on the host, before
any step, so a refused `fit()` leaves the training state as it was.
"""

import math

import tensorflow as tf

from keras_bsgd import errors
from keras_bsgd.backend.tensorflow import fit_inputs
from keras_bsgd.backend.tensorflow import index_feed
from keras_bsgd.backend.tensorflow.buffer import STATIC_SHAPE_HINT
from keras_bsgd.backend.tensorflow.data_store import DataStore


def plan(run, optimizer, arguments):
    """Checks batch sizes and plans exact mode's buffer for a `fit()`.

    Args:
        run: The `Run` this `fit()` continues or starts.
        optimizer: The run's `BackwardSGD`.
        arguments: `fit()`'s arguments by name.

    Returns:
        The batch size of in-memory array input, or None for other input.

    Raises:
        ValueError: if a batch would be partial, the data is empty, the
            batch size differs from the run's, or exact mode's buffer cannot
            hold the run (or nothing gives its length).
    """
    x = arguments.get("x")
    epochs = arguments.get("epochs", 1) - arguments.get("initial_epoch", 0)
    steps_per_epoch = arguments.get("steps_per_epoch")
    num_samples = fit_inputs.num_array_samples(x)
    batch_size = None
    if num_samples is not None:
        batch_size = arguments.get("batch_size")
        batch_size = 32 if batch_size is None else batch_size
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                "`batch_size` must be a positive integer. Received: "
                f"batch_size={batch_size!r}"
            )
        if num_samples == 0:
            raise ValueError(
                "The training data is empty: backward-SGD has no batch to "
                "buffer. Received: 0 samples"
            )
        split = arguments.get("validation_split") or 0.0
        if split and arguments.get("validation_data") is None:
            num_samples = int(math.floor(num_samples * (1.0 - split)))
        if num_samples % batch_size:
            raise ValueError(
                f"{STATIC_SHAPE_HINT} Received: {num_samples} training "
                f"samples with batch_size={batch_size}, which leaves a "
                f"partial last batch of {num_samples % batch_size}."
            )
        if run.buffer is not None and run.buffer.batch_size != batch_size:
            raise ValueError(
                f"{STATIC_SHAPE_HINT} This model's replay buffer holds "
                f"batches of {run.buffer.batch_size}. Received: "
                f"batch_size={batch_size}"
            )
        steps_per_epoch = steps_per_epoch or num_samples // batch_size
    if steps_per_epoch is None and isinstance(x, tf.data.Dataset):
        cardinality = int(x.cardinality())
        if cardinality == 0:
            raise ValueError(
                "The training data is empty: backward-SGD has no batch to "
                "buffer. Received: a dataset of 0 batches"
            )
        steps_per_epoch = cardinality if cardinality > 0 else None
    elif steps_per_epoch is None and hasattr(x, "__len__"):
        steps_per_epoch = len(x)  # keras.utils.PyDataset and sequences
    if optimizer.window is None:
        _plan_exact_buffer(run, optimizer, steps_per_epoch, epochs)
    return batch_size


def _plan_exact_buffer(run, optimizer, steps_per_epoch, epochs):
    done = run.steps_done(optimizer)
    steps = None if steps_per_epoch is None else steps_per_epoch * epochs
    run.planned_steps = None if steps is None else done + steps
    capacity = run.capacity(optimizer)
    if capacity is None:
        raise errors.unknown_capacity()
    forward_steps = optimizer.forward_steps
    if steps is not None and done + steps > capacity + forward_steps:
        raise ValueError(
            errors.capacity_message(capacity, capacity + forward_steps + 1, done, forward_steps)
        )


def data_store(run, optimizer, arguments, strategy):
    """The `DataStore` a run's buffered example indices point into, or None.

    A run keeps the store it started with (or loaded); a new exact run on
    in-memory arrays, on one device, starts one if `index_buffering`.

    Args:
        run: The `Run` this `fit()` continues or starts.
        optimizer: The run's `BackwardSGD`.
        arguments: `fit()`'s arguments by name.
        strategy: The model's own `tf.distribute` strategy, or None.

    Raises:
        ValueError: if an index-buffered run gets input other than arrays.
    """
    x, y, sample_weight = (arguments.get(k) for k in ("x", "y", "sample_weight"))
    in_memory = index_feed.in_memory((x, y, sample_weight)) and strategy is None
    if run.buffer is not None or run.saved is not None:
        store = run.data_store  # the run's own, or loaded with the buffer
    elif optimizer.index_buffering and optimizer.window is None and in_memory:
        store = DataStore()
    else:
        store = None
    if store is not None and not in_memory:
        raise ValueError(
            "This run's replay buffer holds example indices into in-memory "
            "arrays (index buffering), so every fit() of the run must get "
            "NumPy arrays, on one device. To mix arrays with other input, "
            "compile with `BackwardSGD(index_buffering=False)`. Received: "
            f"x of type {type(x).__name__}"
            + (f" under {type(strategy).__name__}" if strategy is not None else "")
        )
    return store
