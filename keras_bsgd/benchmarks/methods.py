"""The compared methods: their names and the optimizer each one trains with.

Every method runs the same `N` steps after the shared warm-up, at the same
learning rate, momentum and weight decay:

* `forward_sgd`: `keras.optimizers.SGD` at a constant learning rate;
* `forward_sgd_decay`: the same with `keras.optimizers.schedules.CosineDecay`
  from the learning rate to 0 over the `N` steps (step `k` uses
  `lr * (1 + cos(pi * (k - 1) / N)) / 2`);
* `forward_sgd_ema`: `SGD(use_ema=True)` (Keras' default `ema_momentum`
  0.99); its evaluated iterate is the moving average, not the raw weights;
* `forward_sgd_polyak`: `SGD` at the constant rate; its evaluated iterate
  is the uniform average of its iterates after every step since the warm
  start (Polyak-Ruppert averaging, SWA);
* `schedule_free_adamw`: `keras.optimizers.ScheduleFreeAdamW` (Defazio et
  al., 2024), Keras' schedule-free optimizer (as
  `keras_bsgd.benchmarks.schedule_free.ScheduleFreeAdamW`, which runs it on
  TensorFlow as it runs on JAX). Its base optimizer is Adam,
  so it has its own learning rate (the runner chooses it on held-out
  data), and its weight decay is scaled to shrink the weights by the same
  factor per step as SGD's (Keras' decay multiplies by the learning
  rate); its evaluated iterate is its average `x`;
* `backward_exact`: `keras_bsgd.BackwardSGD(window=None, max_steps=N,
  replay_every=E)`: exact backward-SGD anchored at the warm-up's end;
* `backward_w{w}`: `keras_bsgd.BackwardSGD(window=w, replay_every=E)`.
"""

import keras

import keras_bsgd
from keras_bsgd.benchmarks.schedule_free import ScheduleFreeAdamW

FORWARD = "forward_sgd"
FORWARD_DECAY = "forward_sgd_decay"
FORWARD_EMA = "forward_sgd_ema"
FORWARD_POLYAK = "forward_sgd_polyak"
SCHEDULE_FREE = "schedule_free_adamw"
EXACT = "backward_exact"

SCHEDULE_FREE_GRID = (3e-3, 1e-2, 3e-2, 1e-1)
"""Learning rates `compare` tries for `schedule_free_adamw`: half-decades
from Keras' default (0.0025) up. On the default task the held-out loss fell
from 1e-4 to 3e-2 and rose at 1e-1; 1e-3 won in none of the runs of
docs/results.md."""

_EVALUATED = {FORWARD_EMA: "ema", FORWARD_POLYAK: "uniform", SCHEDULE_FREE: "schedule_free"}


def window_method(window):
    """The method name of windowed backward-SGD with `window`.

    Example:

    >>> window_method(8)
    'backward_w8'
    """
    return f"backward_w{window}"


def evaluated_average(method):
    """Which average of its iterates `method` is evaluated at, if any.

    Returns:
        One of `keras_bsgd.benchmarks.evaluation.AVERAGES`: `None` (the
        weights), `"ema"`, `"uniform"` or `"schedule_free"`.

    Example:

    >>> evaluated_average("forward_sgd_ema"), evaluated_average("forward_sgd")
    ('ema', None)
    """
    return _EVALUATED.get(method)


def schedule_free(learning_rate, sgd_learning_rate, weight_decay=None):
    """Keras' schedule-free AdamW (`schedule_free.ScheduleFreeAdamW`) with SGD's decay per step.

    Keras' decoupled weight decay shrinks each weight by
    `learning_rate * weight_decay` per step; at an Adam learning rate a
    hundred times SGD's, the same `weight_decay` would barely decay. The
    coefficient is scaled so that the shrink per step is SGD's.

    Args:
        learning_rate: Its own (Adam) learning rate.
        sgd_learning_rate: The SGD methods' learning rate.
        weight_decay: The SGD methods' `weight_decay`, or `None`.

    Returns:
        A fresh `schedule_free.ScheduleFreeAdamW` (Keras' other defaults:
        `beta_1` 0.9, `beta_2` 0.999, no warm-up).

    Example:

    >>> schedule_free(1e-3, 0.1, weight_decay=0.01).weight_decay
    1.0
    """
    decay = weight_decay * sgd_learning_rate / learning_rate if weight_decay else None
    return ScheduleFreeAdamW(learning_rate, weight_decay=decay)


def optimizers(
    learning_rate, steps, replay_every, windows=(), exact=True, baselines=True,
    momentum=0.0, weight_decay=None, schedule_free_learning_rate=None,
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
        baselines: Whether to include `forward_sgd_decay`,
            `forward_sgd_ema`, `forward_sgd_polyak` and (with its learning
            rate) `schedule_free_adamw`. Defaults to `True`.
        momentum: SGD momentum. Defaults to `0.0`.
        weight_decay: Keras' decoupled weight decay, or `None`.
            Defaults to `None`.
        schedule_free_learning_rate: `schedule_free_adamw`'s learning
            rate, or `None` to leave it out. Defaults to `None`.

    Returns:
        A dict `{method name: function returning a fresh optimizer}`.

    Example:

    >>> names = list(optimizers(0.1, steps=10, replay_every=5, windows=(4,)))
    >>> names[:3]
    ['forward_sgd', 'forward_sgd_decay', 'forward_sgd_ema']
    >>> names[3:]
    ['forward_sgd_polyak', 'backward_exact', 'backward_w4']
    """
    base = {"momentum": momentum, "weight_decay": weight_decay}

    def decay():
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
        return keras.optimizers.SGD(schedule, **base)

    methods = {FORWARD: lambda: keras.optimizers.SGD(learning_rate, **base)}
    if baselines:
        methods[FORWARD_DECAY] = decay
        methods[FORWARD_EMA] = lambda: keras.optimizers.SGD(learning_rate, use_ema=True, **base)
        methods[FORWARD_POLYAK] = lambda: keras.optimizers.SGD(learning_rate, **base)
        if schedule_free_learning_rate is not None:
            methods[SCHEDULE_FREE] = lambda: schedule_free(
                schedule_free_learning_rate, learning_rate, weight_decay
            )
    if exact:
        methods[EXACT] = lambda: keras_bsgd.BackwardSGD(
            learning_rate, max_steps=steps, replay_every=replay_every, **base
        )
    for window in windows:
        methods[window_method(window)] = lambda w=window: keras_bsgd.BackwardSGD(
            learning_rate, window=w, replay_every=replay_every, **base
        )
    return methods
