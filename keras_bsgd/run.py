"""`Run`: one backward-SGD training run, held by the optimizer it trains with."""


class Run:
    """What the host keeps of one backward-SGD run; each backend adds its ring buffer.

    A run is held by its optimizer (`BackwardSGD.run_state`) on every
    backend, so that compiling with a new optimizer starts a new run, as
    Keras starts new momentum, and nothing of the run refers to the model.
    The backend's subclass holds the ring of buffered batches and the
    counters its steps update (TensorFlow's `ReplayBuffer`, JAX's
    `RunState`), created at the run's first step.

    Attributes:
        saved: A `SavedBuffer` loaded from a file, which fills the ring at
            the run's next step; None otherwise.
        data_store: The `DataStore` the buffered example indices point into
            (index buffering), or None.
        planned_steps: The steps of the run that `fit()` plans for, which
            size exact mode's buffer when nothing else does; None if unknown.
        left_weights: A digest of the weights the trainer last left in the
            model (at an epoch's or `fit()`'s end), to tell weights set from
            outside; None when there is nothing to compare.

    Example:

    >>> import keras_bsgd
    >>> optimizer = keras_bsgd.BackwardSGD(window=4, replay_every=2)
    >>> Run().capacity(optimizer)  # window + replay_every - 1
    5
    >>> run = Run()
    >>> run.planned_steps = 12
    >>> run.capacity(keras_bsgd.BackwardSGD(forward_steps=2))
    10
    """

    def __init__(self, saved=None, data_store=None):
        self.saved = saved
        self.data_store = data_store
        self.planned_steps = None
        self.left_weights = None

    @property
    def variables(self):
        """The run's variables that Keras must carry through a stateless step (none by default)."""
        return []

    def ring_capacity(self):
        """The batches the live ring holds, or None before the run's first step."""
        return None

    def record_left(self, state):
        """Records `state` (the model's weights, then its model state) as what the run left in the model.

        Every step and replay records what it leaves, so that the next step
        starts a new run if something else wrote the model in between (a
        callback); Keras' EMA, which `fit()` puts in the model at its end,
        is recorded here. Nothing to record before the run's first step.
        """

    def changed_since_left(self, state):
        """Whether `state` differs from what `record_left` (or the last step) recorded (host).

        False before the run's first step and after a load.
        """
        return False

    def start_with_batch_size(self, batch_size, optimizer):
        """Starts a new run at the next step, whose batches hold `batch_size` examples.

        The ring is laid out again, empty, for the new batches; the next
        step is step 1 of a run whose `S_0` is the model's state, while
        `optimizer.iterations` and schedules go on counting. Each backend
        drops its live ring here.

        Args:
            batch_size: The global batch size of the new run.
            optimizer: The run's `BackwardSGD`.
        """
        raise NotImplementedError

    def capacity(self, optimizer):
        """The batches of the backward phase the buffer holds, or None where nothing determines it yet.

        Windowed mode: `optimizer.window_capacity`. Exact mode, in this order:
        the live ring's, `max_steps - forward_steps`, the loaded buffer's,
        then the planned steps after the forward phase (at least one slot,
        which holds the batch spec of a run that ends in the forward phase).
        A loaded buffer of another capacity is refused when the ring is
        made from it.

        Args:
            optimizer: The run's `BackwardSGD`.
        """
        if optimizer.window is not None:
            return optimizer.window_capacity
        if self.ring_capacity() is not None:
            return self.ring_capacity()
        if optimizer.max_steps is not None:
            return optimizer.max_steps - optimizer.forward_steps
        if self.saved is not None:
            return self.saved.capacity
        if self.planned_steps is not None:
            return max(self.planned_steps - optimizer.forward_steps, 1)
        return None
