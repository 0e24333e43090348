"""`Run`: one backward-SGD training run of a model, and everything it keeps between steps."""

import weakref

import tensorflow as tf


class Run:
    """The state of one training run that is not a Keras variable of the model or optimizer.

    A run belongs to the optimizer it trains with, held weakly: compiling
    with a new optimizer starts a new run (Python ids of collected
    optimizers are reused, so identity is checked on a weak reference), as
    Keras starts new momentum. A model without a `BackwardSGD` has no run:
    weights loaded into it are weights only.

    Attributes:
        buffer: The `ReplayBuffer`, created at the run's first step; None
            before it.
        incidents: The `Incidents` its steps report to the host, created
            with the buffer.
        saved: A `SavedBuffer` loaded from a file, which becomes the buffer
            at the first step; None otherwise.
        data_store: The `DataStore` the buffered example indices point into
            (index buffering), or None.
        planned_steps: The steps of the run that `fit()` plans for, which
            size exact mode's buffer when nothing else does; None if unknown.
        left_weights: A digest of the weights the trainer last left in the
            model (at an epoch's or `fit()`'s end), to tell weights set from
            outside; None when there is nothing to compare.

    Example:

    >>> import keras_bsgd
    >>> from keras_bsgd.backend.tensorflow.run import Run
    >>> optimizer = keras_bsgd.BackwardSGD(window=4, replay_every=2)
    >>> run = Run(optimizer)
    >>> run.serves(optimizer), run.serves(keras_bsgd.BackwardSGD())
    (True, False)
    >>> run.capacity(optimizer)  # window + replay_every - 1
    5
    """

    def __init__(self, optimizer, saved=None, data_store=None):
        self._optimizer = weakref.ref(optimizer)
        self.buffer = None
        self.incidents = None
        self.saved = saved
        self.data_store = data_store
        self.planned_steps = None
        self.left_weights = None

    @property
    def batch_size(self):
        """The global batch size of the run's buffer, or None before its first step."""
        return None if self.buffer is None else self.buffer.global_batch_size

    def serves(self, optimizer):
        """Whether this run belongs to `optimizer`."""
        return optimizer is not None and self._optimizer() is optimizer

    def capacity(self, optimizer):
        """The batches the buffer holds, or None where nothing determines it yet.

        Windowed mode: `optimizer.window_capacity`. Exact mode, in this order:
        the live buffer's, `max_steps - forward_steps`, the loaded buffer's,
        then the planned steps after the forward phase (at least one slot,
        which holds the batch spec of a run that ends in the forward phase).
        A loaded buffer of another capacity is refused when the buffer is
        built from it.

        Args:
            optimizer: The run's `BackwardSGD`.
        """
        if optimizer.window is not None:
            return optimizer.window_capacity
        if self.buffer is not None:
            return self.buffer.capacity
        if optimizer.max_steps is not None:
            return optimizer.max_steps - optimizer.forward_steps
        if self.saved is not None:
            return self.saved.capacity
        if self.planned_steps is not None:
            return max(self.planned_steps - optimizer.forward_steps, 1)
        return None

    def start_over(self, iterations):
        """Starts a new run inside this one: its step 1 is outer step `iterations + 1`.

        The buffer and anchor are then rewritten before they are read.

        Args:
            iterations: The optimizer's step count (an int or scalar tensor).
        """
        iterations = tf.cast(iterations, "int64")
        self.buffer.origin.assign(iterations)
        self.buffer.replayed_step.assign(iterations)
        self.left_weights = None

    def steps_done(self, optimizer):
        """Steps of the current run (weights set from outside start a new one), an int."""
        if self.buffer is not None:
            origin = int(self.buffer.origin.numpy())
        else:
            origin = 0 if self.saved is None else self.saved.origin
        return int(optimizer.iterations.numpy()) - origin
