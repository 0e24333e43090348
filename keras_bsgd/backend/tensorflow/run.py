"""`Run` on TensorFlow: the core run, with the ring buffer its compiled step updates in place."""

import tensorflow as tf

from keras_bsgd import run as core_run


class Run(core_run.Run):
    """One backward-SGD run on TensorFlow: the core `Run`, with its ring buffer and incidents.

    The compiled step reads and writes the ring's variables in place, so
    Keras need not carry them (`variables` is empty).

    Attributes:
        buffer: The `ReplayBuffer`, created at the run's first step; None
            before it.
        incidents: The `Incidents` its steps report to the host, created
            with the buffer.

    Example:

    >>> import keras_bsgd
    >>> from keras_bsgd.backend.tensorflow.run import Run
    >>> run = Run()
    >>> run.buffer is None, run.capacity(keras_bsgd.BackwardSGD(max_steps=8))
    (True, 8)
    """

    def __init__(self, saved=None, data_store=None):
        super().__init__(saved=saved, data_store=data_store)
        self.buffer = None
        self.incidents = None

    @property
    def batch_size(self):
        """The global batch size of the run's buffer, or None before its first step."""
        return None if self.buffer is None else self.buffer.global_batch_size

    def ring_capacity(self):
        return None if self.buffer is None else self.buffer.capacity

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

    def start_with_batch_size(self, batch_size, optimizer):
        # Only a run with a live buffer has a batch size to change.
        saved = self.buffer.saved()
        self.saved = saved.for_batch_size(batch_size, int(optimizer.iterations.numpy()))
        self.buffer = None
        self.incidents = None
        self.left_weights = None

    def record_left(self, state):
        if self.buffer is not None:
            self.buffer.record_left(state)

    def changed_since_left(self, state):
        return self.buffer is not None and bool(self.buffer.changed_since_left(state))

    def steps_done(self, optimizer):
        """Steps of the current run (weights set from outside start a new one), an int."""
        if self.buffer is not None:
            origin = int(self.buffer.origin.numpy())
        else:
            origin = 0 if self.saved is None else self.saved.origin
        return int(optimizer.iterations.numpy()) - origin
