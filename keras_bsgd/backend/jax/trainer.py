"""The JAX `ReplayTrainer`: backward-SGD in Keras' stateless, jitted `train_step`.

Keras' JAX trainer jits `train_step(state, data)` with the state donated
and carries only the model's and the optimizer's variables; the run's ring
buffer and counters are optimizer variables (`RunState`). The host part of a
run lives here: creating the run at its first batch, starting it over from
the model's weights (first step, weights set from outside, divergence),
raising what the step reported, and replaying at epoch ends with
`replay_every > 1`.
"""

import inspect
import itertools
import warnings

import jax
import keras
import numpy as np

from keras_bsgd import custom_code
from keras_bsgd import errors
from keras_bsgd import fit_plan
from keras_bsgd import index_feed
from keras_bsgd import partial_batches
from keras_bsgd import random_layers
from keras_bsgd import run_callback
from keras_bsgd import saved_run
from keras_bsgd import schedule
from keras_bsgd import xla_cpu
from keras_bsgd import keras_private
from keras_bsgd.backend.jax import keras_private as jax_private
from keras_bsgd.backend.jax import loss_scale
from keras_bsgd.backend.jax import run_saving
from keras_bsgd.backend.jax.data_store import DataStore
from keras_bsgd.backend.jax.run_state import Run
from keras_bsgd.backend.jax.run_state import RunState
from keras_bsgd.backend.jax.run_state import with_run_weights
from keras_bsgd.backend.jax.step import Step
from keras_bsgd.trainer import ReplayTrainerBase

_FIT_SIGNATURE = inspect.signature(keras.Model.fit)


