"""`StepRecorder`: the callback that records every step and evaluates every `E` steps."""

import hashlib
import time

import keras
import numpy as np


def weights_sha256(weights):
    """A SHA-256 fingerprint of a list of arrays (dtype, shape and every byte).

    Args:
        weights: A list of NumPy arrays, as `model.get_weights()`.

    Returns:
        A hex string; equal fingerprints mean bitwise-equal weights.

    Example:

    >>> import numpy as np
    >>> weights_sha256([np.zeros(2)]) == weights_sha256([np.zeros(2)])
    True
    >>> weights_sha256([np.zeros(2)]) == weights_sha256([np.zeros(2, "float32")])
    False
    """
    digest = hashlib.sha256()
    for array in weights:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class StepRecorder(keras.callbacks.Callback):
    """Records one row per training step and evaluates at the evaluation steps.

    One row per step `k`:

    * `train_loss`: the loss of batch `B_k` that Keras logs (at the model's
      weights before step `k`), recovered from Keras' running epoch mean;
    * `learning_rate`: the learning rate step `k` uses (the optimizer's
      schedule at its `iterations` before the step);
    * `grad_evals`: the cumulative count of a `GradientCounter`;
    * `wall_time_s`: cumulative training time (evaluation excluded).

    After every step `observe()` is called, and after steps that are
    multiples of `eval_every` and after step `steps`, `evaluate(k)`; both
    outside the timed region. Before the first step
    the recorder fingerprints every model weight (`start_sha256`): what the
    first step starts from.

    Args:
        counter: The model's `GradientCounter`.
        steps: The run's number of steps `N`.
        eval_every: Steps between evaluations `E`.
        evaluate: Function of the step `k`, called at evaluation steps.
        on_step: Optional function called with no arguments after each step
            (a progress bar). Defaults to `None`.
        observe: Optional function called with no arguments after each
            step, before any evaluation (a host-side average of the
            iterates). Defaults to `None`.
    """

    def __init__(self, counter, steps, eval_every, evaluate, on_step=None, observe=None):
        super().__init__()
        self.counter = counter
        self.steps, self.eval_every = steps, eval_every
        self.evaluate, self.on_step, self.observe = evaluate, on_step, observe
        self.rows = []
        self.start_sha256 = None
        self._wall = 0.0

    def on_train_begin(self, logs=None):
        self._running_mean = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        if self.start_sha256 is None:
            self.start_sha256 = weights_sha256(self.model.get_weights())
        self._learning_rate = float(self.model.optimizer.learning_rate)
        self._began = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])  # Waits for the step: the time below includes it.
        count = int(self.counter.count)
        self._wall += time.perf_counter() - self._began
        n = batch + 1
        loss = n * mean - (n - 1) * self._running_mean
        self._running_mean = mean
        step = len(self.rows) + 1
        self.rows.append(
            {
                "step": step,
                "train_loss": loss,
                "learning_rate": self._learning_rate,
                "grad_evals": count,
                "wall_time_s": self._wall,
            }
        )
        # On JAX, `self.model` writes the state fit() holds into the variables,
        # which the average and the evaluation read (a no-op on TensorFlow).
        _ = self.model
        if self.observe is not None:
            self.observe()
        if step % self.eval_every == 0 or step == self.steps:
            self.evaluate(step)
        if self.on_step is not None:
            self.on_step()
