"""The TensorFlow trainer: the `ReplayTrainer` mixin behind `Model`, `Sequential` and `wrap`.

It keeps Keras' `compile()`/`fit()` and adds what backward-SGD needs around
them, all in this package: the run (`run`) a `fit()` continues or starts,
the checks and buffer planning before any step (`fit_plan`, `fit_inputs`),
the train functions that run the step (`step`, `xla_units`) and raise its
incidents (`incidents`) and saving (`run_saving`); the host-side callback is
the core's (`keras_bsgd.run_callback`). The public model classes live in
`keras_bsgd.models`.
"""

import inspect
import itertools

import keras
import numpy as np
import tensorflow as tf

from keras_bsgd import custom_code
from keras_bsgd import errors
from keras_bsgd import fit_plan as core_fit_plan
from keras_bsgd.backend.tensorflow import fit_inputs
from keras_bsgd.backend.tensorflow import fit_plan
from keras_bsgd.backend.tensorflow import keras_private as tf_private
from keras_bsgd import index_feed
from keras_bsgd import keras_private
from keras_bsgd import run_callback
from keras_bsgd.backend.tensorflow import op_traces
from keras_bsgd.backend.tensorflow import run_saving
from keras_bsgd.backend.tensorflow import xla_units
from keras_bsgd.backend.tensorflow.buffer import SavedBuffer
from keras_bsgd.backend.tensorflow.buffer import with_run_weights
from keras_bsgd.backend.tensorflow.checkpoint import ReplayState
from keras_bsgd.backend.tensorflow.data_store import DataStore
from keras_bsgd.backend.tensorflow.loss_scale import ReplayLossScale
from keras_bsgd.backend.tensorflow.replicas import LocalReplicas
from keras_bsgd.backend.tensorflow.replicas import MirroredReplicas
from keras_bsgd.backend.tensorflow.replicas import check_strategy
from keras_bsgd.backend.tensorflow.run import Run
from keras_bsgd.backend.tensorflow.step import BackwardStep
from keras_bsgd.trainer import ReplayTrainerBase

_FIT_SIGNATURE = inspect.signature(keras.Model.fit)