class ReplayTrainer(ReplayTrainerBase):
    """Mixin that turns a Keras model's `fit` into backward-SGD on the JAX backend.

    With any optimizer other than `BackwardSGD` the model trains exactly as
    the Keras class it extends.
    """

    @property
    def replay_buffer(self):
        """The run's `RunState` (ring buffer and counters), or `None` before the first step."""
        optimizer = self._backward_sgd()
        run = None if optimizer is None else optimizer.run_state
        return None if run is None else run.state

    @property
    def gradient_evaluations(self):
        """Gradient evaluations this run's maps have cost so far (an int; 0 before the first step)."""
        run = self._synced_run()
        if run is None:
            return self._loaded_counter("gradient_evaluations")
        return run.gradient_evaluations()

    @property
    def replayed_step(self):
        """The step whose output iterate the model's weights hold (an int)."""
        run = self._synced_run()
        if run is None:
            return self._loaded_counter("replayed_step")
        return int(np.asarray(run.replayed_step.value))

    @property
    def skipped_batches(self):
        """Batches this run dropped because a value or the loss was not finite (an int)."""
        run = self._synced_run()
        if run is None:
            return self._loaded_counter("skipped_batches")
        return int(np.asarray(run.skipped.value))

    def _loaded_counter(self, name):
        """A counter of the run loaded from a file before its next step (0 without one)."""
        optimizer = self._backward_sgd()
        run = None if optimizer is None else optimizer.run_state
        saved = None if run is None else run.saved
        return 0 if saved is None else getattr(saved, name)

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        optimizer = self._backward_sgd()
        if optimizer is not None and optimizer is not self.optimizer:
            loss_scale.save_state_only(self.optimizer, optimizer)

    def _synced_run(self):
        if self.replay_buffer is None:
            return None
        self.jax_state_sync()
        return self.replay_buffer

    def _run_for(self, optimizer):
        if optimizer.run_state is None:
            optimizer.run_state = Run()
        return optimizer.run_state

    def fit(self, *args, **kwargs):
        optimizer = self._backward_sgd()
        if optimizer is None:
            return super().fit(*args, **kwargs)
        custom_code.check_no_custom_train_step(type(self))
        arguments = _FIT_SIGNATURE.bind(self, *args, **kwargs).arguments
        arguments.pop("self")
        index_feed.check_arrays(arguments)
        optimizer.check_learning_rate()
        run = self._run_for(optimizer)
        self._start_run_if_weights_were_set()
        # Several processes: Keras joins their batches into one global batch.
        processes = jax.process_count() if keras.distribution.distribution() is not None else 1
        batch_size = fit_plan.plan(run, optimizer, arguments, processes)
        if batch_size is not None:
            batch_size *= processes
        self._build_from_arrays(arguments)
        if self._index_buffered(run, optimizer, arguments):
            arguments = index_feed.feed_indices(run.data_store, arguments)
        arguments["callbacks"] = run_callback.with_run_callback(arguments.get("callbacks"))
        with self._fitting(batch_size):
            return super().fit(**arguments)

    def _build_from_arrays(self, arguments):
        """Builds the model from the first batch of in-memory arrays, before Keras' `fit()`.

        With index buffering Keras is fed example indices, and would build a
        lazily built model from them; building from the arrays in every case
        also keeps Keras' use of NumPy's random state (its shuffles) the same
        with and without index buffering.
        """
        data = tuple(arguments.get(k) for k in ("x", "y", "sample_weight"))
        if index_feed.in_memory(data):
            batch_size = arguments.get("batch_size") or 32
            keras_private.build_from_batch(
                self, keras.tree.map_structure(
                    lambda a: None if a is None else index_feed.as_floatx(a[:batch_size]), data
                ),
            )

    def _index_buffered(self, run, optimizer, arguments):
        """Whether this fit() feeds example indices into the run's `DataStore` (made if new)."""
        data = tuple(arguments.get(k) for k in ("x", "y", "sample_weight"))
        # A model without trainable weights runs Keras' own step, on the arrays.
        in_memory = (
            index_feed.in_memory(data) and keras.distribution.distribution() is None
            and bool(self.trainable_variables)
        )
        if run.state is None and run.saved is None and run.data_store is None:
            if self.index_buffering and optimizer.window is None and in_memory:
                run.data_store = DataStore()
        if run.data_store is not None and not in_memory:
            raise ValueError(
                "This run's replay buffer holds example indices into in-memory "
                "arrays (index buffering), so every fit() of the run must get "
                "NumPy arrays. To mix arrays with other input, compile with "
                "`index_buffering=False`. Received: x of type "
                f"{type(arguments.get('x')).__name__}"
            )
        return run.data_store is not None

    @property
    def data_store(self):
        """The `DataStore` the buffered example indices point into, or None (see `index_buffering`)."""
        optimizer = self._backward_sgd()
        return None if optimizer is None or optimizer.run_state is None else optimizer.run_state.data_store

    def _record_weights(self):
        # What the trainer left in the model; see `_start_run_if_weights_were_set`.
        optimizer = self._backward_sgd()
        run = None if optimizer is None else optimizer.run_state
        if run is not None and run.state is not None:
            run.left_weights = self._weights_digest()
            run.record_left(self._trained_state())

    def _start_run_if_weights_were_set(self):
        """Starts a new run at the next step if the weights are not the ones the trainer left."""
        run = self._backward_sgd().run_state
        if run.left_weights is not None and self._weights_digest() != run.left_weights:
            run.pending_start = True
        run.left_weights = None
        # Judged here: the steps compare from the weights as they are now.
        run.record_left(self._trained_state())

    def _start_run_if_written_since_the_last_step(self):
        """Starts a new run if a callback wrote the model after the epoch's last step (host).

        The steps compare the model with what the step before left; after
        the last one, the epoch's end does. The variables must hold the state.
        """
        optimizer = self._backward_sgd()
        run = None if optimizer is None else optimizer.run_state
        if run is not None and run.changed_since_left(self._trained_state()):
            run.pending_start = True

    def train_step(self, state, data):
        """Keras' stateless step: one backward-SGD step on `data` (see `keras_bsgd.backend.jax.step`)."""
        optimizer = self._backward_sgd()
        if optimizer is None or not self.trainable_variables:
            # Without trainable weights nothing replays: Keras' own step
            # (loss, metrics, BatchNorm statistics), as Keras trains such a model.
            return super().train_step(state, data)
        return Step(self, optimizer).train(state, data)

    def make_train_function(self, force=False):
        optimizer = self._backward_sgd()
        if optimizer is None:
            return super().make_train_function(force=force)
        if self.train_function is not None and not force:
            return self.train_function
        jit = not self.run_eagerly and self.jit_compile
        if jax.default_backend() == "cpu" and xla_cpu.has_convolution(self):
            warnings.warn(
                "keras_bsgd on JAX replays the maps in one XLA loop, and XLA:CPU "
                "runs convolution gradients inside a loop several times slower than "
                "at the top of a program (measured: a small CNN's replayed gradient "
                "cost 3.5-4.7 Keras SGD steps on 2 CPU cores; on a GPU, 0.6-0.8). "
                "On a CPU, train convolutional models with KERAS_BACKEND=tensorflow, "
                "which compiles each map's pass separately there "
                "(docs/backends.md, 'Compilation').",
                stacklevel=3,
            )

        def replay_step(state):
            return Step(self, optimizer).replay_to_current_step(state)

        # `self.train_step`, so that an override calling `super().train_step` is kept.
        train_step = self.train_step
        self._compiled_step = jax.jit(train_step, donate_argnums=0) if jit else train_step
        self._compiled_replay = jax.jit(replay_step, donate_argnums=0) if jit else replay_step

        last_logs = None

        def train_function(state, iterator):
            run = self._run_for(optimizer)
            try:
                batches = list(itertools.islice(iterator, self.steps_per_execution))
                full = self._full_batches(batches, partial_batches.leading_size, run.batch_size)
            except Exception:
                # The input failed or was refused before any step: the model
                # keeps `state` (Keras' fit() released its variables' values
                # and syncs only a state its steps returned).
                self._keep(state)
                raise
            if not batches:
                # A dataset of unknown length ended the epoch: its last step
                # must leave the output iterate in the model.
                self.jax_state_sync()
                self._replay_to_current_step()
                raise StopIteration
            nonlocal last_logs
            for data in full:
                last_logs, state = self._train_one(optimizer, state, data)
            # Every batch skipped: the logs of the last step (a custom train_step's keys too).
            return self._metrics_logs(state) if last_logs is None else last_logs, state

        self.train_function = train_function
        return train_function

    def _metrics_logs(self, state):
        """The metrics' results in `state` (no step ran: every batch was partial)."""
        mapping = list(zip(self.metrics_variables, state[3]))
        with keras.StatelessScope(state_mapping=mapping):
            return self.get_metrics_result()

    def _train_one(self, optimizer, state, data):
        """Runs one step on `data`; on an error the model keeps the state of the step before."""
        try:
            state, data = self._prepared(optimizer, state, data)
            logs, new_state = self._compiled_step(state, data)
        except Exception:
            # Raised before the step ran (a refused batch, an error while
            # tracing): `state` was not donated.
            self._keep(state)
            raise
        if self._raise_incident(optimizer, new_state):
            logs = errors.with_skipped_loss(logs)
        return logs, new_state

    def _prepared(self, optimizer, state, data):
        """`(state, data)`: the run's variables added, the run started where due, the batch checked.

        `data` gets sample weights of ones where the run has weights and it
        has none (`run_state.with_run_weights`).
        """
        weights, non_trainable, optimizer_values, metrics = state
        run = self._run_for(optimizer)
        unpacked = keras.utils.unpack_x_y_sample_weight(data)
        batch, relay = with_run_weights(run, unpacked)
        if batch is not unpacked:
            data = batch
        if relay:
            # All but the weights must fit the ring before it changes.
            run.state.check((*batch[:2], None))
            optimizer_values = self._relaid(optimizer_values, batch)
        # What the ring keeps: the batch, or (index buffering) its example indices.
        item = batch if run.data_store is None else batch[0]
        if run.state is None:
            capacity = run.capacity(optimizer)
            if capacity is None:
                raise errors.unknown_capacity()
            run.state = RunState(
                item, schedule.ring_slots(optimizer.window, optimizer.replay_every, capacity)
            )
            if run.saved is not None:
                position = [id(v) for v in self.optimizer.variables].index(id(optimizer.iterations))
                run_saving.resume(run, optimizer, int(np.asarray(optimizer_values[position])))
            optimizer_values = [*optimizer_values, *(v.value for v in run.state.variables)]
        run.state.check(item)
        if run.pending_start:
            optimizer_values = self._start_run(optimizer, weights, non_trainable, optimizer_values)
            run.pending_start = False
        # The step's state holds the values now: the run's variables give theirs
        # up as Keras' fit() does for the model's, until `jax_state_sync()`.
        jax_private.release_values(run.state.variables)
        return (weights, non_trainable, optimizer_values, metrics), data

    def _relaid(self, optimizer_values, batch):
        """The optimizer's values with the run's ring re-laid for `batch`'s first sample weights.

        The new ring's variables replace the old ring's in the step's state,
        which the jitted step then traces once more.
        """
        run = self._backward_sgd().run_state
        values = {id(v): value for v, value in zip(self.optimizer.variables, optimizer_values)}
        old = run.state
        for variable in old.variables:
            variable.assign(values[id(variable)])
        run.state = old.with_unit_weights(batch)
        # `old` is alive here, so no new variable has the id of one of its;
        # the others' values may be purged from the variables (Keras' fit()).
        return [
            values[id(v)] if id(v) in values else v.value for v in self.optimizer.variables
        ]

    def _start_run(self, optimizer, weights, non_trainable, optimizer_values):
        """Starts the run at the next step: the anchor is the model's state, step 1 the next.

        Copies, not the live arrays: Keras donates the state to the step, and
        one array may not be donated twice.
        """
        # The model's optimizer's: a LossScaleOptimizer's come before the BackwardSGD's.
        index = {id(v): i for i, v in enumerate(self.optimizer.variables)}
        values = list(optimizer_values)

        def put(variable, value):
            values[index[id(variable)]] = keras.ops.copy(value)

        model_state = [
            value for variable, value in zip(self.non_trainable_variables, non_trainable)
            if not random_layers.is_seed_state(variable)
        ]
        for anchor, value in zip(optimizer.anchor_weights, weights):
            put(anchor, value)
        for anchor, value in zip(optimizer.anchor_model_state, model_state):
            put(anchor, value)
        for anchor, momentum in zip(optimizer.anchor_momentums, optimizer.momentums):
            put(anchor, values[index[id(momentum)]])
        run = optimizer.run_state.state
        iterations = values[index[id(optimizer.iterations)]]
        put(run.origin, iterations)
        put(run.replayed_step, iterations)
        put(run.incident, np.zeros((2,), "int32"))
        return values

    def _keep(self, state):
        # The step did not run: the model keeps `state` (Keras' fit() syncs it).
        jax_private.hold_state(self, state)

    def _raise_incident(self, optimizer, state):
        """Raises what the step reported, after putting its state in the model.

        Returns:
            Whether the step skipped a non-finite batch (nothing to raise;
            the report is cleared in `state`, whose lists the step made).
        """
        run = optimizer.run_state
        optimizer_values = state[2]
        # By identity: `==` on a keras.Variable is an op.
        position = [id(v) for v in self.optimizer.variables].index(id(run.state.incident))
        code, step = (int(v) for v in np.asarray(optimizer_values[position]))
        if code == errors.INCIDENT_CODES["skipped_batch"]:
            optimizer_values[position] = jax.numpy.zeros((2,), "int32")
        if code in (0, errors.INCIDENT_CODES["skipped_batch"]):
            return bool(code)
        self._keep(state)
        run.state.incident.assign(np.zeros((2,), "int32"))
        kind = next(k for k, v in errors.INCIDENT_CODES.items() if v == code)
        if kind == "diverged":
            self._restore_anchor(optimizer)
            run.pending_start = True
        raise errors.incident(kind, step, run.state.slots)

    def _restore_anchor(self, optimizer):
        """Puts the anchor (weights, model state, momentum) in the model (host; copies)."""
        pairs = [
            *zip(self.trainable_variables, optimizer.anchor_weights),
            *zip(self._model_state(), optimizer.anchor_model_state),
            *zip(optimizer.momentums, optimizer.anchor_momentums),
        ]
        for variable, anchor in pairs:
            variable.assign(keras.ops.copy(anchor.value))

    def _replay_to_current_step(self):
        """Computes the output iterate of the current step if the model does not hold it yet.

        The model's variables must hold the state (outside a step, or synced).
        """
        optimizer = self._backward_sgd()
        run = None if optimizer is None else optimizer.run_state
        if run is None or run.state is None or run.pending_start:
            return
        replayed = int(np.asarray(run.state.replayed_step.value))
        if replayed == int(np.asarray(optimizer.iterations.value)):
            return
        groups = self._state_variables()
        state = tuple([v.value for v in group] for group in groups)
        state = self._compiled_replay(state)
        for group, values in zip(groups, state):
            for variable, value in zip(group, values):
                variable.assign(value)
        self._raise_incident(optimizer, state)

    def _state_variables(self):
        return (
            self.trainable_variables,
            self.non_trainable_variables,
            self.optimizer.variables,
            self.metrics_variables,
        )

    def save_own_variables(self, store):
        """Saves the model's own variables and the run (see `run_saving`).

        The run (ring buffer, counters, random layers' seeds) goes under
        `replay_buffer:...` keys of the model's own entry, in the TensorFlow
        trainer's format.
        """
        super().save_own_variables(store)
        self.jax_state_sync()
        optimizer = self._backward_sgd()
        run = None if optimizer is None else optimizer.run_state
        run_saving.save(store, run, optimizer, self._seed_states())

    def load_own_variables(self, store):
        """Loads what `save_own_variables` (or the TensorFlow trainer) wrote."""
        ours = (errors.SAVED_RUN_PREFIX, saved_run.DATA_PREFIX)
        keys = [k for k in store.keys() if not k.startswith(ours)]
        super().load_own_variables({k: store[k] for k in keys})
        optimizer = self._backward_sgd()
        run = None if optimizer is None else self._run_for(optimizer)
        run_saving.load(store, run, optimizer, self._seed_states())

    def _seed_states(self):
        return [v for v in self.non_trainable_variables if random_layers.is_seed_state(v)]
