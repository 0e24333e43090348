"""`Run` on JAX and its `RunState`: the core run, with the variables its steps update.

On JAX, Keras carries only the model's and the optimizer's variables through
its jitted step, so the run's ring buffer and counters are `keras.Variable`s
that `BackwardSGD.variables` lists after its saved state (the run is the
optimizer's `run_state`).
"""


import jax
import keras
import numpy as np

from keras_bsgd import errors
from keras_bsgd.backend.jax import run_saving
from keras_bsgd import run as core_run
from keras_bsgd.fingerprint import fingerprint
from keras_bsgd import schedule
from keras_bsgd import structures
from keras_bsgd.saved_run import SavedBuffer

# Counter words of the gradient-evaluation count: JAX has no int64 by default,
# and exact mode's N(N+1)/2 passes 2**31 near N = 65,000.
EVALUATIONS_BASE = 2**30

class Run(core_run.Run):
    """One backward-SGD run on JAX: the core `Run`, with its `RunState`.

    Attributes:
        state: The `RunState`, created at the run's first step; None before.
        pending_start: Whether the next step starts the run over from the
            model's state (its first step, weights set from outside, after a
            divergence).
    """

    def __init__(self, saved=None, data_store=None):
        super().__init__(saved=saved, data_store=data_store)
        self.state = None
        self.pending_start = True

    @property
    def variables(self):
        store = [] if self.data_store is None else self.data_store.variables
        return [*store, *([] if self.state is None else self.state.variables)]

    @property
    def batch_size(self):
        """The batch size of the run's buffer, or None before its first step."""
        return None if self.state is None else self.state.batch_size

    def steps_done(self, optimizer):
        """Steps of the current run, an int (host)."""
        if self.saved is not None:
            origin = self.saved.origin
        elif self.state is None or self.pending_start:
            return 0
        else:
            origin = int(np.asarray(self.state.origin.value))
        return int(np.asarray(optimizer.iterations.value)) - origin

    def start_with_batch_size(self, batch_size, optimizer):
        saved = run_saving.saved_form(self, optimizer)
        if saved is not None:  # else a new run starts anyway, counting from zero
            iterations = int(np.asarray(optimizer.iterations.value))
            self.saved = saved.for_batch_size(batch_size, iterations)
        self.state = None
        self.pending_start = True
        self.left_weights = None

    def ring_capacity(self):
        return None if self.state is None else self.state.slots

    def record_left(self, state):
        if self.state is not None:
            self.state.left.assign(np.array([1, int(fingerprint(state))], "int32"))

    def changed_since_left(self, state):
        if self.state is None or self.pending_start:
            return False
        known, value = (int(v) for v in np.asarray(self.state.left.value))
        return bool(known) and int(fingerprint(state)) != value


