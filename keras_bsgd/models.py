"""The public model classes: `Model`, `FunctionalModel`, `Sequential`, `WrappedModel`, `wrap`."""

import keras

from keras_bsgd import backend
from keras_bsgd import custom_code
from keras_bsgd.keras_private import Functional
from keras_bsgd import optimizer as optimizer_module

# The trainer of the Keras backend in use, chosen once, when keras_bsgd is imported.
ReplayTrainer = backend.trainer_class()


class AllOrNothingLoad:
    """`load_weights` that loads the whole file or, if any part is refused, nothing.

    Keras loads a file object by object and, when one object refuses its
    part (a backward-SGD run saved with another window, an optimizer of
    another layout, a layer of another shape), loads all the others before
    it raises: the model would be left with the file's weights, part of its
    optimizer state and its own run. Here such a load leaves the model as
    it was, bit for bit: weights, optimizer variables, metrics, and the run
    (replay buffer, counters, seeds).
    """

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Loads weights and training state as `keras.Model.load_weights`, all or nothing.

        Raises:
            ValueError: Keras' error, or keras_bsgd's refusal of a file whose
                run does not fit this model (see docs/saving.md), after the
                model is put back as it was before the call.
        """
        optimizer = getattr(self, "optimizer", None)
        backward_sgd = optimizer_module.backward_sgd_of(optimizer)
        self._track_model_state()
        with optimizer_module.all_or_nothing(
            _loadable_variables(self), backward_sgd, self.trainable_variables
        ):
            return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)


def _loadable_variables(model):
    """The variables a load may write: the model's, its metrics' and its optimizer's saved state.

    Not the run's own (a replay buffer, a data store), which a load writes
    only once it has succeeded (`optimizer.when_loaded`).
    """
    optimizer = getattr(model, "optimizer", None)
    backward_sgd = optimizer_module.backward_sgd_of(optimizer)
    run = None if backward_sgd is None else backward_sgd.run_state
    run_variables = {id(v) for v in (run.variables if run is not None else [])}
    variables = list(model.variables) + list(model.metrics_variables)
    if optimizer is not None:
        variables += [v for v in optimizer.variables if id(v) not in run_variables]
    if backward_sgd is not None:
        variables += backward_sgd.state_variables
    unique = {id(v): v for v in variables}
    return list(unique.values())


@keras.saving.register_keras_serializable(package="keras_bsgd")
class Model(AllOrNothingLoad, ReplayTrainer, keras.Model):
    """A `keras.Model` whose `fit` runs backward-SGD when compiled with `BackwardSGD`.

    Use it like `keras.Model`: functional (`Model(inputs, outputs)`, which
    returns a `FunctionalModel`) or subclassed (`class Net(keras_bsgd.Model)`
    with a `call()`, or created with `(inputs, outputs)`). Subclasses may
    override `compute_loss` (every replayed map and the logging pass call
    it) and `test_step`, not `train_step`: backward-SGD defines the step.
    With any other optimizer it trains as plain Keras.

    Example:

    >>> import keras, numpy as np, keras_bsgd
    >>> inputs = keras.Input((4,))
    >>> model = keras_bsgd.Model(inputs, keras.layers.Dense(2)(inputs))
    >>> model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, max_steps=4), loss="mse")
    >>> x, y = np.ones((16, 4), "float32"), np.zeros((16, 2), "float32")
    >>> model.fit(x, y, batch_size=4, verbose=0).history["loss"][0] > 0
    True
    """

    def __new__(cls, *args, **kwargs):
        if functional_arguments(args, kwargs) and not issubclass(cls, Functional):
            functional = functional_class(cls)
            return functional.__new__(functional, *args, **kwargs)
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args, **kwargs):
        if isinstance(self, Functional):
            Functional.__init__(self, *args, **kwargs)
        else:
            keras.Model.__init__(self, *args, **kwargs)


@keras.saving.register_keras_serializable(package="keras_bsgd")
class FunctionalModel(Model, Functional):
    """The functional `keras_bsgd.Model`: what `keras_bsgd.Model(inputs, outputs)` returns."""


FUNCTIONAL_CLASSES = {}


def functional_class(cls):
    """The functional form of `keras_bsgd.Model` or of a subclass of it.

    `class CustomModel(keras_bsgd.Model)` created with `(inputs, outputs)`
    (keras.io, "Customizing what happens in fit()") becomes an instance of
    a subclass of both `CustomModel` and `FunctionalModel`, so that its own
    methods (`__init__`, `compute_loss`, `test_step`, ...) come first. Keras
    does this by rewriting the `__bases__` of the class chain, which would
    make `keras_bsgd.Model` itself functional.
    """
    if cls is Model:
        return FunctionalModel
    if cls not in FUNCTIONAL_CLASSES:
        FUNCTIONAL_CLASSES[cls] = type(
            cls.__name__,
            (cls, FunctionalModel),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
        )
    return FUNCTIONAL_CLASSES[cls]


def functional_arguments(args, kwargs):
    return (
        len(args) == 2
        or (len(args) == 1 and "outputs" in kwargs)
        or ("inputs" in kwargs and "outputs" in kwargs)
    )


@keras.saving.register_keras_serializable(package="keras_bsgd")
class Sequential(AllOrNothingLoad, ReplayTrainer, keras.Sequential):
    """A `keras.Sequential` whose `fit` runs backward-SGD with `BackwardSGD`.

    Keras' `clone_model` always makes a plain `keras.Sequential` of a
    Sequential model (it has no hook for subclasses), and that one refuses
    `BackwardSGD`; clone with `from_config` instead, as Keras documents for
    its subclasses (functional and subclassed `keras_bsgd.Model`s keep their
    class under `clone_model`).

    Example:

    >>> import keras, keras_bsgd
    >>> model = keras_bsgd.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer=keras_bsgd.BackwardSGD(window=8), loss="mse")
    >>> clone = keras_bsgd.Sequential.from_config(model.get_config())  # new weights
    >>> clone.set_weights(model.get_weights())  # if the clone should start from them
    >>> clone.compile_from_config(model.get_compile_config())  # a new BackwardSGD
    >>> type(clone) is keras_bsgd.Sequential, type(clone.optimizer).__name__
    (True, 'BackwardSGD')
    """


@keras.saving.register_keras_serializable(package="keras_bsgd")
class WrappedModel(Model):
    """A `keras_bsgd.Model` that calls an existing model (made by `wrap`).

    Args:
        model: The wrapped Keras model; its weights are shared, not copied.
    """

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.model),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


def wrap(model):
    """Returns a `keras_bsgd.Model` that trains `model`'s own weights by backward-SGD.

    Functional and `Sequential` models are rebuilt as a functional
    `keras_bsgd.Model` over the same layers; subclassed models are called
    through a `WrappedModel`. Either way the weights are shared: training the
    result trains `model`. Overrides of `compute_loss`, `metrics` and
    `reset_metrics` in `model`'s class are called (as methods of `model`);
    overrides of `train_step`, `test_step` and `compute_metrics` are refused.

    Args:
        model: A built `keras.Model`.

    Returns:
        A `keras_bsgd.Model`, or `model` itself if it already is one.

    Raises:
        ValueError: if `model` is unbuilt, or its class overrides
            `train_step`, `test_step` or `compute_metrics`.

    Example:

    >>> import keras, keras_bsgd
    >>> plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model = keras_bsgd.wrap(plain)
    >>> model.trainable_variables[0] is plain.trainable_variables[0]
    True
    """
    if isinstance(model, ReplayTrainer):
        return model
    if not isinstance(model, keras.Model):
        raise TypeError(
            "`keras_bsgd.wrap` expects a keras.Model. "
            f"Received: model of type {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            "`keras_bsgd.wrap` needs a built model, so that the wrapper can "
            "share its weights: call the model on a batch, or build it with "
            f"`model.build(input_shape)`, first. Received: unbuilt model "
            f"'{model.name}'"
        )
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    for name in ("train_step", "test_step", "compute_metrics"):
        if custom_code.overrides(type(model), name):
            raise ValueError(custom_code.custom_step_message(type(model), name))
    if inputs and outputs:
        wrapper = Model(inputs=inputs, outputs=outputs, name=model.name)
    else:
        wrapper = WrappedModel(model, name=model.name)
    if any(custom_code.overrides(type(model), n) for n in ("compute_loss", "metrics", "reset_metrics")):
        # The wrapper computes the loss and keeps the metrics with the
        # model's own methods, run as methods of the model.
        wrapper._hook_source = lambda: model
    return wrapper
