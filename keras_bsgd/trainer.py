"""`ReplayTrainerBase`: what every backend's replaying trainer shares.

Each backend's `ReplayTrainer` (`keras_bsgd/backend/<name>/trainer.py`) runs
the step its own way; this mixin keeps what does not depend on how: finding
the `BackwardSGD`, refusing a custom `train_step`, the training state's model
part, and the hooks through which a model made by `keras_bsgd.wrap` calls the
wrapped model's own `compute_loss` and metrics.
"""

import contextlib
import hashlib
import inspect
import warnings

import keras
import numpy as np

from keras_bsgd import custom_code
from keras_bsgd import execution
from keras_bsgd import index_feed
from keras_bsgd import random_layers
from keras_bsgd.partial_batches import PartialBatches
from keras_bsgd.optimizer import backward_sgd_of

_COMPILE_SIGNATURE = inspect.signature(keras.Model.compile)


class ReplayTrainerBase:
    """The backend-independent part of `ReplayTrainer` (see the module docstring)."""

    # A wrapped model whose class customizes the loss or metrics (see `wrap`):
    # a function returning it, so that Keras does not track it as a layer.
    _hook_source = staticmethod(lambda: None)
    # The batch size this fit()'s batches must have until the run's buffer
    # fixes it (fit()'s plan, or the first batch), and what fit() skipped.
    _fit_batch_size = None
    _partial_batches = None
    # How the steps run (`keras_bsgd.execution`), set by compile().
    xla_unit = execution.DEFAULTS["xla_unit"]
    index_buffering = execution.DEFAULTS["index_buffering"]

    def compile(self, *args, xla_unit=None, index_buffering=None, **kwargs):
        """Keras' `compile()`, and how keras_bsgd runs the steps.

        Args:
            *args: Keras' `compile()` arguments.
            xla_unit: TensorFlow: what one XLA program covers under
                `jit_compile=True`: `"step"` (the whole step), `"map"`
                (each map's pass) or `"auto"` (`"map"` for models with
                convolutions on CPUs, else `"step"`). Defaults to `"auto"`.
            index_buffering: Whether exact mode on in-memory arrays buffers
                example indices instead of whole batches (the same
                trajectory). Defaults to `True`.
            **kwargs: Keras' `compile()` arguments.
        """
        self._fit_batch_size = None
        arguments = _COMPILE_SIGNATURE.bind(self, *args, **kwargs).arguments
        optimizer = backward_sgd_of(arguments.get("optimizer"))
        if optimizer is not None:
            custom_code.check_no_custom_train_step(type(self))
        settings = execution.resolve(
            {"xla_unit": xla_unit, "index_buffering": index_buffering},
            {} if optimizer is None else optimizer.execution_settings,
        )
        super().compile(*args, **kwargs)
        self.xla_unit = settings["xla_unit"]
        self.index_buffering = settings["index_buffering"]
        source = self._hook_source()
        if source is not None and custom_code.overrides(type(source), "compute_loss"):
            # The wrapped model's compute_loss runs as a method of that model:
            # its `super().compute_loss()` needs the compiled loss there too.
            source.compile(
                optimizer="sgd",
                loss=arguments.get("loss"),
                loss_weights=arguments.get("loss_weights"),
            )
        self._track_model_state()

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            # Only settings that differ from the defaults: Keras' clone_model
            # compiles a plain keras.Sequential clone with this config.
            config.update(execution.changed(xla_unit=self.xla_unit,
                                            index_buffering=self.index_buffering))
        return config

    def compile_from_config(self, config):
        # Keras skips compiling custom `compile()` methods when loading; this
        # one only adds to Keras' compile, so load it the way Keras does.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self._track_model_state()
            self.optimizer.build(self.trainable_variables)

    @contextlib.contextmanager
    def _fitting(self, batch_size):
        """The scope of one `fit()` whose batches hold `batch_size` examples (None: unknown)."""
        self._fit_batch_size = batch_size
        self._partial_batches = PartialBatches()
        nonfinite = self.skipped_batches
        try:
            yield
        except BaseException:
            # Stopped between steps or before one (Ctrl-C, a refused batch, an
            # incident, a callback's error): the weights are the ones the
            # trainer left, and the next fit() continues this run.
            self._record_weights()
            raise
        finally:
            skipped, self._partial_batches = self._partial_batches, None
            skipped.warn(stacklevel=5)
            nonfinite = self.skipped_batches - nonfinite
            if nonfinite > 0:
                warnings.warn(
                    f"keras_bsgd skipped {nonfinite} batch(es) in this fit() whose "
                    "values or loss were not finite (`on_nonfinite='skip'`): the state "
                    "is that of the steps before them, and each one's batch logs show "
                    "a NaN loss, which `TerminateOnNaN` stops at. Pass "
                    "`BackwardSGD(on_nonfinite='raise')` to stop at the first one "
                    "with an error.",
                    stacklevel=5,
                )

    def _full_batches(self, batches, size_of, run_batch_size):
        """The batches of `batches` that are maps of the run; shorter ones are skipped.

        Args:
            batches: The batches of one call of the train function.
            size_of: Returns a batch's size (an int, or None if unknown).
            run_batch_size: The run's batch size, or None before its buffer.

        Raises:
            ValueError: for a batch larger than the run's, before any step.
        """
        skipped = self._partial_batches or PartialBatches()  # train_on_batch
        if self._partial_batches is None and self.data_store is not None:
            raise ValueError(
                "This run's replay buffer holds example indices into the arrays "
                "of its fit() calls (index buffering), so train_on_batch() cannot "
                "add a batch to it; the state is unchanged. To mix fit() and "
                "train_on_batch(), compile with `index_buffering=False`. "
                "Received: a train_on_batch() call in an index-buffered run"
            )
        full = []
        for batch in batches:
            size = size_of(batch)
            if skipped.admits(size, run_batch_size or self._fit_batch_size):
                self._fit_batch_size = self._fit_batch_size or size
                # As fit() feeds arrays: train_on_batch() passes them as given.
                # Lists as tuples, as Keras' data adapters give fit()'s batches.
                full.append(keras.tree.lists_to_tuples(keras.tree.map_structure(_as_fit_feeds, batch)))
        if self._partial_batches is None:
            skipped.warn(stacklevel=5)
        return full

    def _backward_sgd(self):
        """The `BackwardSGD` this model trains with (inside a loss-scale wrapper too), or None."""
        # An uncompiled model has no `optimizer` attribute (loading weights).
        return backward_sgd_of(getattr(self, "optimizer", None))

    def _symbolic_build(self, *args, **kwargs):
        # Keras builds a lazily built model here, then its optimizer from the
        # trainable variables alone: the optimizer gets the model's state
        # once the model has it.
        self._track_model_state()
        super()._symbolic_build(*args, **kwargs)
        self._track_model_state()

    def _track_model_state(self):
        """Hands a built model's non-trainable state to its `BackwardSGD` (see `track_model_state`)."""
        optimizer = self._backward_sgd()
        if optimizer is not None and self.built:
            optimizer.track_model_state(self._model_state())

    def _model_state(self):
        """The non-trainable variables that belong to the training state S."""
        return [v for v in self.non_trainable_variables if not random_layers.is_seed_state(v)]

    def _trained_state(self):
        """The model's variables a step writes: its weights, then its model state."""
        return self.trainable_variables + self._model_state()

    def _weights_digest(self):
        """A digest of the weights and model state, on the host, to tell weights set from outside."""
        digest = hashlib.blake2b(digest_size=16)
        for variable in self.trainable_variables + self._model_state():
            digest.update(np.ascontiguousarray(np.asarray(variable.value)).data)
        return digest.digest()

    def _source_hook(self, name):
        source = self._hook_source()
        if source is not None and custom_code.overrides(type(source), name):
            return getattr(source, name)
        return None

    def _training_loss(self, x, y, y_pred, sample_weight):
        """`compute_loss` in training mode; an override without `training` (Keras < 3.3) as Keras calls it."""
        if "training" not in inspect.signature(self.compute_loss).parameters:
            return self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
        return self.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
        )

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        # Every replayed map and the logging pass call this: a wrapped
        # model's own compute_loss must be what they compute.
        compute = self._source_hook("compute_loss")
        if compute is None:
            compute = super().compute_loss
        elif "training" not in inspect.signature(compute).parameters:
            # Keras calls such overrides without it, too.
            return compute(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
        return compute(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )

    @property
    def metrics(self):
        source = self._hook_source()
        if source is not None and custom_code.overrides(type(source), "metrics"):
            return source.metrics
        return super().metrics

    def reset_metrics(self):
        reset = self._source_hook("reset_metrics") or super().reset_metrics
        reset()

    def get_config(self):
        source = self._hook_source()
        if source is not None:
            # A reloaded wrapper would be a plain keras_bsgd model: it would
            # silently train with the compiled loss instead of the class's own.
            raise ValueError(
                "This model wraps a model of class "
                f"{type(source).__name__}, whose `compute_loss`/`metrics` it "
                "calls; a `.keras` file cannot carry them, so the reloaded "
                "model would train with another loss. Save weights only "
                "(`save_weights`, `tf.train.Checkpoint`, `BackupAndRestore`), "
                "or derive the class from `keras_bsgd.Model` instead of "
                "`keras.Model`, which saves and reloads as that class. "
                f"Received: a wrapped {type(source).__name__}"
            )
        return super().get_config()


def _as_fit_feeds(leaf):
    return index_feed.as_floatx(leaf) if isinstance(leaf, np.ndarray) else leaf
