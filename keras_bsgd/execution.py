"""How a model runs its backward-SGD steps: set at `compile()`, as Keras sets `jit_compile`.

Neither setting changes what a step computes, only how it runs, so they
belong to the model's compilation, not to the algorithm (`BackwardSGD`):

- `xla_unit` (TensorFlow): what one XLA program covers under
  `jit_compile=True`: `"step"`, `"map"` (each map's pass) or `"auto"`.
- `index_buffering`: whether exact mode on in-memory arrays buffers example
  indices instead of whole batches (the same trajectory, bit for bit).
"""

import warnings

XLA_UNITS = ("auto", "step", "map")
DEFAULTS = {"xla_unit": "auto", "index_buffering": True}


def validate(xla_unit, index_buffering):
    """Raises a `ValueError`/`TypeError` naming the value if a setting is not valid."""
    if xla_unit not in XLA_UNITS:
        raise ValueError(
            f"`xla_unit` must be one of {', '.join(map(repr, XLA_UNITS))}: "
            "what one XLA program covers under `jit_compile=True`. "
            f"Received: xla_unit={xla_unit!r}"
        )
    if not isinstance(index_buffering, bool):
        raise TypeError(
            "`index_buffering` must be True or False. Received: "
            f"index_buffering={index_buffering!r}"
        )


def changed(**settings):
    """The settings of `settings` whose values differ from the defaults."""
    return {k: v for k, v in settings.items() if v != DEFAULTS[k]}


def from_optimizer(optimizer_name, **given):
    """The settings passed to `BackwardSGD()` in the old spelling, with a warning.

    Args:
        optimizer_name: The optimizer's name, for the message.
        **given: `xla_unit` and `index_buffering` as passed (None: not passed).

    Returns:
        A dict of the settings that were passed; the model's `compile()`
        uses them where it is not given its own.
    """
    given = {k: v for k, v in given.items() if v is not None}
    validate(**{**DEFAULTS, **given})
    moved = changed(**given)
    if moved:
        spelled = ", ".join(f"{k}={v!r}" for k, v in moved.items())
        warnings.warn(
            f"`BackwardSGD({spelled})`: these execution settings are now "
            f"arguments of the model's compile(): `model.compile(..., {spelled})`. "
            f"The optimizer '{optimizer_name}' passes them on to the compile() "
            "that uses it, for now. Received: " + spelled,
            UserWarning,
            stacklevel=4,
        )
    return given


def resolve(compile_given, optimizer_given):
    """The model's settings: `compile()`'s, else the optimizer's (old spelling), else the defaults.

    Raises:
        ValueError: if `compile()` and the optimizer set one to different values.
    """
    settings = dict(DEFAULTS)
    for name in DEFAULTS:
        ours, theirs = compile_given.get(name), optimizer_given.get(name)
        if ours is not None and theirs is not None and ours != theirs:
            raise ValueError(
                f"`{name}` is set twice, to different values: by compile() and by "
                f"BackwardSGD() (its old place). Set it in compile() only. "
                f"Received: compile({name}={ours!r}), BackwardSGD({name}={theirs!r})"
            )
        value = ours if ours is not None else theirs
        if value is not None:
            settings[name] = value
    validate(**settings)
    return settings
