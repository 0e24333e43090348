"""The replaying trainer: the `ReplayTrainer` mixin behind `Model`, `Sequential` and `wrap`.

A training step `k` of backward-SGD (docs/design.md §1), all inside the one
compiled train function (under a multi-replica strategy, one graph whose
per-replica parts run through `keras_bsgd.replicas`). Steps count from the
start of the current run (`ReplayBuffer.origin`); `W` is `forward_steps`:

1. log the loss and metrics of the new batch `B_k` at the current weights
   (the last output iterate), as Keras' own `train_step` does, and check
   that the batch and its loss are finite (else the step is a no-op);
2. if the step replays (always with `replay_every=1`; else at multiples of
   it and in the forward phase), restore the live state (weights,
   momentum, non-trainable model state) from the anchor;
3. forward phase, `k <= W`: apply `T_k` to it (forward SGD);
4. windowed mode: advance the anchor by every map that left the window
   since the last replay, `A_k = T_{k-w}(... A)`;
5. write `B_k` (or, with index buffering, its example indices) and its
   frozen learning rate into the ring buffer, unless `k <= W`;
6. replay `T_k, T_{k-1}, ..., T_{max(W, k-w)+1}` in a `tf.while_loop`
   (so the model is traced once, whatever the window), each map with its
   random layers keyed to its batch's arrival index;
7. count one outer step and the gradient evaluations.

Whether a step replays only sets trip counts and masks: no conditional
holds a map. Epoch ends that are not replay steps replay through
`replay_function`. The public model classes live in `keras_bsgd.models`,
the errors in `keras_bsgd.errors`, the input checks in
`keras_bsgd.fit_inputs`, the XLA unit in `keras_bsgd.xla_units`.
"""

import hashlib
import inspect

import keras
import numpy as np
import tensorflow as tf

from keras_bsgd import custom_code
from keras_bsgd import errors
from keras_bsgd import finiteness
from keras_bsgd import fit_inputs
from keras_bsgd import fit_plan
from keras_bsgd import incidents
from keras_bsgd.incidents import Incidents
from keras_bsgd import index_feed
from keras_bsgd import random_layers
from keras_bsgd import run_callback
from keras_bsgd import run_saving
from keras_bsgd import xla_units
from keras_bsgd.buffer import STATIC_SHAPE_HINT
from keras_bsgd.buffer import ReplayBuffer
from keras_bsgd.buffer import SavedBuffer
from keras_bsgd.checkpoint import ReplayState
from keras_bsgd.data_store import DataStore
from keras_bsgd.loss_scale import ReplayLossScale
from keras_bsgd.optimizer import BackwardSGD
from keras_bsgd.replicas import LocalReplicas
from keras_bsgd.replicas import MirroredReplicas
from keras_bsgd.run import Run

_FIT_SIGNATURE = inspect.signature(keras.Model.fit)
_COMPILE_SIGNATURE = inspect.signature(keras.Model.compile)


def _noop():
    return tf.constant(0)


