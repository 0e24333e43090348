"""Saving and loading a JAX run, in the TensorFlow trainer's file format.

The ring buffer and counters are optimizer variables on JAX (`RunState`),
but `BackwardSGD` saves only its own state by position: the run goes under
`replay_buffer:*` keys of the model's own entry, with the random layers'
seed states (which Keras does not save) and, for index buffering, the
fingerprints of the datasets its indices point into, exactly as the
TensorFlow trainer writes them (`keras_bsgd.saved_run`), so that a file
crosses backends. The ring is saved in the file's layout: `window_capacity`
slots in windowed mode, one fewer than the JAX ring, which writes a batch
before it reads the others (`schedule.ring_slots`). Loading checks
everything before it writes anything, and writes through `when_loaded`.
"""

import numpy as np

from keras_bsgd import saved_run
from keras_bsgd.backend.jax.data_store import DataStore
from keras_bsgd.optimizer import when_loaded


def saved_capacity(optimizer, state):
    """The capacity a run of `optimizer` saves with: `window_capacity`, or the exact ring's slots."""
    return state.slots if optimizer.window is None else optimizer.window_capacity


def save(store, run, optimizer, seed_states):
    """Writes the training state outside Keras' saved variables to a Keras saving `store`.

    Args:
        store: A dict-like Keras saving store.
        run: The optimizer's `Run`, or None.
        optimizer: The model's `BackwardSGD`, or None.
        seed_states: The state variables of the model's random layers.
    """
    saved_run.save_settings(store, optimizer, [np.asarray(v.value) for v in seed_states])
    saved = None if run is None else saved_form(run, optimizer)
    if saved is None:
        return  # no run yet, or one that starts over at its next step
    saved.save(store)
    # Indices are saved, the data they point into is not: the file records
    # which arrays a resumed fit() must get.
    if run.data_store is not None:
        run.data_store.save(store)


def saved_form(run, optimizer):
    """The run as a `SavedBuffer`, or None if there is none to resume."""
    if run.saved is not None:
        return run.saved  # loaded, and no step since
    if run.state is None or run.pending_start:
        return None
    step = _iterations(optimizer) - int(np.asarray(run.state.origin.value))
    return run.state.saved(saved_capacity(optimizer, run.state), step, optimizer.forward_steps)


def _iterations(optimizer):
    return int(np.asarray(optimizer.iterations.value))


def load(store, run, optimizer, seed_states):
    """Reads what `save` (or the TensorFlow trainer) wrote: every check first, then every write.

    A live ring of the same layout is overwritten in place; otherwise the
    saved buffer fills the ring at the run's next step (`resume`).

    Args:
        store: A dict-like Keras saving store.
        run: `optimizer`'s `Run` (None if `optimizer` is None).
        optimizer: The model's `BackwardSGD`, or None (weights only).
        seed_states: The state variables of the model's random layers.

    Raises:
        ValueError: if the format, the seeds, the settings, the buffer or
            the optimizer layout do not fit this model and its optimizer,
            before anything is written.
    """
    seeds, saved = saved_run.check(store, optimizer, len(seed_states))
    if optimizer is None:
        when_loaded(lambda: saved_run.assign_seeds(seed_states, seeds))
        return
    if saved is None:
        write = _write_unstarted(run)
    else:
        entries = saved_run.load_datasets(store)
        data_store = None if entries is None else DataStore.restored(entries)
        write = _write_saved(run, optimizer, saved, data_store)

    def load_all():
        saved_run.assign_seeds(seed_states, seeds)
        run.left_weights = None  # the loaded weights are the saved run's own
        write()

    when_loaded(load_all)


def _write_unstarted(run):
    """The write of a file without a run: the next step starts one from the loaded state."""

    def write():
        if run.state is not None:
            run.state.reset_counters()
        run.saved = None
        run.pending_start = True

    return write


def _write_saved(run, optimizer, saved, data_store):
    """The write of a saved run into `run` (checked against its live ring first)."""
    same_data = DataStore.same_layout(run.data_store, data_store)
    if run.state is not None and same_data:
        capacity = saved_capacity(optimizer, run.state)
        run.state.check_saved(saved, capacity)

        def restore():
            # Keras carries the live ring's variables into the compiled step.
            step = _iterations(optimizer) - saved.origin
            run.state.restore(saved, capacity, step, optimizer.forward_steps)
            run.saved = None
            run.pending_start = False

        return restore

    def start_over():
        # The next step makes the ring from the batch and fills it. A store
        # this fit() has filled with the saved arrays (a BackupAndRestore at
        # the start of a fit()) is the one the step gathers from.
        run.state = None
        run.saved = saved
        run.data_store = run.data_store if same_data else data_store
        run.pending_start = False

    return start_over


def resume(run, optimizer, iterations):
    """Fills a run's new `RunState` from its loaded `saved` buffer, at the run's next step.

    Args:
        run: The `Run`, whose `state` was just made from the step's batch.
        optimizer: Its `BackwardSGD`.
        iterations: The optimizer's step count (an int).

    Raises:
        ValueError: if the saved batches do not fit the step's (the run is
            left waiting, without a ring).
    """
    saved, state = run.saved, run.state
    try:
        state.restore(
            saved, saved_capacity(optimizer, state), iterations - saved.origin,
            optimizer.forward_steps,
        )
    except ValueError:
        run.state = None
        raise
    run.saved = None
