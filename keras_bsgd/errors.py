"""The run's errors: refused settings, capacities and files, and the saved run's format."""

import numpy as np

# The keys a saved run (buffer, counters, settings) leaves in a Keras saving
# store, beside the model's own.
SAVED_RUN_PREFIX = "replay_buffer:"


STATIC_SHAPE_HINT = (
    "Backward-SGD keeps past batches in fixed-size buffers, so the batches "
    "of a run must all have one structure, shape and dtype (a shorter last "
    "batch is skipped; sample weights may come and go, a batch without "
    "them counting as weights of ones)."
)


def check_capacity(saved, optimizer):
    """Raises `ValueError` unless `optimizer` can resume from `saved`."""
    if optimizer.window is not None and saved.capacity != optimizer.window_capacity:
        window = saved.capacity - optimizer.replay_every + 1
        raise ValueError(
            f"The file holds a replay buffer of {saved.capacity} batches, "
            f"saved with window={window}, but this model's optimizer "
            f"has window={optimizer.window}. Load it into a model compiled "
            f"with the same window. Received: window={optimizer.window}"
        )
    if (
        optimizer.window is None
        and optimizer.max_steps is not None
        and saved.capacity != optimizer.max_steps - optimizer.forward_steps
    ):
        max_steps = saved.capacity + optimizer.forward_steps
        raise ValueError(
            f"The file holds the replay buffer of an exact run of "
            f"{max_steps} steps (max_steps={max_steps}), but this "
            f"model's optimizer has max_steps={optimizer.max_steps}. Load it "
            "into a model compiled with the same max_steps. Received: "
            f"max_steps={optimizer.max_steps}"
        )


# The layout of the saved training state. 1: keras_bsgd 0.1.0, where
# BackwardSGD subclassed Keras SGD; 2: it holds a map optimizer (a Keras
# SGD), whose counter and momentum slots follow the optimizer's own
# variables (and move under `map_optimizer` in a `tf.train.Checkpoint`).
FORMAT_VERSION = 2
_FORMAT_KEY = SAVED_RUN_PREFIX + "format_version"
# Keys only a BackwardSGD's state leaves in a file.
_OPTIMIZER_KEYS = tuple(
    SAVED_RUN_PREFIX + k for k in ("optimizer_variables", "replay_every", "capacity")
)


def save_format(store):
    """Records `FORMAT_VERSION` in a Keras saving `store`."""
    store[_FORMAT_KEY] = np.array(FORMAT_VERSION, "int64")


def check_format(store):
    """Raises `ValueError` if `store` holds backward-SGD state of another format.

    The optimizer's variables of format 1 would load by position into other
    variables of format 2 (a momentum slot into an anchor), resuming from a
    mix of two states, so such a file is refused rather than converted.
    """
    keys = set(store.keys())
    saved = int(np.asarray(store[_FORMAT_KEY])) if _FORMAT_KEY in keys else 1
    if saved == FORMAT_VERSION or not keys.intersection(_OPTIMIZER_KEYS):
        return
    raise ValueError(
        f"The file holds backward-SGD training state of format {saved}, and "
        f"this keras_bsgd reads format {FORMAT_VERSION}: the optimizer's "
        "variables are laid out differently (format 2 composes BackwardSGD "
        "over a Keras SGD), and loading them would resume from a mix "
        "of two states. Resume the run with the keras_bsgd that wrote it "
        "(format 1: keras-bsgd 0.1.0); to start a new run from its weights, "
        "load them without an optimizer (`keras.models.load_model(path, "
        "compile=False)`, or `load_weights` into an uncompiled model) and "
        f"compile a new BackwardSGD. Received: a file of format {saved}"
    )


# Settings that define the maps a saved run composes.
RUN_SETTINGS = ("replay_every", "forward_steps")


def check_run_settings(store, optimizer):
    """Raises `ValueError` unless a saved run's settings are `optimizer`'s."""
    for name in RUN_SETTINGS:
        saved = int(np.asarray(store[SAVED_RUN_PREFIX + name]))
        if saved != getattr(optimizer, name):
            raise ValueError(
                f"The file holds a run trained with {name}={saved}, and this "
                f"model's optimizer has {name}={getattr(optimizer, name)}: "
                "resuming would compose other maps than the saved run. Compile "
                f"with `BackwardSGD({name}={saved})` to resume it. Received: "
                f"{name}={getattr(optimizer, name)}"
            )


def unknown_capacity():
    """The error for an exact run whose buffer capacity nothing determines."""
    return ValueError(
        "Exact backward-SGD (window=None) keeps every batch, so it needs the "
        "number of steps in advance, and nothing gives it here (the data's "
        "length is unknown, or the step runs outside `fit()`). Pass "
        "`BackwardSGD(max_steps=...)`, `fit(steps_per_epoch=...)`, or use "
        "`window=w`. Received: max_steps=None"
    )


def capacity_message(capacity, step, done, forward_steps=0):
    after = f" after {forward_steps} forward steps" if forward_steps else ""
    return (
        f"Exact backward-SGD's buffer holds {capacity} batches{after}, and step "
        f"{step} would need one more. Training stopped with the state of step "
        f"{done}, unchanged. Either compile with a larger "
        "`BackwardSGD(max_steps=...)`, or use windowed backward-SGD with "
        f"`window=w`. Received: step {step} with capacity={capacity}"
    )


# What a compiled step reports to the host (it cannot raise and keep the
# state): a code per kind, the same on every backend. All but
# "skipped_batch" (a non-finite batch dropped, `on_nonfinite="skip"`, which
# the host shows in the batch's logs) raise.
INCIDENT_CODES = {
    "capacity": 1, "nonfinite_batch": 2, "diverged": 3, "learning_rate": 4, "skipped_batch": 5,
}


def with_skipped_loss(logs):
    """A batch's `logs` with the loss of the non-finite batch the step skipped (NaN).

    Keras would log that batch's non-finite loss, and callbacks such as
    `TerminateOnNaN` watch for it; the state and the loss metric leave the
    batch out.
    """
    if not isinstance(logs, dict) or "loss" not in logs:
        return logs
    return {**logs, "loss": float("nan")}


def incident(kind, step, capacity):
    """The error the host raises for incident `kind` at `step` (`capacity`: the buffer's)."""
    if kind == "capacity":
        return ValueError(capacity_message(capacity, step, step - 1, step - 1 - capacity))
    if kind == "learning_rate":
        return ValueError(
            f"The learning rate for the batch of step {step} is negative or not "
            "finite (from the schedule, a callable or a callback): a map's rate is "
            "frozen with its batch and replayed at every later step, so the batch "
            "was refused and the training state is that of the step before. Fix the "
            "schedule (or what set the rate) and fit() again to continue the run. "
            f"Received: an invalid learning rate at step {step}"
        )
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
