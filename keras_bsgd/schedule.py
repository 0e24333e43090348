"""The step arithmetic of backward-SGD: which maps a step composes, and where its batches live.

Steps count from the start of the run (1, 2, ...). `W` is `forward_steps`, `w` the window
(None: exact mode) and `E` `replay_every` (docs/design.md §1). Every function takes Python ints
or scalar integer tensors of any backend and uses only `keras.ops`, so a compiled step and a test
compute the same numbers.
"""

from keras import ops


def anchor_step(step, window, forward_steps):
    """How many maps the anchor has composed once step `step` is replayed.

    Exact mode: `min(step, W)` (the anchor is `S_W`); windowed: `max(min(step, W), step - w)`,
    forward SGD `w` steps behind, never inside the forward phase. Step `step` replays the maps of
    batches `anchor_step(step) + 1 ... step`, newest-first.

    Example:

    >>> int(anchor_step(10, window=4, forward_steps=0)), int(anchor_step(10, None, 3))
    (6, 3)
    """
    anchor = ops.minimum(step, forward_steps)
    if window is not None:
        anchor = ops.maximum(anchor, step - window)
    return anchor


def is_forward(step, forward_steps):
    """Whether step `step` is a plain forward-SGD step (`step <= W`)."""
    return ops.less_equal(step, forward_steps)


def replays(step, replay_every, forward_steps):
    """Whether step `step` computes its backward iterate: every forward step and every `E`-th."""
    return ops.logical_or(
        is_forward(step, forward_steps), ops.equal(step % replay_every, 0)
    )


def advance_range(replayed_step, step, window, forward_steps):
    """The maps that move the anchor when step `step` replays: batches `first + 1 ... last`.

    `replayed_step` is the run's last replayed step (0 before the first). The forward phase's maps
    ran on their own step's batch; only later ones come from the buffer, so both ends are at
    least `W`. Exact mode never advances the anchor past `S_W`.

    Returns:
        `(first, last)`.

    Example:

    >>> first, last = advance_range(8, 12, window=4, forward_steps=0)
    >>> int(first), int(last)
    (4, 8)
    """
    first = ops.maximum(anchor_step(replayed_step, window, forward_steps), forward_steps)
    last = ops.maximum(anchor_step(step, window, forward_steps), forward_steps)
    return first, last


def replay_count(step, window, forward_steps):
    """The maps step `step` replays from the anchor: `step - anchor_step(step)`."""
    return step - anchor_step(step, window, forward_steps)


def ring_slots(window, replay_every, capacity=None):
    """The slots of a buffer that writes a step's batch before reading any other.

    Windowed: `w + E`. A replay reads the `w` newest batches, and the anchor may have to catch
    up by `E` maps, read from the buffer after the new batch is written; one more slot than a
    buffer that reads first. Exact: `capacity`, the batches of the backward phase (no slot is
    reused).
    """
    return capacity if window is None else window + replay_every


def slot(index, forward_steps, slots):
    """The ring slot of the batch that arrived at step `index` (`index > W`)."""
    return (index - forward_steps - 1) % slots
