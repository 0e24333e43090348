"""`RunState`: the variables one backward-SGD run keeps between steps on JAX.

On JAX, Keras carries only the model's and the optimizer's variables through
its jitted step, so the run's ring buffer and counters are `keras.Variable`s
that `BackwardSGD.variables` lists after its saved state (`run_state`).
"""

import hashlib

import keras
import numpy as np

from keras_bsgd import schedule

# Counter words of the gradient-evaluation count: JAX has no int64 by default,
# and exact mode's N(N+1)/2 passes 2**31 near N = 65,000.
EVALUATIONS_BASE = 2**30

INCIDENTS = {"capacity": 1, "nonfinite_batch": 2, "diverged": 3}


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
        pending_start: Whether the next step starts the run over from the
            model's weights (host flag; see the trainer).
    """

    def __init__(self, batch, slots):
        self.slots = int(slots)
        self.structure = batch
        leaves = self.leaves(batch)
        self.spec = [(tuple(leaf.shape), _dtype(leaf)) for leaf in leaves]
        self.batches = [
            _variable(np.zeros((self.slots + 1, *shape), dtype), f"replay_batch_{i}")
            for i, (shape, dtype) in enumerate(self.spec)
        ]
        self.learning_rates = _variable(np.zeros((self.slots + 1,), "float32"), "replay_lr")
        self.origin = _variable(np.int32(0), "replay_origin")
        self.replayed_step = _variable(np.int32(0), "replay_replayed_step")
        # [code (INCIDENTS), step]; code 0: none.
        self.incident = _variable(np.zeros((2,), "int32"), "replay_incident")
        self.evaluations = _variable(np.zeros((2,), "int32"), "replay_evaluations")
        self.skipped = _variable(np.int32(0), "replay_skipped_batches")
        self.pending_start = True
        self.left_weights = None

    @property
    def variables(self):
        return [
            *self.batches, self.learning_rates, self.origin, self.replayed_step,
            self.incident, self.evaluations, self.skipped,
        ]

    def check(self, batch):
        """Raises a `ValueError` (before any state changes) if `batch` does not fit the buffer."""
        leaves = self.leaves(batch)
        spec = [(tuple(leaf.shape), _dtype(leaf)) for leaf in leaves]
        if spec != self.spec:
            raise ValueError(
                "Backward-SGD keeps past batches in a fixed-size buffer, and this "
                "batch does not fit it: every batch of a run must have the shapes "
                f"and dtypes of the first, {_describe(self.spec)}. Use a batch "
                "size that divides the number of examples, `drop_remainder=True` "
                "for a dataset, or a generator whose batches all have one size. "
                f"The training state is that of the step before. Received: {_describe(spec)}"
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


def weights_digest(variables):
    """A digest of the values of `variables` (host), to tell weights set from outside."""
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(np.ascontiguousarray(np.asarray(variable.value)).tobytes())
    return digest.hexdigest()


def _variable(value, name):
    return keras.Variable(value, dtype=str(value.dtype), trainable=False, name=name)


def _dtype(leaf):
    # The dtype the jitted step sees (int64 becomes int32 without jax x64).
    return str(keras.ops.convert_to_tensor(leaf[:0]).dtype)


def _describe(spec):
    return ", ".join(f"{dtype}{list(shape)}" for shape, dtype in spec)
