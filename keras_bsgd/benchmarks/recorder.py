"""`StepRecorder`: the callback that records one row per training step."""

import time

import keras
import numpy as np
import psutil
import tensorflow as tf


def _rss_megabytes():
    return psutil.Process().memory_info().rss / 2**20


class StepRecorder(keras.callbacks.Callback):
    """Records, after every training step: loss, iterate distance, gradients, time.

    One row per step `k`:

    * `train_loss`: the loss of batch `B_k` at the weights before step `k`
      (what Keras logs), recovered from Keras' running epoch mean;
    * `iterate_distance`: `||theta_k - theta_{k-1}||`, the Euclidean distance
      between successive iterates over all trainable weights;
    * `grad_evals`: the cumulative count of a `GradientCounter`;
    * `wall_time_s`: cumulative training time (evaluation excluded);
    * `rss_mb`: the process' resident memory.

    The recorder may follow one model through several `fit()` calls (one
    epoch each); rows keep counting across them.

    Args:
        counter: The model's `GradientCounter`.
        on_step: Optional function called with no arguments after each step
            (a progress bar). Defaults to `None`.
    """

    def __init__(self, counter, on_step=None):
        super().__init__()
        self.counter = counter
        self.on_step = on_step
        self.rows = []
        self._previous = None
        self._wall = 0.0

    def _start(self):
        variables = [v.value for v in self.model.trainable_variables]
        self._previous = [tf.Variable(v, trainable=False) for v in variables]

        @tf.function
        def distance():
            total = tf.constant(0.0, "float64")
            for v, p in zip(self.model.trainable_variables, self._previous):
                v = tf.convert_to_tensor(v.value)
                total += tf.reduce_sum(tf.cast(tf.square(v - p), "float64"))
                p.assign(v)
            return tf.sqrt(total)

        self._distance = distance

    def on_train_begin(self, logs=None):
        if self._previous is None:
            self._start()
        self._running_mean = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._began = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        self._wall += time.perf_counter() - self._began
        n = batch + 1
        loss = n * mean - (n - 1) * self._running_mean
        self._running_mean = mean
        self.rows.append(
            {
                "step": len(self.rows) + 1,
                "train_loss": loss,
                "iterate_distance": float(self._distance()),
                "grad_evals": int(np.asarray(self.counter.count.numpy())),
                "wall_time_s": self._wall,
                "rss_mb": _rss_megabytes(),
            }
        )
        if self.on_step is not None:
            self.on_step()
