"""`Incidents`: how the compiled step stops `fit()` with an error.

A compiled step cannot raise an error that leaves the training state as it
was: it would stop between two variable updates. So the step does all or
none of its work, records what went wrong in a variable, and the host reads
it after the step and raises. This module is that whole channel: the
codes, the variable, and the errors the host raises.
"""

import tensorflow as tf

from keras_bsgd import errors

CODES = {"capacity": 1, "nonfinite_batch": 2, "diverged": 3}


class Incidents:
    """The last incident a run's steps reported: its kind and step, for the host to raise.

    Create it in the scope of the strategy the step runs under.

    Example:

    >>> incidents = Incidents()
    >>> _ = incidents.report("diverged", 7, when=tf.constant(True))
    >>> incidents.pop(), incidents.pop()
    (('diverged', 7), None)
    """

    def __init__(self):
        # Created at the first step's trace, which may be an XLA function:
        # lifted out of it, as the buffer's variables are.
        with tf.init_scope():
            # [code, step]; code 0: none.
            self.variable = tf.Variable(
                tf.zeros((2,), "int64"), trainable=False, name="replay_incident"
            )

    def report(self, kind, step, when=True):
        """Records incident `kind` (a `CODES` key) at `step` where `when` (a boolean tensor)."""
        incident = tf.stack([CODES[kind], tf.cast(step, "int64")])
        self.variable.assign(tf.where(when, incident, self.variable))
        return tf.constant(0)

    def pop(self):
        """Returns (on the host) and clears the last incident: `(kind, step)`, or None."""
        code, step = (int(v) for v in self.variable.numpy())
        if not code:
            return None
        self.variable.assign(tf.zeros((2,), "int64"))
        return next(k for k, v in CODES.items() if v == code), step


def error(kind, step, capacity):
    """The error the host raises for incident `kind` at `step` (`capacity`: the buffer's)."""
    if kind == "capacity":
        return ValueError(errors.capacity_message(capacity, step, step - 1, step - 1 - capacity))
    if kind == "nonfinite_batch":
        return ValueError(
            f"The batch of step {step} has a non-finite value or loss (NaN or "
            "Inf). It was not buffered and the training state is unchanged. "
            "Clean the input pipeline, or compile with "
            "`BackwardSGD(on_nonfinite='skip')` to drop such batches. "
            f"Received: a non-finite batch at step {step}"
        )
    return FloatingPointError(
        f"Backward-SGD diverged at step {step}: replaying the buffered batches "
        "from the anchor produced non-finite weights (the composition left "
        "its contractive region). Lower the learning rate or the window, or "
        "add gradient clipping (`clipnorm=...`). The model now holds the "
        "anchor (finite): the state the replay started from. A later fit() "
        "starts a new run from it, without the buffered batches; compile a "
        "new BackwardSGD to change the settings. Received: non-finite weights "
        f"at step {step}"
    )
