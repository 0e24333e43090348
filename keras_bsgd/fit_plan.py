"""What a backward-SGD `fit()` checks and decides before its first step, on every backend.

A run's batches must all have one size (the buffer's slots are static; a
shorter last batch is skipped, see `partial_batches`; another `batch_size`
of arrays starts a new run), and exact mode's buffer must be sized from the
run's length. All of it is checked on the host, before any step, so a
refused `fit()` leaves the training state as it was.
"""

import math
import warnings

import keras
import numpy as np

from keras_bsgd import errors


def plan(run, optimizer, arguments, processes=1):
    """Checks batch sizes and plans exact mode's buffer for a `fit()`.

    Args:
        run: The backend's `Run` this `fit()` continues or starts: its
            `batch_size` (None before its first step), `steps_done(optimizer)`,
            `capacity(optimizer)` and `planned_steps`, which this sets.
        optimizer: The run's `BackwardSGD`.
        arguments: `fit()`'s arguments by name.
        processes: The processes whose batches make one global batch (JAX's
            multi-process data parallelism: each passes its own arrays).

    Returns:
        The batch size of in-memory array input (this process'), or None for
        other input.

    Raises:
        ValueError: if the data is empty, or exact mode's buffer cannot
            hold the run (or nothing gives its length).
    """
    x = arguments.get("x")
    epochs = arguments.get("epochs", 1) - arguments.get("initial_epoch", 0)
    steps_per_epoch = arguments.get("steps_per_epoch")
    batch_size, array_steps = _array_batches(arguments)
    global_size = None if batch_size is None else batch_size * processes
    new_run = global_size is not None and run.batch_size not in (None, global_size)
    if array_steps is not None:
        steps_per_epoch = steps_per_epoch or array_steps
    if steps_per_epoch is None and hasattr(x, "cardinality"):
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
        _plan_exact_buffer(run, optimizer, steps_per_epoch, epochs, 0 if new_run else None)
    if new_run:
        warnings.warn(
            f"This run's replay buffer holds batches of {run.batch_size} examples and "
            f"this fit() has batches of {global_size}: backward-SGD replays batches of "
            "one size, so a new run starts at the next step from the model's weights "
            "(its replay buffer laid out again; `optimizer.iterations` and the "
            "learning-rate schedule go on).",
            stacklevel=4,
        )
        run.start_with_batch_size(global_size, optimizer)
    return batch_size


def _array_batches(arguments):
    """`(batch size, batches per epoch)` of in-memory array input (checked), else `(None, None)`."""
    num_samples = num_array_samples(arguments.get("x"))
    if num_samples is None:
        return None, None
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
    # Keras' last batch is partial where the batch size does not divide the
    # data (a whole batch where the data is smaller): the step skips it.
    full_size = min(batch_size, max(num_samples, 1))
    return full_size, num_samples // full_size


def _plan_exact_buffer(run, optimizer, steps_per_epoch, epochs, done=None):
    """Plans exact mode's buffer for `fit()`; `done`: the run's steps so far (None: the run's own)."""
    done = run.steps_done(optimizer) if done is None else done
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


def num_array_samples(x):
    """The sample count of array-like `x` (NumPy arrays, tensors, their nests), else None."""
    leaves = [t for t in keras.tree.flatten(x) if t is not None] if x is not None else []
    if leaves and all(isinstance(t, np.ndarray) or keras.ops.is_tensor(t) for t in leaves):
        return int(leaves[0].shape[0])
    return None