class RunState:
    """The ring buffer of a run's batches and the counters its steps update.

    Args:
        batch: The run's first batch `(x, y, sample_weight)` (NumPy or JAX
            arrays): every later batch must have its structure, shapes and
            dtypes.
        slots: The number of batches the ring holds (`schedule.ring_slots`).

    Attributes:
        slots: The ring's batches; every leaf has one more row, a scratch
            slot that a step which buffers nothing writes to, so that a write
            never reads the buffer first (which would make XLA copy it).
        origin: The outer step (`optimizer.iterations`) before the run's
            first step.
        replayed_step: The outer step whose output iterate the model holds.
        left: `[known, fingerprint]` of the weights and model state the
            run's last step or replay left in the model (known 0 before one
            has, and after a load).
    """

    def __init__(self, batch, slots):
        self.slots = int(slots)
        self.structure = batch
        leaves = self.leaves(batch)
        self.spec = [(tuple(leaf.shape), _dtype(leaf)) for leaf in leaves]
        self.batches = [
            _variable(
                np.zeros((self.slots + 1, *shape), dtype), f"replay_batch_{i}",
                layout=_batch_sharded(shape),
            )
            for i, (shape, dtype) in enumerate(self.spec)
        ]
        self.learning_rates = _variable(np.zeros((self.slots + 1,), "float32"), "replay_lr")
        self.origin = _variable(np.int32(0), "replay_origin")
        self.replayed_step = _variable(np.int32(0), "replay_replayed_step")
        # [code (errors.INCIDENT_CODES), step]; code 0: none.
        self.incident = _variable(np.zeros((2,), "int32"), "replay_incident")
        self.evaluations = _variable(np.zeros((2,), "int32"), "replay_evaluations")
        self.skipped = _variable(np.int32(0), "replay_skipped_batches")
        self.left = _variable(np.zeros((2,), "int32"), "replay_left")

    @property
    def variables(self):
        return [
            *self.batches, self.learning_rates, self.origin, self.replayed_step,
            self.incident, self.evaluations, self.skipped, self.left,
        ]

    @property
    def batch_size(self):
        return self.spec[0][0][0]

    def with_unit_weights(self, batch):
        """A ring for batches like `batch`, which bring this run's first sample weights.

        It holds this ring's batches and counters, each batch with sample
        weights of ones (docs/semantics.md, "Sample weights within a run").
        The variables must hold the ring's values (synced from the step's
        state).
        """
        weights = [
            (tuple(w.shape[1:]), _dtype(w)) for w in keras.tree.flatten(batch[2])
        ]
        # A ring of this ring's size: the layout needs no step to move by.
        saved = self.saved(self.slots, 0, 0).with_unit_weights(weights)
        state = RunState(batch, self.slots)
        state.restore(saved, self.slots, 0, 0)
        state.left.assign(self.left.value)
        return state

    def check(self, batch):
        """Raises a `ValueError` (before any state changes) if `batch` does not fit the buffer."""
        leaves = self.leaves(batch)
        spec = [(tuple(leaf.shape), _dtype(leaf)) for leaf in leaves]
        if spec == self.spec:
            return
        raise ValueError(
            f"{errors.STATIC_SHAPE_HINT} This run's batches are {_describe(self.spec)}; "
            "training stopped before this step, with the state of the step before. "
            f"Received: {_describe(spec)}"
        )

    @staticmethod
    def leaves(batch):
        """The arrays of `batch` (`(x, y, sample_weight)`), in order, without its `None`s."""
        return [leaf for leaf in keras.tree.flatten(batch) if leaf is not None]

    def batch(self, leaves):
        """The batch whose arrays (`leaves`) are given, with the first batch's structure."""
        leaves = iter(leaves)
        flat = [None if leaf is None else next(leaves) for leaf in keras.tree.flatten(self.structure)]
        return keras.tree.pack_sequence_as(self.structure, flat)

    def slot(self, index, forward_steps):
        """The slot of the batch that arrived at step `index` of the run."""
        return schedule.slot(index, forward_steps, self.slots)

    def gradient_evaluations(self):
        """The run's gradient evaluations so far, an int (host)."""
        low, high = (int(v) for v in np.asarray(self.evaluations.value))
        return high * EVALUATIONS_BASE + low

    def saved(self, capacity, step, forward_steps):
        """The ring and counters as a `SavedBuffer` of `capacity` slots (the file's layout).

        Args:
            capacity: The slots of the saved ring (`window_capacity` in
                windowed mode, one fewer than this ring's).
            step: The run's last step (`iterations - origin`).
            forward_steps: The optimizer's `forward_steps`.
        """
        leaves = iter(np.asarray(v.value)[: self.slots] for v in self.batches)
        flat = [None if a is None else next(leaves) for a in keras.tree.flatten(self.structure)]
        ring = SavedBuffer(
            self.slots, flat, np.asarray(self.learning_rates.value)[: self.slots]
        )
        flat, rates = ring.relayout(capacity, step, forward_steps)
        return SavedBuffer(
            capacity, flat, rates,
            skipped_batches=int(np.asarray(self.skipped.value)),
            replayed_step=int(np.asarray(self.replayed_step.value)),
            gradient_evaluations=self.gradient_evaluations(),
            origin=int(np.asarray(self.origin.value)),
        )

    def check_saved(self, saved, capacity):
        """Raises `ValueError` unless `saved` fits this ring.

        Args:
            saved: A `SavedBuffer`.
            capacity: The capacity this run saves with (`saved_capacity`).
        """
        expected = [
            None if a is None else ((capacity, *tuple(a.shape)), _dtype(a))
            for a in keras.tree.flatten(self.structure)
        ]
        saved.check(capacity, expected)

    def restore(self, saved, capacity, step, forward_steps):
        """Overwrites the ring and counters with `saved` (checked first), laid out for this ring.

        Args:
            saved: A `SavedBuffer`.
            capacity: The capacity this run saves with (`saved_capacity`).
            step: The run's last step (`iterations - saved.origin`).
            forward_steps: The optimizer's `forward_steps`.
        """
        self.check_saved(saved, capacity)
        flat, rates = saved.relayout(self.slots, step, forward_steps)
        leaves = [leaf for leaf in flat if leaf is not None]
        for variable, leaf in zip(self.batches, leaves):
            variable.assign(_with_scratch(leaf, variable.dtype))
        self.learning_rates.assign(_with_scratch(rates, "float32"))
        evaluations = saved.gradient_evaluations
        self.evaluations.assign(
            np.array([evaluations % EVALUATIONS_BASE, evaluations // EVALUATIONS_BASE], "int32")
        )
        self.origin.assign(np.int32(saved.origin))
        self.replayed_step.assign(np.int32(saved.replayed_step))
        self.skipped.assign(np.int32(saved.skipped_batches))
        for words in (self.incident, self.left):
            words.assign(np.zeros((2,), "int32"))

    def reset_counters(self):
        """Zeroes the counters (a file saved before its run's first step was loaded)."""
        for counter in (self.origin, self.replayed_step, self.skipped):
            counter.assign(np.int32(0))
        for words in (self.evaluations, self.incident, self.left):
            words.assign(np.zeros((2,), "int32"))


def with_run_weights(run, batch):
    """`batch` with sample weights of ones where the run buffers weights and it has none.

    A batch without sample weights is a batch whose sample weights are all
    ones (docs/semantics.md, "Sample weights within a run"). Host side,
    before the step; an index-buffered run's weights are its `DataStore`'s.

    Args:
        run: The `Run`.
        batch: `(x, y, sample_weight)`, NumPy or JAX arrays.

    Returns:
        `(batch, relay)`: the batch, and whether it brings the run's first
        sample weights to a live ring, which must then be re-laid
        (`RunState.with_unit_weights`); a loaded ring not yet live gets its
        ones here.
    """
    x, y, weights = batch
    if run.data_store is not None or (run.state is None and run.saved is None):
        return batch, False
    if run.state is not None:
        buffered = run.state.structure[2]
    else:
        leaves = structures.sample_weight_leaves(run.saved.leaves, x, y)
        buffered = None if leaves is None else structures.pack_sample_weights(
            [leaf[0] for leaf in leaves], y
        )
        if leaves is not None and buffered is None:
            return batch, False  # weights these targets cannot take: refused
    if weights is None and buffered is not None:
        size = structures.num_examples((x, y))
        ones = keras.tree.map_structure(
            lambda w: np.ones((size, *w.shape[1:]), _dtype(w)), buffered
        )
        return (x, y, ones), False
    relay = weights is not None and buffered is None
    if relay and run.state is None:
        run.saved = run.saved.with_unit_weights(
            [(tuple(w.shape[1:]), _dtype(w)) for w in keras.tree.flatten(weights)]
        )
        return batch, False
    return batch, relay


def _with_scratch(rows, dtype):
    """`rows` with the scratch slot (zeros) appended, in `dtype`."""
    rows = np.asarray(rows).astype(str(dtype))
    return np.concatenate([rows, np.zeros((1, *rows.shape[1:]), rows.dtype)])


def _variable(value, name, layout=None):
    return keras.Variable(
        value, dtype=str(value.dtype), trainable=False, name=name, layout=layout
    )


def _batch_sharded(batch_shape):
    """The ring's layout under a `keras.distribution`: slots whole, each batch split as the data is.

    Each device then holds its own shard of every buffered batch, not the
    whole ring; None (Keras' default layout) without a distribution, or
    where the batch does not split evenly.
    """
    distribution = keras.distribution.distribution()
    if distribution is None or not batch_shape:
        return None
    mesh = distribution.device_mesh
    axis = distribution.batch_dim_name
    if batch_shape[0] % mesh.shape[mesh.axis_names.index(axis)]:
        return None
    return keras.distribution.TensorLayout([None, axis, *[None] * (len(batch_shape) - 1)], mesh)


def _dtype(leaf):
    # The dtype the jitted step sees (int64 becomes int32 without jax x64),
    # without a device transfer: this runs before every step.
    return str(jax.dtypes.canonicalize_dtype(leaf.dtype))


def _describe(spec):
    return ", ".join(f"{dtype}{list(shape)}" for shape, dtype in spec)
