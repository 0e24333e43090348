"""The compared methods: their names and the optimizer each one trains with.

Every method runs the same `N` steps after the shared warm-up, at the same
learning rate, momentum and weight decay:

* `forward_sgd`: `keras.optimizers.SGD` at a constant learning rate;
* `forward_sgd_decay`: the same with `keras.optimizers.schedules.CosineDecay`
  from the learning rate to 0 over the `N` steps (step `k` uses
  `lr * (1 + cos(pi * (k - 1) / N)) / 2`);
* `forward_sgd_ema`: `SGD(use_ema=True)` (Keras' default `ema_momentum`
  0.99); its evaluated iterate is the moving average, not the raw weights;
* `backward_exact`: `keras_bsgd.BackwardSGD(window=None, max_steps=N,
  replay_every=E)`: exact backward-SGD anchored at the warm-up's end;
* `backward_w{w}`: `keras_bsgd.BackwardSGD(window=w, replay_every=E)`.
"""

import keras

import keras_bsgd

FORWARD = "forward_sgd"
FORWARD_DECAY = "forward_sgd_decay"
FORWARD_EMA = "forward_sgd_ema"
EXACT = "backward_exact"


def window_method(window):
    """The method name of windowed backward-SGD with `window`.

    Example:

    >>> window_method(8)
    'backward_w8'
    """
    return f"backward_w{window}"


def evaluates_average(method):
    """Whether `method`'s evaluated iterate is its optimizer's moving average.

    Example:

    >>> evaluates_average("forward_sgd_ema"), evaluates_average("forward_sgd")
    (True, False)
    """
    return method == FORWARD_EMA


def optimizers(
    learning_rate, steps, replay_every, windows=(), exact=True, baselines=True,
    momentum=0.0, weight_decay=None,
):
    """Optimizer factories of the compared methods, forward SGD first.

    Args:
        learning_rate: The constant learning rate.
        steps: `N`, the steps after the warm-up (the schedule's length and
            exact mode's buffer capacity).
        replay_every: `E`, backward-SGD's replay interval (the evaluation
            interval).
        windows: Windows of windowed backward-SGD. Defaults to `()`.
        exact: Whether to include `backward_exact`. Defaults to `True`.
        baselines: Whether to include `forward_sgd_decay` and
            `forward_sgd_ema`. Defaults to `True`.
        momentum: SGD momentum. Defaults to `0.0`.
        weight_decay: Keras' decoupled weight decay, or `None`.
            Defaults to `None`.

    Returns:
        A dict `{method name: function returning a fresh optimizer}`.

    Example:

    >>> list(optimizers(0.1, steps=10, replay_every=5, windows=(4,)))
    ['forward_sgd', 'forward_sgd_decay', 'forward_sgd_ema', 'backward_exact', 'backward_w4']
    """
    base = {"momentum": momentum, "weight_decay": weight_decay}

    def decay():
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
        return keras.optimizers.SGD(schedule, **base)

    methods = {FORWARD: lambda: keras.optimizers.SGD(learning_rate, **base)}
    if baselines:
        methods[FORWARD_DECAY] = decay
        methods[FORWARD_EMA] = lambda: keras.optimizers.SGD(learning_rate, use_ema=True, **base)
    if exact:
        methods[EXACT] = lambda: keras_bsgd.BackwardSGD(
            learning_rate, max_steps=steps, replay_every=replay_every, **base
        )
    for window in windows:
        methods[window_method(window)] = lambda w=window: keras_bsgd.BackwardSGD(
            learning_rate, window=w, replay_every=replay_every, **base
        )
    return methods
