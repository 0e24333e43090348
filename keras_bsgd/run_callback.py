"""`RunCallback`: the host-side part of a backward-SGD `fit()`, first among the callbacks."""

import keras


class RunCallback(keras.callbacks.Callback):
    """The trainer's host-side part of a backward-SGD `fit()` on every backend; runs first.

    With `replay_every > 1` it replays at the last step of every epoch, so
    that the other callbacks, validation and everything after `fit()` see the
    output iterate of the last step (a dataset of unknown length ends its
    epoch by running out, which the train function catches instead). At
    every epoch's end and at `fit()`'s end it records the weights the trainer
    left, before other callbacks can change them (`EarlyStopping` restoring
    its best weights), and at the next epoch's first step a change starts a
    new run from the weights as they are. Within an epoch the steps tell
    such changes themselves; a change after the epoch's last step (a
    callback's at that batch's end) starts a new run before validation,
    whose `SwapEMAWeights` round trip (on TensorFlow, an addition and a
    subtraction: not the same bits) is not a change.

    The model is a backend's `ReplayTrainer`, which provides
    `_start_run_if_weights_were_set`, `_start_run_if_written_since_the_last_step`,
    `_replay_to_current_step` and `_record_weights`.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_ended = False

    def on_train_batch_begin(self, batch, logs=None):
        # After every callback's `on_epoch_begin`: `SwapEMAWeights(
        # swap_on_epoch=True)` puts the live weights back there.
        if batch == 0:
            self.model._start_run_if_weights_were_set()

    def on_train_batch_end(self, batch, logs=None):
        steps = self.params.get("steps")
        if steps is not None and batch + 1 >= steps:
            self.model._replay_to_current_step()

    def on_test_begin(self, logs=None):
        # fit()'s validation, after the epoch's batches.
        self._end_epoch_training()

    def on_epoch_end(self, epoch, logs=None):
        # Also the end of an epoch that a callback stopped early.
        self._end_epoch_training()
        self.model._record_weights()

    def on_train_end(self, logs=None):
        self.model._record_weights()

    def _end_epoch_training(self):
        if not getattr(self, "_epoch_ended", True):
            self._epoch_ended = True
            self.model._start_run_if_written_since_the_last_step()
            self.model._replay_to_current_step()


def with_run_callback(callbacks):
    """`fit()`'s callbacks (a list, a `CallbackList` or None) with a `RunCallback` first."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks.callbacks.insert(0, RunCallback())
        return callbacks
    return [RunCallback(), *(callbacks or [])]
