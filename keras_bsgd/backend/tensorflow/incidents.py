"""`Incidents`: how the compiled step stops `fit()` with an error.

A compiled step cannot raise an error that leaves the training state as it
was: it would stop between two variable updates. So the step does all or
none of its work, records what went wrong in a variable, and the host reads
it after the step and raises. This module is the TensorFlow side of that
channel, the variable; the codes and the errors are `keras_bsgd.errors`'.
"""

import tensorflow as tf

from keras_bsgd import errors

CODES = errors.INCIDENT_CODES


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

    def clear(self):
        """Whether no incident waits for the host (a boolean tensor)."""
        return tf.equal(self.variable[0], 0)

    def pop(self):
        """Returns (on the host) and clears the last incident: `(kind, step)`, or None."""
        code, step = (int(v) for v in self.variable.numpy())
        if not code:
            return None
        self.variable.assign(tf.zeros((2,), "int64"))
        return next(k for k, v in CODES.items() if v == code), step
