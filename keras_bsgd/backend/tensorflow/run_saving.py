"""Saving and loading the training state that is not a Keras variable.

The replay buffer is part of the training state: without it a resumed run
would replay different batches. Keras does not save `SeedGenerator` states
either, and the seeds of random layers key every replayed draw. Both go
under `SavedBuffer.PREFIX` keys of the model's own entry in `.keras` and
`.weights.h5` files, and into `tf.train.Checkpoint` through `ReplayState`,
with the same code (the format and the checks are the backends' shared
`keras_bsgd.saved_run`). So do the state format, the optimizer's variable count
(a restore refuses another layout instead of mixing two states) and the
settings that define the run's maps. Loading checks all of it before it
writes any of it.
"""

import numpy as np

from keras_bsgd import saved_run
from keras_bsgd.optimizer import when_loaded
from keras_bsgd.backend.tensorflow.data_store import DataStore


def save(store, run, optimizer, seed_states):
    """Writes the training state outside Keras variables to a Keras saving `store`.

    Args:
        store: A dict-like Keras saving store.
        run: The model's current `Run`, or None.
        optimizer: The model's `BackwardSGD`, or None.
        seed_states: The state variables of the model's random layers.
    """
    saved_run.save_settings(store, optimizer, [np.array(v.numpy()) for v in seed_states])
    if run is None:
        return
    saved = run.saved if run.buffer is None else run.buffer.saved()
    if saved is not None:
        saved.save(store)
        # Indices are saved, the data they point into is not: the file
        # records which arrays a resumed fit() must get.
        if run.data_store is not None:
            run.data_store.save(store)


def load(store, run, optimizer, seed_states):
    """Reads what `save` wrote: every check first, then every write.

    The writes go through `keras_bsgd.optimizer.when_loaded`: inside `load_weights`
    they wait until the whole file has loaded, so that a file refused by a
    later object (a layer of another shape, the optimizer's layout) writes
    none of the run. A live buffer of the current run is overwritten in
    place (the compiled train function holds its variables); otherwise the
    saved buffer becomes the buffer at the next training step.

    Args:
        store: A dict-like Keras saving store.
        run: `optimizer`'s `Run` (None if `optimizer` is None).
        optimizer: The model's `BackwardSGD`, or None.
        seed_states: The state variables of the model's random layers.

    Raises:
        ValueError: if the format, the seeds, the settings, the buffer or
            the optimizer layout do not fit this model and its optimizer,
            before anything is written (an unbuilt optimizer checks its
            layout when it builds, or in `load_weights` at once).
    """
    seeds, saved = saved_run.check(store, optimizer, len(seed_states))
    if optimizer is None:
        # No `BackwardSGD`: the model gets weights only.
        when_loaded(lambda: saved_run.assign_seeds(seed_states, seeds))
        return
    if saved is None:
        write = _write_unstarted(run)
    else:
        write = _write_saved(run, optimizer, saved, DataStore.load(store))

    def load_all():
        saved_run.assign_seeds(seed_states, seeds)
        run.left_weights = None  # the loaded weights are the saved run's own
        write()

    when_loaded(load_all)


def _write_unstarted(run):
    """The write of a file saved before the run's first step."""

    def write():
        # A live buffer's slots are rewritten before the run reads them;
        # its counters restart.
        if run.buffer is not None:
            buffer = run.buffer
            for counter in (buffer.skipped_batches, buffer.replayed_step,
                            buffer.gradient_evaluations, buffer.origin):
                counter.assign(0)
        run.saved = None

    return write


def _write_saved(run, optimizer, saved, data_store):
    """The write of a saved buffer into `run` (checked against its live buffer first)."""
    same_data = DataStore.same_layout(run.data_store, data_store)
    if run.buffer is not None and same_data:
        run.buffer.check_saved(saved)

        def restore():
            # The compiled step holds the live buffer's variables.
            run.buffer.restore(saved)
            run.saved = None

        return restore

    def start_over():
        # The next step builds the buffer from the loaded one. A store this
        # fit() has filled with arrays of the saved layout (a
        # `BackupAndRestore` at the start of a fit()) is the one the step
        # gathers from; other indexed data (or none) retraces the step at
        # the next fit(). The optimizer holds `run`: it becomes the new run
        # here, once the load has succeeded, rather than being replaced.
        run.__init__(saved=saved, data_store=run.data_store if same_data else data_store)

    return start_over