class ReplayTrainer(ReplayTrainerBase, BackwardStep):
    """Mixin that turns a Keras model's `fit` into backward-SGD.

    With any optimizer other than `BackwardSGD` the model trains exactly as
    the Keras class it extends.
    """

    # The first batch of this fit() (its shapes build a lazily built model),
    # or None where fit() cannot see it without consuming it.
    _first_batch = None
    # The (DataStore, version) the train function was traced with: the
    # store's variables, and whether the buffer holds indices, are baked in.
    _traced_store = None
    _replay_state = None  # a ReplayState, from the first compile()
    _replicas = None  # the LocalReplicas of the current train function

    @property
    def _run(self):
        """The run of the model's `BackwardSGD` (`run_state`), or None."""
        optimizer = self._backward_sgd()
        return None if optimizer is None else optimizer.run_state

    @property
    def replay_buffer(self):
        """The `ReplayBuffer` of past batches, or `None` before the first step."""
        return None if self._run is None else self._run.buffer

    @property
    def data_store(self):
        """The `DataStore` the buffered example indices point into.

        `None` unless this run buffers indices (exact mode on NumPy arrays,
        see `compile(index_buffering=...)`).
        """
        return None if self._run is None else self._run.data_store

    @property
    def gradient_evaluations(self):
        """Gradient evaluations this run's maps have cost so far (an int).

        Counted inside the compiled step as the maps run: one per forward
        step, one per map an anchor advance or a replay applies. The logging
        pass (a forward pass only) is not counted; a `mixed_float16` map
        recomputed at a smaller loss scale counts once. 0 before the first
        step.
        """
        buffer = self.replay_buffer
        return 0 if buffer is None else int(buffer.gradient_evaluations.numpy())

    @property
    def skipped_batches(self):
        """Batches this run dropped because a value or the loss was not finite (an int)."""
        buffer = self.replay_buffer
        return 0 if buffer is None else int(buffer.skipped_batches.numpy())

    @property
    def replayed_step(self):
        """The step whose output iterate the model's weights hold (an int).

        Equal to `optimizer.iterations` after every step with the default
        `replay_every=1`; with `replay_every=E` it is the last multiple of
        `E`, epoch end or forward step reached.
        """
        buffer = self.replay_buffer
        saved = None if self._run is None else self._run.saved
        if buffer is not None:
            return int(buffer.replayed_step.numpy())
        if saved is not None:
            return saved.replayed_step  # loaded, until the first step
        return 0

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        if self._run is not None:
            self._run.left_weights = None
        if self._replay_state is None:
            # Assigned after compile so that a restore the checkpoint deferred
            # until this dependency existed sees the new optimizer.
            self._replay_state = ReplayState(
                self._save_replay_state, self._load_replay_state
            )

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "savedmodel":
            # Exported models serve inference; a Python-state string would
            # be frozen at trace time there.
            children.pop("_replay_state", None)
        return children

    def _loss_scale(self):
        # `mixed_float16` wraps the optimizer in a LossScaleOptimizer at compile().
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            return ReplayLossScale(self.optimizer)
        return None

    def fit(self, *args, **kwargs):
        optimizer = self._backward_sgd()
        if optimizer is None:
            return super().fit(*args, **kwargs)
        custom_code.check_no_custom_train_step(type(self))
        bound = _FIT_SIGNATURE.bind(self, *args, **kwargs)
        index_feed.check_arrays(bound.arguments)
        optimizer.check_learning_rate()
        self._start_run_if_weights_were_set()
        run = self._run_for(optimizer)
        buffer = run.buffer
        batch_size = core_fit_plan.plan(run, optimizer, bound.arguments)
        if run.buffer is not buffer:
            # A new batch size: the step is traced again, for the new buffer.
            self.train_function = None
        first, bound.arguments["x"] = fit_inputs.peek_first_batch(bound.arguments.get("x"))
        self._first_batch = fit_inputs.first_batch_spec(bound.arguments, first)
        arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
        arguments["callbacks"] = run_callback.with_run_callback(arguments.get("callbacks"))
        replicas = 1 if tf_private.distribute_strategy(self) is None else (
            tf_private.distribute_strategy(self).num_replicas_in_sync
        )
        try:
            # The step compares each replica's batch.
            with self._fitting(None if batch_size is None else batch_size // replicas):
                return super().fit(**self._index_arguments(optimizer, arguments))
        finally:
            self._first_batch = None

    def _record_weights(self):
        # What the trainer left in the model; see `_start_run_if_weights_were_set`.
        run = self._run
        if run is not None and run.buffer is not None:
            run.left_weights = self._weights_digest()
            run.record_left(self._trained_state())

    def _start_run_if_written_since_the_last_step(self):
        """Starts a new run if a callback wrote the model after the epoch's last step (host).

        The steps compare the model with what the step before left; after
        the last one, the epoch's end does.
        """
        optimizer = self._backward_sgd()
        run = None if optimizer is None else optimizer.run_state
        if run is not None and run.changed_since_left(self._trained_state()):
            run.start_over(optimizer.iterations)

    def _replay_to_current_step(self):
        """Computes the output iterate of the current step if the model does not hold it yet."""
        self.replay_function()

    def _start_run_if_weights_were_set(self):
        """Starts a new run from the model's weights if they were set from outside.

        `set_weights`, `load_weights` of weights only, `EarlyStopping(
        restore_best_weights=True)` or any assignment between `fit()` calls
        (or between epochs) would otherwise be overwritten by the anchor at
        the next step. The run's buffer and anchor are dropped; the next step
        is step 1 of a new run whose `S_0` is the weights as set (momentum
        slots as they are), while `optimizer.iterations` and schedules go on
        counting.
        """
        optimizer = self._backward_sgd()
        run = optimizer.run_state
        if run is None or run.buffer is None:
            return
        if run.left_weights is not None and self._weights_digest() != run.left_weights:
            run.start_over(optimizer.iterations)
        # Judged here: the steps compare from the weights as they are now.
        run.record_left(self._trained_state())

    def _run_for(self, optimizer):
        """`optimizer`'s run: its current one or a new one."""
        if optimizer.run_state is None:
            optimizer.run_state = Run()
        return optimizer.run_state

    def _index_arguments(self, optimizer, arguments):
        """fit()'s arguments, rewritten to feed example indices if this run buffers them."""
        run = self._run_for(optimizer)
        store = fit_plan.data_store(
            run, optimizer, arguments, tf_private.distribute_strategy(self), self.index_buffering
        )
        run.data_store = store
        if store is not None:
            arguments = index_feed.feed_indices(store, arguments)
        # The step is traced for one store (or none): its data variables, and
        # whether the buffer holds indices, are baked into the graph.
        traced = None if store is None else (store, store.version)
        if traced != self._traced_store:
            self.train_function = None
            self._traced_store = traced
        return arguments

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if tf_private.distribute_strategy(self) is None and self._backward_sgd() is not None:
            # Without a strategy Keras builds the model when the train
            # function first calls it; backward-SGD needs its weights before
            # that (the anchor and buffer are sized from them), so it builds
            # the model first, as Keras does under a strategy.
            batch = self._first_batch if data_batch is None else data_batch
            if batch is not None:
                self._build_from_batch(batch)
        # Keras averages a distributed batch with `strategy.reduce` in eager
        # mode to learn its shapes, which MultiWorkerMirroredStrategy cannot
        # do (its collectives need tensors). The first local replica's batch
        # has the same shapes.
        strategy = tf_private.distribute_strategy(self)
        if strategy is not None and iterator is not None and data_batch is None:
            for _, _, it in iterator:
                data_batch = MirroredReplicas(strategy).first(next(it))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _build_from_batch(self, batch):
        """Builds the model, compiled metrics and loss, and optimizer from `batch`'s spec.

        Keras' own symbolic build, fed a batch of unknown size (as Keras
        traces NumPy input), so that nothing in the step creates variables.
        """
        try:
            keras_private.build_from_batch(
                self, keras.tree.map_structure(fit_inputs.symbolic, batch)
            )
        except Exception:
            if not all(layer.built for layer in [self, *keras_private.nested_layers(self)]):
                raise
            # A built model that only runs on tensors: the step builds the rest.

    def save_own_variables(self, store):
        """Saves the model's own variables and the replay state.

        The replay state (see `_save_replay_state`) is stored under
        `replay_buffer:...` keys of the model's own entry.
        """
        super().save_own_variables(store)
        self._save_replay_state(store)

    def load_own_variables(self, store):
        """Loads what `save_own_variables` wrote."""
        ours = (SavedBuffer.PREFIX, DataStore.PREFIX)
        keys = [k for k in store.keys() if not k.startswith(ours)]
        super().load_own_variables({k: store[k] for k in keys})
        self._load_replay_state(store)

    def _save_replay_state(self, store):
        """Writes the training state outside Keras variables (see `run_saving`)."""
        run_saving.save(store, self._run, self._backward_sgd(), self._seed_states())

    def _load_replay_state(self, store):
        """Reads what `_save_replay_state` wrote (see `run_saving`)."""
        optimizer = self._backward_sgd()
        run = None if optimizer is None else self._run_for(optimizer)
        run_saving.load(store, run, optimizer, self._seed_states())

    def train_step(self, data):
        optimizer = self._backward_sgd()
        if optimizer is None:
            return super().train_step(data)
        if not self.trainable_variables:
            # Nothing to replay: Keras' own step (loss, metrics, BatchNorm
            # statistics), as Keras trains a model without trainable weights.
            return super().train_step(self._gathered(optimizer, data))
        return self._traced_step(optimizer, data, self._replicas or LocalReplicas())

    def _traced_step(self, optimizer, data, replicas):
        """`_backward_step`, its ops recording only the caller's frames under XLA (`op_traces`)."""
        return op_traces.call_with_callers_frames(
            self._backward_step, optimizer, data, replicas, enabled=bool(self.jit_compile)
        )

    def _gathered(self, optimizer, data):
        """`data`, or with index buffering the batch its example indices point to."""
        store = self._run_for(optimizer).data_store
        return data if store is None else store.gather(keras.utils.unpack_x_y_sample_weight(data)[0])

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        optimizer = self._backward_sgd()
        if optimizer is None:
            return super().make_train_function(force=force)
        compiled, replay = self._compiled_functions(optimizer, force)
        last_logs = None

        def train_function(iterator):
            nonlocal last_logs
            # Batches are taken on the host, so that a partial one is skipped
            # before it reaches the step (whose batch shape is static).
            batches = list(itertools.islice(iterator, self.steps_per_execution))
            if not batches:
                # A dataset of unknown length ended the epoch: its last step
                # must leave the output iterate in the model.
                self.replay_function()
                raise StopIteration
            buffer = self.replay_buffer
            run_batch_size = None if buffer is None else buffer.batch_size
            full = self._full_batches(batches, self._replicas.local_size, run_batch_size)
            if not full:
                # The logs of the last step (a custom train_step's keys too).
                return self.get_metrics_result() if last_logs is None else last_logs
            full = with_run_weights(self._run_for(optimizer), full, self._replicas)
            if buffer is not None and self.replay_buffer is not buffer:
                # Re-laid for the run's first sample weights: the functions
                # made so far hold the old buffer's variables.
                return self.make_train_function(force=True)(iter(full))
            # Tensors, as a compiled step gets them (also with run_eagerly).
            logs = compiled(iter(keras.tree.map_structure(_as_tensor, full)))
            if self._raise_incident(optimizer):
                logs = errors.with_skipped_loss(logs)
            last_logs = logs
            return logs

        def replay_function():
            buffer = self.replay_buffer
            if replay is None or buffer is None:
                return
            if int(buffer.replayed_step.numpy()) != int(optimizer.iterations.numpy()):
                replay()
                self._raise_incident(optimizer)

        self.train_function = train_function
        self.replay_function = replay_function
        return train_function

    def _compiled_functions(self, optimizer, force):
        """`(step, replay)`: the compiled train function and epoch-end replay (strategy, XLA unit)."""
        strategy = self.distribute_strategy
        check_strategy(strategy)
        if self.jit_compile:
            xla_units.warn_random_draws_into_convolutions(self)
        if strategy.num_replicas_in_sync > 1:
            compiled = self._make_distributed_train_function(optimizer, strategy)
            replay = self._make_replay_function(optimizer, self._replicas, jit_compile=False)
        elif self.jit_compile and xla_units.xla_unit(self) == "map":
            # Keras would compile the whole step with XLA; here the step is
            # a graph and each map's forward and backward pass an XLA call.
            self._replicas = LocalReplicas(jit_gradients=True)
            self.jit_compile = False
            try:
                super().make_train_function(force=force)
            finally:
                self.jit_compile = True
            compiled = self.train_function
            replay = self._make_replay_function(optimizer, self._replicas, jit_compile=False)
        else:
            self._replicas = LocalReplicas()
            super().make_train_function(force=force)
            compiled = self.train_function
            replay = self._make_replay_function(
                optimizer, self._replicas, jit_compile=bool(self.jit_compile)
            )
        return compiled, replay

    def _raise_incident(self, optimizer):
        """Raises what the last steps reported (a divergence puts the model back at the anchor).

        Returns:
            Whether one of them skipped a non-finite batch (nothing to raise).
        """
        run = optimizer.run_state
        has_incidents = run is not None and run.incidents is not None
        incident = run.incidents.pop() if has_incidents else None
        if incident is None or incident[0] == "skipped_batch":
            return incident is not None
        if incident[0] == "diverged":
            # The anchor is finite: the model goes back to it, and the
            # next fit() starts a new run from there.
            optimizer.restore_anchor(self.trainable_variables, self._model_state())
            run.start_over(optimizer.iterations)
        raise errors.incident(*incident, run.buffer.capacity)

    def _make_replay_function(self, optimizer, replicas, jit_compile):
        """The compiled replay up to the current step (see `_replay_step`), or None."""
        if optimizer.replay_every == 1:
            return None

        def replay_to_current_step():
            return op_traces.call_with_callers_frames(
                self._replay_step, optimizer, replicas, enabled=bool(self.jit_compile)
            )

        if self.run_eagerly:
            return replay_to_current_step
        return tf.function(replay_to_current_step, jit_compile=jit_compile, autograph=False)

    def _make_distributed_train_function(self, optimizer, strategy):
        """The train function under a multi-replica strategy.

        The step runs in cross-replica context, each replayed map as one
        `strategy.run` (one all-reduce). XLA compiles one device at a time,
        so the step is a graph; with `jit_compile=True` each replica's
        forward and backward pass is compiled with XLA inside it.
        """
        if self._loss_scale():
            raise ValueError(
                "keras_bsgd does not support the `mixed_float16` policy (a "
                "LossScaleOptimizer) under a multi-replica "
                f"{type(strategy).__name__} yet: an overflowing map is "
                "recomputed at a smaller scale, which keras_bsgd only does on "
                "one device so far. Use the `mixed_bfloat16` policy, which "
                "needs no loss scaling. Received: optimizer="
                f"{type(self.optimizer).__name__}"
            )
        if self.steps_per_execution != 1:
            raise ValueError(
                "keras_bsgd runs one batch per call under a multi-replica "
                "strategy. Received: steps_per_execution="
                f"{self.steps_per_execution}"
            )
        replicas = MirroredReplicas(strategy, jit_gradients=bool(self.jit_compile))
        self._replicas = replicas
        step = tf.function(
            lambda data: self._traced_step(optimizer, data, replicas),
            reduce_retracing=True,
            autograph=False,
        )
        if self.run_eagerly:
            step = lambda data: self._backward_step(optimizer, data, replicas)  # noqa: E731

        def function(iterator):
            return step(next(iterator))

        return function


def _as_tensor(leaf):
    return tf.convert_to_tensor(leaf) if isinstance(leaf, np.ndarray) else leaf