class ReplayTrainer:
    """Mixin that turns a Keras model's `fit` into backward-SGD.

    With any optimizer other than `BackwardSGD` the model trains exactly as
    the Keras class it extends.
    """

    _run = None  # the current `Run`: buffer, data store, loaded state
    _array_batch_size = None
    # The first batch of this fit() (its shapes build a lazily built model),
    # or None where fit() cannot see it without consuming it.
    _first_batch = None
    _built_before_trace = False  # whether no variable is created in the step
    # The (DataStore, version) the train function was traced with: the
    # store's variables, and whether the buffer holds indices, are baked in.
    _traced_store = None
    _replay_state = None  # a ReplayState, from the first compile()
    _replicas = None  # the LocalReplicas of the current train function

    @property
    def replay_buffer(self):
        """The `ReplayBuffer` of past batches, or `None` before the first step."""
        return None if self._run is None else self._run.buffer

    @property
    def data_store(self):
        """The `DataStore` the buffered example indices point into.

        `None` unless this run buffers indices (exact mode on NumPy arrays,
        see `BackwardSGD(index_buffering=...)`).
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
        arguments = _COMPILE_SIGNATURE.bind(self, *args, **kwargs).arguments
        optimizer = arguments.get("optimizer")
        if _backward_sgd_of(optimizer) is not None:
            custom_code.check_no_custom_train_step(type(self))
        super().compile(*args, **kwargs)
        if self._run is not None:
            self._run.left_weights = None
        self._built_before_trace = False  # new metrics, loss and optimizer
        source = self._hook_source()
        if source is not None and custom_code.overrides(type(source), "compute_loss"):
            # The wrapped model's compute_loss runs as a method of that model:
            # its `super().compute_loss()` needs the compiled loss there too.
            source.compile(
                optimizer="sgd",
                loss=arguments.get("loss"),
                loss_weights=arguments.get("loss_weights"),
            )
        optimizer = self._backward_sgd()
        if optimizer is not None:
            optimizer.model_state_source = self._model_state
        if self._replay_state is None:
            # Assigned after compile so that a restore the checkpoint deferred
            # until this dependency existed sees the new optimizer.
            self._replay_state = ReplayState(
                self._save_replay_state, self._load_replay_state
            )

    # A wrapped model whose class customizes the loss or metrics (see `wrap`):
    # a function returning it, so that Keras does not track it as a layer.
    _hook_source = staticmethod(lambda: None)

    def _source_hook(self, name):
        source = self._hook_source()
        if source is not None and custom_code.overrides(type(source), name):
            return getattr(source, name)
        return None

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

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "savedmodel":
            # Exported models serve inference; a Python-state string would
            # be frozen at trace time there.
            children.pop("_replay_state", None)
        return children

    def compile_from_config(self, config):
        # Keras skips compiling custom `compile()` methods when loading; this
        # one only adds to Keras' compile, so load it the way Keras does.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _backward_sgd(self):
        """The `BackwardSGD` this model trains with (inside a loss-scale wrapper too), or None."""
        return _backward_sgd_of(self.optimizer)

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
        self._start_run_if_weights_were_set(optimizer)
        self._array_batch_size = fit_plan.plan(
            self._run_for(optimizer), optimizer, bound.arguments
        )
        first, bound.arguments["x"] = fit_inputs.peek_first_batch(bound.arguments.get("x"))
        self._first_batch = fit_inputs.first_batch_spec(bound.arguments, first)
        stream_batch_size = None
        if self._array_batch_size is None and self._distribute_strategy is None:
            # Keras gives generator and PyDataset batches an unknown batch
            # dimension; the buffer needs a static one, so the first batch
            # fixes it, and the step checks every later batch against it.
            stream_batch_size = fit_inputs.leading_size(first)
            self._array_batch_size = stream_batch_size
        arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
        arguments["callbacks"] = run_callback.with_run_callback(arguments.get("callbacks"))
        try:
            return super().fit(**self._index_arguments(optimizer, arguments))
        except tf.errors.InvalidArgumentError as error:
            if stream_batch_size is None or fit_inputs.BATCH_CHECK not in str(error):
                raise
            raise ValueError(
                f"{STATIC_SHAPE_HINT} The first batch of this fit() had "
                f"{stream_batch_size} examples, which fixes the size of every "
                "batch; a later batch had another size (e.g. a partial last "
                "batch), and training stopped before that step, with the "
                "state of the step before. Make the generator or PyDataset "
                "yield only full batches. Received: a batch of another size "
                f"than {stream_batch_size}"
            ) from None
        finally:
            self._first_batch = None

    def _weights_digest(self):
        """A digest of the weights and model state, on the host."""
        digest = hashlib.blake2b(digest_size=16)
        for variable in self.trainable_variables + self._model_state():
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).data)
        return digest.digest()

    def _record_weights(self):
        # What the trainer left in the model; see `_start_run_if_weights_were_set`.
        run = self._run_of(self._backward_sgd())
        if run is not None and run.buffer is not None:
            run.left_weights = self._weights_digest()

    def _start_run_if_weights_were_set(self, optimizer):
        """Starts a new run from the model's weights if they were set from outside.

        `set_weights`, `load_weights` of weights only, `EarlyStopping(
        restore_best_weights=True)` or any assignment between `fit()` calls
        (or between epochs) would otherwise be overwritten by the anchor at
        the next step. The run's buffer and anchor are dropped; the next step
        is step 1 of a new run whose `S_0` is the weights as set (momentum
        slots as they are), while `optimizer.iterations` and schedules go on
        counting.
        """
        run = self._run_of(optimizer)
        if run is None or run.buffer is None or run.left_weights is None:
            return
        if self._weights_digest() != run.left_weights:
            run.start_over(optimizer.iterations)

    def _run_of(self, optimizer):
        """The run `optimizer` trains, or None."""
        run = self._run
        return run if run is not None and run.serves(optimizer) else None

    def _run_for(self, optimizer):
        """`optimizer`'s run: its current one, loaded state it adopts, or a new one."""
        run = self._run
        if run is not None and run.serves(optimizer):
            return run
        if run is not None and run.adoptable():
            run.adopt(optimizer)
            return run
        self._run = Run(optimizer)
        return self._run

    def _index_arguments(self, optimizer, arguments):
        """fit()'s arguments, rewritten to feed example indices if this run buffers them."""
        run = self._run_for(optimizer)
        store = fit_plan.data_store(run, optimizer, arguments, self._distribute_strategy)
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
        if self._distribute_strategy is None and self._backward_sgd() is not None:
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
        strategy = self._distribute_strategy
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
            self._symbolic_build(data_batch=keras.tree.map_structure(fit_inputs.symbolic, batch))
        except Exception:
            if not all(layer.built for layer in self._flatten_layers()):
                raise
            return  # a built model that only runs on tensors: the step builds the rest
        self._built_before_trace = True

    def _buffer_for(self, optimizer, batch, replicas):
        """The run's replay buffer, created at its first step from the batch's static spec."""
        run = self._run_for(optimizer)
        if run.buffer is not None:
            run.buffer.check(batch)
            return run.buffer
        capacity = run.capacity(optimizer)
        if capacity is None:
            raise errors.unknown_capacity()
        with replicas.scope():
            run.buffer = ReplayBuffer(
                capacity, ReplayBuffer.spec_of(batch), saved=run.saved,
                per_replica=replicas.distributed,
            )
            run.incidents = Incidents()
        run.saved = None
        return run.buffer

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
        """Writes the training state outside Keras variables (see `keras_bsgd.run_saving`)."""
        run_saving.save(store, self._run, self._backward_sgd(), self._seed_states())

    def _load_replay_state(self, store):
        """Reads what `_save_replay_state` wrote (see `keras_bsgd.run_saving`)."""
        optimizer = self._backward_sgd()
        run = None if optimizer is None else self._run_for(optimizer)
        self._run = run_saving.load(store, run, optimizer, self._seed_states())

    def _static_batch(self, batch):
        # NumPy inputs reach the step with an unknown batch dimension (fit()
        # has already checked that every batch is full), and so do generator
        # and PyDataset batches (the first batch fixed the size; a later one
        # of another size fails this check). A tf.data map after batch() can
        # lose the static size of some leaves (a TextVectorization layer does)
        # while the others keep it: every leaf of a batch shares it.
        size = self._array_batch_size
        if size is None:
            known = [
                t.shape[0]
                for t in keras.tree.flatten(batch)
                if t is not None and t.shape.rank and t.shape[0] is not None
            ]
            size = known[0] if known and len(set(known)) == 1 else None
        if size is None:
            return batch

        def fix(t):
            if t is None or t.shape.rank == 0 or t.shape[0] is not None:
                return t
            return tf.ensure_shape(t, [size, *t.shape[1:]], name=fit_inputs.BATCH_CHECK)

        return keras.tree.map_structure(fix, batch)

    def train_step(self, data):
        optimizer = self._backward_sgd()
        if optimizer is None:
            return super().train_step(data)
        data = self._static_batch(data)
        # No part of the step may run before a batch of the wrong size has
        # failed the check: the state must stay as it was. A trace that
        # creates the buffer or the optimizer's variables cannot wait on its
        # inputs (TF could not lift their initializers out of an XLA
        # function); fit() builds them first wherever it sees the batch spec.
        created = self._built_before_trace and self.optimizer.built
        leaves = [t for t in keras.tree.flatten(data) if t is not None] if created else []
        with tf.control_dependencies(leaves):
            return self._backward_step(
                optimizer, data, self._replicas or LocalReplicas()
            )

    def _backward_step(self, optimizer, data, replicas):
        """One backward-SGD step on `data` (per replica under a strategy)."""
        batch = replicas.run(
            lambda d: self._static_batch(keras.utils.unpack_x_y_sample_weight(d)),
            (data,),
        )
        # What the buffer keeps: the batch, or (index buffering) the
        # batch's example indices, from which the batch is gathered.
        data_store = self._run_for(optimizer).data_store
        item = batch
        if data_store is not None:
            item = batch[0]
            batch = data_store.gather(item)
        buffer = self._buffer_for(optimizer, replicas.first(item), replicas)
        if not self.trainable_variables:
            raise ValueError(
                "Backward-SGD needs trainable weights to replay updates on, "
                f"and model '{self.name}' has none (all layers frozen?). "
                "Received: 0 trainable variables"
            )
        if not self.optimizer.built:
            # Keras builds optimizers lazily in `apply()`, which replay skips.
            # A LossScaleOptimizer builds the BackwardSGD it wraps.
            with keras.name_scope(self.optimizer.name, caller=self.optimizer):
                self.optimizer.build(self.trainable_variables)
        loss_scale = self._loss_scale()
        model_state = self._model_state()
        step = tf.cast(optimizer.iterations, "int64") + 1
        # Steps of the current run (weights set from outside start a new one).
        local = step - buffer.origin
        learning_rate = optimizer.current_learning_rate()
        forward_steps = tf.constant(optimizer.forward_steps, "int64")

        # S_0 is the state at the run's first step, taken before the logging
        # pass below moves BatchNorm statistics.
        tf.cond(
            tf.equal(local, 1),
            lambda: _save(optimizer, self.trainable_variables, model_state),
            _noop,
        )
        every_step = optimizer.replay_every == 1
        if not every_step:
            # A step that does not replay keeps the model at the last output
            # iterate: the logging pass must not move its BatchNorm statistics.
            before_logging = [tf.identity(v) for v in model_state]
        self._seed_random_layers(step)
        finite, metrics_before, metrics_after = replicas.run(self._log_batch, (batch,))
        finite = replicas.all_true(finite)
        forward = local <= forward_steps
        room = True if optimizer.window is not None else local - forward_steps <= buffer.capacity
        ok = tf.logical_and(finite, tf.logical_or(forward, room))
        # Forward steps always move the model; backward ones at multiples
        # of `replay_every` (epoch ends replay through `replay_function`).
        replay = tf.logical_and(
            ok,
            tf.logical_or(forward, tf.equal(local % optimizer.replay_every, 0)),
        )
        start_scale = None if loss_scale is None else loss_scale.start_step()

        # The step is straight-line code, without a conditional around the
        # maps: XLA runs conditionals that hold the replay far slower (a
        # windowed MLP step lost about one SGD step's time to three of them),
        # and masked copies of the state cost about as much. With
        # `replay_every=1` a batch that may not enter (non-finite, or no room
        # left) therefore replays the previous step's maps instead, which
        # recomputes the previous iterate exactly: the rare case pays for
        # the common one's speed. With `replay_every > 1` most steps do not
        # replay, and masks keep the model at the last replayed iterate.
        if every_step:
            optimizer.restore_anchor(self.trainable_variables, model_state)
            target = tf.where(ok, local, local - 1)
        else:
            optimizer.restore_anchor(
                self.trainable_variables,
                model_state, when=replay, model_state_otherwise=before_logging
            )
            target = None

        def forward_map(i):
            self._seed_random_layers(step)
            replicas.run(
                self._apply_map,
                (optimizer, item, learning_rate, step, loss_scale, replicas),
            )
            return (i + 1,)

        forward_maps = tf.constant(0, "int64")
        if optimizer.forward_steps:
            (forward_maps,) = tf.while_loop(
                lambda i: i < tf.cast(tf.logical_and(replay, forward), "int64"),
                forward_map,
                (forward_maps,),
                maximum_iterations=1,
            )

        def write():
            slot = (local - forward_steps - 1) % buffer.capacity
            replicas.run(
                buffer.write,
                (slot, item, learning_rate, tf.logical_and(ok, tf.logical_not(forward))),
            )

        first = tf.equal(buffer.replayed_step, 0)
        if every_step:
            maps = self._replay(optimizer, buffer, target, None, loss_scale, replicas, write)
        else:
            maps = self._replay(optimizer, buffer, local, replay, loss_scale, replicas, write)
        buffer.gradient_evaluations.assign_add(forward_maps + maps)
        optimizer.finish_step(
            self.trainable_variables, when=ok, replayed=replay, first=first
        )
        if loss_scale is not None:
            loss_scale.finish_step(start_scale, when=ok)
        buffer.skipped_batches.assign_add(tf.cast(tf.logical_not(finite), "int64"))
        reports = self._run.incidents
        reports.report("diverged", step, when=tf.logical_and(replay, self._diverged()))
        reports.report("capacity", step, when=tf.logical_and(finite, tf.logical_not(ok)))
        if optimizer.on_nonfinite == "raise":
            reports.report("nonfinite_batch", step, when=tf.logical_not(finite))
        replicas.run(self._keep_metrics, (finite, metrics_before, metrics_after))
        logs = self.get_metrics_result()
        logs["skipped_batches"] = buffer.skipped_batches.value()
        return logs

    def _replay(self, optimizer, buffer, step, replay, loss_scale, replicas, write=None):
        """Brings the anchor to step `step` of the run and replays the maps after it, if `replay`.

        `replay` is a boolean tensor, or None for always (unmasked copies).
        The live state must hold the anchor where it is true. Windowed
        mode advances the anchor by every map that has left the window since
        the last replay (one per step, taken in a batch), from the buffer;
        then `write()` (if given) stores the new batch in the slot the
        oldest of them left; then the maps of batches `anchor_step(step) + 1
        ... step` run newest-first.

        Returns:
            The number of maps applied (gradient evaluations), a scalar
            int64 tensor.
        """
        forward_steps = optimizer.forward_steps
        capacity = buffer.capacity
        model_state = self._model_state()
        origin = buffer.origin

        def apply_buffered(index):
            # Random layers are keyed to the batch's arrival step.
            arrival = origin + index
            self._seed_random_layers(arrival)
            slot = (index - forward_steps - 1) % capacity
            replicas.run(
                self._apply_buffered,
                (optimizer, buffer, slot, arrival, loss_scale, replicas),
            )

        # The anchor's maps up to `forward_steps` ran on the batch of their
        # own step; those after it come from the buffer.
        first = tf.maximum(
            optimizer.anchor_step(buffer.replayed_step - origin), forward_steps
        )
        target = tf.maximum(optimizer.anchor_step(step), forward_steps)
        zero = tf.zeros_like(step)
        always = replay is None
        advances = zero
        if optimizer.window is not None:
            bound = target - first if always else tf.where(replay, target - first, zero)

            def advance_anchor(i):
                apply_buffered(first + 1 + i)
                return (i + 1,)

            (advances,) = tf.while_loop(
                lambda i: i < bound,
                advance_anchor,
                (zero,),
                maximum_iterations=optimizer.replay_every,
            )
        if optimizer.window is not None or forward_steps:
            optimizer.save_anchor(self.trainable_variables, model_state, when=replay)  # when=None: always
        if write is not None:
            write()
        count = step - optimizer.anchor_step(step)
        if not always:
            count = tf.where(replay, count, zero)

        def replay_map(i):
            apply_buffered(step - i)
            return (i + 1,)

        (replayed,) = tf.while_loop(
            lambda i: i < count,
            replay_map,
            (zero,),
            maximum_iterations=capacity,
        )
        replayed_step = origin + step
        if not always:
            replayed_step = tf.where(replay, replayed_step, buffer.replayed_step)
        buffer.replayed_step.assign(replayed_step)
        return advances + replayed

    def _diverged(self):
        return tf.logical_not(finiteness.all_finite(self.trainable_variables))

    def _replay_step(self, optimizer, replicas):
        """Replays up to the current step (epoch ends with `replay_every > 1`).

        Called only when the model does not hold that step's iterate yet
        (`replay_function` checks on the host), so nothing here is masked.
        """
        buffer = self._run.buffer
        step = tf.cast(optimizer.iterations, "int64")
        first = tf.equal(buffer.replayed_step, 0)
        optimizer.restore_anchor(self.trainable_variables, self._model_state())
        maps = self._replay(
            optimizer, buffer, step - buffer.origin, None, self._loss_scale(), replicas
        )
        buffer.gradient_evaluations.assign_add(maps)
        optimizer.average_iterate(self.trainable_variables, True, first)
        self._run.incidents.report("diverged", step, when=self._diverged())
        return maps

    def _log_batch(self, batch):
        """Updates loss and metrics with the new batch at the current weights.

        Returns:
            `(finite, metrics_before, metrics_after)`: whether the batch and its
            loss are finite, and the metric variables' values around the update.
        """
        x, y, sample_weight = batch
        before = [tf.identity(v) for v in self.metrics_variables]
        y_pred = self(x, training=True)
        loss = self.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
        )
        batch_size = tf.shape(keras.tree.flatten(x)[0])[0]
        self._loss_tracker.update_state(
            loss * tf.distribute.get_strategy().num_replicas_in_sync,
            sample_weight=batch_size,
        )
        self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        after = [tf.identity(v) for v in self.metrics_variables]
        # A batch with a non-finite value or loss must never enter the buffer:
        # it would poison every later step.
        floats = [t for t in keras.tree.flatten(batch) if t is not None and t.dtype.is_floating]
        finite = finiteness.all_finite([loss] + floats)
        return finite, before, after

    def _keep_metrics(self, finite, before, after):
        # Replayed losses must not reach the metrics (per-output loss trackers
        # are updated by compute_loss itself), nor may a dropped batch.
        for variable, old, new in zip(self.metrics_variables, before, after):
            variable.assign(tf.where(finite, new, old))
        return tf.constant(0)

    def _model_state(self):
        """The non-trainable variables that belong to the training state S."""
        return [v for v in self.non_trainable_variables if not random_layers.is_seed_state(v)]

    def _seed_states(self):
        return [v for v in self.non_trainable_variables if random_layers.is_seed_state(v)]

    def _seed_random_layers(self, index):
        """Keys every random layer's draws to the batch's arrival `index` (see `random_layers`)."""
        random_layers.key_to_batch(self._seed_states(), index)

    def _apply_buffered(self, optimizer, buffer, slot, index, loss_scale, replicas):
        """Applies the map of the batch buffered in `slot` (arrived at step `index`)."""
        item, learning_rate = buffer.read(slot)
        return self._apply_map(optimizer, item, learning_rate, index, loss_scale, replicas)

    def _apply_map(self, optimizer, item, learning_rate, index, loss_scale, replicas):
        """Applies the map `T_index` of a batch (or its example indices, `item`)."""
        data_store = self._run.data_store
        x, y, sample_weight = item if data_store is None else data_store.gather(item)
        variables = self.trainable_variables
        compute = self._map_gradients
        if replicas.jit_gradients:
            compute = xla_units.xla_gradients(replicas.xla(compute))

        def gradients(scale=None):
            return compute(optimizer, x, y, sample_weight, scale)

        if loss_scale is None:
            grads = gradients()
        else:
            model_state = self._model_state()
            before = [tf.identity(v) for v in model_state]

            def restart():
                # A retry must see the state and random draws of the first try.
                for variable, value in zip(model_state, before):
                    variable.assign(value)
                self._seed_random_layers(index)

            grads = loss_scale.gradients(gradients, restart)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        optimizer.apply_map(
            [g for g, _ in pairs], [v for _, v in pairs], learning_rate
        )
        return tf.constant(0)

    def _map_gradients(self, optimizer, x, y, sample_weight, scale=None):
        """The gradients of a map's loss (times `scale`, if given) at the live state."""
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            loss = optimizer.scale_loss(loss)
            if scale is not None:
                loss = loss * scale
        return tape.gradient(loss, self.trainable_variables)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        optimizer = self._backward_sgd()
        strategy = self.distribute_strategy
        if optimizer is not None:
            errors.check_strategy(strategy)
            if self.jit_compile:
                xla_units.warn_random_draws_into_convolutions(self)
        if optimizer is not None and strategy.num_replicas_in_sync > 1:
            compiled = self._make_distributed_train_function(optimizer, strategy)
            replay = self._make_replay_function(optimizer, self._replicas, jit_compile=False)
        elif optimizer is not None and self.jit_compile and xla_units.xla_unit(optimizer, self) == "map":
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

        def raise_incident():
            run = self._run
            has_incidents = run is not None and run.incidents is not None
            incident = run.incidents.pop() if has_incidents else None
            if incident is None:
                return
            if incident[0] == "diverged":
                # The anchor is finite: the model goes back to it, and the
                # next fit() starts a new run from there.
                optimizer.restore_anchor(self.trainable_variables, self._model_state())
                run.start_over(optimizer.iterations)
            raise incidents.error(*incident, run.buffer.capacity)

        def train_function(iterator):
            try:
                logs = compiled(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):
                # A dataset of unknown length ended the epoch: its last
                # step must leave the output iterate in the model.
                if optimizer is not None:
                    self.replay_function()
                raise
            raise_incident()
            return logs

        def replay_function():
            buffer = self.replay_buffer
            if replay is None or buffer is None:
                return
            if int(buffer.replayed_step.numpy()) != int(optimizer.iterations.numpy()):
                replay()
                raise_incident()

        self.train_function = train_function
        self.replay_function = replay_function
        return train_function

    def _make_replay_function(self, optimizer, replicas, jit_compile):
        """The compiled replay up to the current step (see `_replay_step`), or None."""
        if optimizer is None or optimizer.replay_every == 1:
            return None
        def replay_to_current_step():
            return self._replay_step(optimizer, replicas)

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
            lambda data: self._backward_step(optimizer, data, replicas),
            reduce_retracing=True,
            autograph=False,
        )
        if self.run_eagerly:
            step = lambda data: self._backward_step(optimizer, data, replicas)  # noqa: E731

        def function(iterator):
            return step(next(iterator))

        return function


def _backward_sgd_of(optimizer):
    """The `BackwardSGD` that `optimizer` is or (mixed_float16) wraps, or None."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer if isinstance(optimizer, BackwardSGD) else None


def _save(optimizer, trainable_variables, model_state):
    optimizer.save_anchor(trainable_variables, model_state)
    return _noop()
