"""What a backward-SGD `fit()` decides on TensorFlow before its first step: index buffering.

An index-buffered run needs in-memory arrays in every `fit()`; checked on the
host, before any step, so a refused `fit()` leaves the training state as it
was. The checks every backend makes are `keras_bsgd.fit_plan`'s.
"""

from keras_bsgd import index_feed
from keras_bsgd.backend.tensorflow.data_store import DataStore


def data_store(run, optimizer, arguments, strategy, index_buffering):
    """The `DataStore` a run's buffered example indices point into, or None.

    A run keeps the store it started with (or loaded); a new exact run on
    in-memory arrays, on one device, starts one if `index_buffering`.

    Args:
        run: The `Run` this `fit()` continues or starts.
        optimizer: The run's `BackwardSGD`.
        arguments: `fit()`'s arguments by name.
        strategy: The model's own `tf.distribute` strategy, or None.
        index_buffering: The model's `compile(index_buffering=...)`.

    Raises:
        ValueError: if an index-buffered run gets input other than arrays.
    """
    x, y, sample_weight = (arguments.get(k) for k in ("x", "y", "sample_weight"))
    in_memory = index_feed.in_memory((x, y, sample_weight)) and strategy is None
    if run.buffer is not None or run.saved is not None:
        store = run.data_store  # the run's own, or loaded with the buffer
    elif index_buffering and optimizer.window is None and in_memory:
        store = DataStore()
    else:
        store = None
    if store is not None and not in_memory:
        raise ValueError(
            "This run's replay buffer holds example indices into in-memory "
            "arrays (index buffering), so every fit() of the run must get "
            "NumPy arrays, on one device. To mix arrays with other input, "
            "compile with `index_buffering=False`. Received: "
            f"x of type {type(x).__name__}"
            + (f" under {type(strategy).__name__}" if strategy is not None else "")
        )
    return store
