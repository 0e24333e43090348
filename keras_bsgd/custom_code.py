"""Custom training code in user models: what backward-SGD honours and what it refuses."""

import keras


def overrides(cls, name):
    """Whether `cls` defines its own `name` (a training hook) over Keras' default."""
    # The trainer imports this module: its class is looked up when called.
    from keras_bsgd import backend

    ours = getattr(backend.trainer_class(), name, None)
    mine = getattr(cls, name, None)
    return mine is not getattr(keras.Model, name) and mine is not ours


def check_no_custom_train_step(cls):
    """Refuses a `train_step` override of a keras_bsgd model that replaces the step.

    One that calls `super().train_step(data)` (to count traces, say) runs
    the backward-SGD step and is kept. One that does not, and calls the
    optimizer anyway, would also fail at its first step (`BackwardSGD.apply`
    raises); this says why before anything runs.
    """
    method = getattr(cls, "train_step")
    code = getattr(method, "__code__", None)
    if overrides(cls, "train_step") and (code is None or "train_step" not in code.co_names):
        raise ValueError(custom_step_message(cls, "train_step"))


def custom_step_message(cls, name):
    if name == "train_step":
        why = (
            "keras_bsgd defines the training step itself: every step replays "
            "the buffered batches through the model's loss, so a custom "
            "`train_step` cannot run (it would update the weights once per "
            "batch, which is forward SGD)."
        )
    else:
        why = (
            f"`keras_bsgd.wrap` calls the model's layers from a new model, "
            f"where the wrapped class's `{name}` would not see its own "
            "metrics and compiled loss."
        )
    return (
        f"{why} Put the custom loss in `compute_loss(x, y, y_pred, "
        "sample_weight, training)`, which the logging pass and every "
        "replayed map call; or derive the class from `keras_bsgd.Model` "
        "instead of `keras.Model` (created with `(inputs, outputs)` or with "
        "a `call()`), where `compute_loss` and `test_step` overrides run as "
        "written; or train with a Keras optimizer. Received: a model of "
        f"class {cls.__name__} that overrides `{name}`"
    )
