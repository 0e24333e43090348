"""`BackwardStep`: one backward-SGD training step, the part of `ReplayTrainer` that runs compiled.

A training step `k` of backward-SGD (docs/design.md §1), all inside the one
compiled train function (under a multi-replica strategy, one graph whose
per-replica parts run through `keras_bsgd.backend.tensorflow.replicas`). Steps count from the
start of the current run (`ReplayBuffer.origin`); `W` is `forward_steps`:

0. if something other than the last step wrote the model (a callback),
   start a new run from it: this step is its first;
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
7. count one outer step and the gradient evaluations, and record what the
   step leaves in the model (for step 0 of the next).

Whether a step replays only sets trip counts and masks: no conditional
holds a map. Epoch ends that are not replay steps replay through
`replay_function`.
"""

import functools

import keras
import tensorflow as tf

from keras_bsgd import errors
from keras_bsgd import random_layers
from keras_bsgd import schedule
from keras_bsgd.backend.tensorflow import finiteness
from keras_bsgd.backend.tensorflow import keras_private as tf_private
from keras_bsgd.backend.tensorflow import updates
from keras_bsgd.backend.tensorflow import xla_units
from keras_bsgd.backend.tensorflow.buffer import ReplayBuffer
from keras_bsgd.backend.tensorflow.incidents import Incidents


class BackwardStep:
    """The training step of `ReplayTrainer` (see the module docstring)."""

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

    def _backward_step(self, optimizer, data, replicas):
        """One backward-SGD step on `data` (per replica under a strategy): the module's phases."""
        batch, item, buffer = self._step_inputs(optimizer, data, replicas)
        loss_scale = self._loss_scale()
        step = tf.cast(optimizer.iterations, "int64") + 1
        self._start_run_if_state_changed(buffer, step)
        # Steps of the current run (weights set from outside start a new one).
        local = step - buffer.origin
        learning_rate = optimizer.current_learning_rate()
        self._start_run_at_its_first_step(optimizer, local)
        finite, before_logging, metrics = self._log(optimizer, batch, step, replicas)
        # Nothing changes before the logging pass's loss exists: a batch its
        # loss fails on (labels out of range) raises with the state kept.
        with tf.control_dependencies([finite]):
            forward, ok, replay, valid_rate = self._decide(
                optimizer, buffer, local, finite, learning_rate
            )
            start_scale = None if loss_scale is None else loss_scale.start_step()
            target, when = self._restore(optimizer, local, ok, replay, before_logging)
            forward_maps = self._forward(
                optimizer, item, learning_rate, step, tf.logical_and(replay, forward),
                loss_scale, replicas,
            )
            write = functools.partial(
                self._write, optimizer, buffer, local, item, learning_rate,
                tf.logical_and(ok, tf.logical_not(forward)), replicas,
            )
            first = tf.equal(buffer.replayed_step, 0)
            maps = self._replay(optimizer, buffer, target, when, loss_scale, replicas, write)
            buffer.gradient_evaluations.assign_add(forward_maps + maps)
            self._finish(
                optimizer, buffer, step, (ok, replay, finite, valid_rate), first,
                loss_scale, start_scale,
            )
            replicas.run(self._keep_metrics, (finite, *metrics))
        return self.get_metrics_result()

    def _step_inputs(self, optimizer, data, replicas):
        """`(batch, item, buffer)`: the batch, what the buffer keeps of it, and the run's buffer.

        With index buffering the buffer keeps the batch's example indices
        (`item`), and the batch is gathered from the run's data store.
        """
        batch = replicas.run(
            keras.utils.unpack_x_y_sample_weight,
            (data,),
        )
        data_store = self._run_for(optimizer).data_store
        item = batch
        if data_store is not None:
            item = batch[0]
            batch = data_store.gather(item)
        buffer = self._buffer_for(optimizer, replicas.first(item), replicas)
        if not self.trainable_variables:
            raise ValueError(
                "Under a multi-replica strategy, backward-SGD needs trainable "
                f"weights to replay updates on, and model '{self.name}' has none "
                "(all layers frozen?). Train it without the strategy, or with "
                "trainable weights. Received: 0 trainable variables"
            )
        if not self.optimizer.built:
            # Keras builds optimizers lazily in their `apply()`, which only
            # the map optimizer's runs, inside the traced loop. A
            # LossScaleOptimizer builds the BackwardSGD it wraps.
            with keras.name_scope(self.optimizer.name, caller=self.optimizer):
                self.optimizer.build(self.trainable_variables)
        return batch, item, buffer

    def _start_run_if_state_changed(self, buffer, step):
        """Makes `step` the first of a new run if something else wrote the model since the last step.

        A callback's assignment between steps, or `set_weights` between
        `train_on_batch` calls, would otherwise be overwritten by the anchor.
        """
        changed = buffer.changed_since_left(self._trained_state())
        for counter in (buffer.origin, buffer.replayed_step):
            counter.assign(tf.where(changed, step - 1, counter))

    def _start_run_at_its_first_step(self, optimizer, local):
        # S_0 is the state at the run's first step, taken before the logging
        # pass moves BatchNorm statistics.
        model_state = self._model_state()
        tf.cond(
            tf.equal(local, 1),
            lambda: _save(optimizer, self.trainable_variables, model_state),
            _noop,
        )

    def _log(self, optimizer, batch, step, replicas):
        """Phase 1: the logging pass. Returns `(finite, before_logging, (metrics before, after))`.

        `before_logging` is the model state before the pass moved it, which a
        step that does not replay keeps (None with `replay_every=1`).
        """
        before_logging = None
        if optimizer.replay_every != 1:
            before_logging = [tf.identity(v) for v in self._model_state()]
        self._seed_random_layers(step)
        finite, metrics_before, metrics_after = replicas.run(self._log_batch, (batch,))
        return replicas.all_true(finite), before_logging, (metrics_before, metrics_after)

    def _decide(self, optimizer, buffer, local, finite, learning_rate):
        """`(forward, ok, replay, valid_rate)`: a forward step; the step counts; it replays.

        `valid_rate`: whether the rate it freezes is finite and not negative.
        """
        forward_steps = tf.constant(optimizer.forward_steps, "int64")
        forward = local <= forward_steps
        room = True if optimizer.window is not None else local - forward_steps <= buffer.capacity
        valid_rate = tf.logical_and(tf.math.is_finite(learning_rate), learning_rate >= 0)
        ok = tf.logical_and(
            tf.logical_and(finite, valid_rate), tf.logical_or(forward, room)
        )
        # Forward steps always move the model; backward ones at multiples
        # of `replay_every` (epoch ends replay through `replay_function`).
        replay = tf.logical_and(
            ok,
            tf.logical_or(forward, tf.equal(local % optimizer.replay_every, 0)),
        )
        return forward, ok, replay, valid_rate

    def _restore(self, optimizer, local, ok, replay, before_logging):
        """Phase 2: the live state becomes the anchor. Returns `(target, when)` for the replay.

        The step is straight-line code, without a conditional around the
        maps: XLA runs conditionals that hold the replay far slower (a
        windowed MLP step lost about one SGD step's time to three of them),
        and masked copies of the state cost about as much. With
        `replay_every=1` a batch that may not enter (non-finite, or no room
        left) therefore replays the previous step's maps instead, which
        recomputes the previous iterate exactly: the rare case pays for the
        common one's speed (`when` None: always). With `replay_every > 1`
        most steps do not replay, and masks keep the model at the last
        replayed iterate.
        """
        model_state = self._model_state()
        if optimizer.replay_every == 1:
            optimizer.restore_anchor(self.trainable_variables, model_state)
            return tf.where(ok, local, local - 1), None
        optimizer.restore_anchor(
            self.trainable_variables,
            model_state, when=replay, model_state_otherwise=before_logging
        )
        return local, replay

    def _forward(self, optimizer, item, learning_rate, step, when, loss_scale, replicas):
        """Phase 3: `T_k` on the new batch where `when` (a forward step). Returns the maps run."""
        forward_maps = tf.constant(0, "int64")
        if not optimizer.forward_steps:
            return forward_maps

        def forward_map(i):
            self._seed_random_layers(step)
            replicas.run(
                self._apply_map,
                (optimizer, item, learning_rate, step, loss_scale, replicas),
            )
            return (i + 1,)

        (forward_maps,) = tf.while_loop(
            lambda i: i < tf.cast(when, "int64"),
            forward_map,
            (forward_maps,),
            maximum_iterations=1,
        )
        return forward_maps

    def _write(self, optimizer, buffer, local, item, learning_rate, when, replicas):
        """Phase 5: stores the new batch (or its indices) and its rate in its slot, where `when`."""
        slot = schedule.slot(local, optimizer.forward_steps, buffer.capacity)
        replicas.run(buffer.write, (slot, item, learning_rate, when))

    def _replay(self, optimizer, buffer, step, replay, loss_scale, replicas, write=None):
        """Phases 4-6: advances the anchor to step `step`, writes, replays its maps; where `replay`.

        `replay` is a boolean tensor, or None for always (unmasked copies).
        The live state must hold the anchor where it is true. Windowed mode
        advances the anchor by every map that has left the window since the
        last replay, from the buffer; then `write()` (if given) stores the
        new batch in the slot the oldest of them left (read first, then
        written); then the maps of batches `anchor_step(step) + 1 ... step`
        run newest-first.

        Returns:
            The number of maps applied (gradient evaluations), a scalar
            int64 tensor.
        """
        apply_buffered = functools.partial(
            self._apply_buffered_at, optimizer, buffer, loss_scale, replicas
        )
        advances = self._advance_anchor(optimizer, buffer, step, replay, apply_buffered)
        if write is not None:
            write()
        count = schedule.replay_count(step, optimizer.window, optimizer.forward_steps)
        zero = tf.zeros_like(step)
        if replay is not None:
            count = tf.where(replay, count, zero)

        def replay_map(i):
            apply_buffered(step - i)
            return (i + 1,)

        (replayed,) = tf.while_loop(
            lambda i: i < count,
            replay_map,
            (zero,),
            maximum_iterations=buffer.capacity,
        )
        replayed_step = buffer.origin + step
        if replay is not None:
            replayed_step = tf.where(replay, replayed_step, buffer.replayed_step)
        buffer.replayed_step.assign(replayed_step)
        return advances + replayed

    def _advance_anchor(self, optimizer, buffer, step, replay, apply_buffered):
        """Phase 4: windowed mode moves the anchor by the maps that left the window, where `replay`.

        The anchor's maps up to `forward_steps` ran on the batch of their own
        step; those after it come from the buffer. Returns the maps run.
        """
        first, last = schedule.advance_range(
            buffer.replayed_step - buffer.origin, step, optimizer.window, optimizer.forward_steps
        )
        zero = tf.zeros_like(step)
        advances = zero
        if optimizer.window is not None:
            bound = last - first if replay is None else tf.where(replay, last - first, zero)

            def advance_anchor(i):
                apply_buffered(first + 1 + i)
                return (i + 1,)

            (advances,) = tf.while_loop(
                lambda i: i < bound,
                advance_anchor,
                (zero,),
                maximum_iterations=optimizer.replay_every,
            )
        if optimizer.window is not None or optimizer.forward_steps:
            # when=None: always.
            optimizer.save_anchor(self.trainable_variables, self._model_state(), when=replay)
        return advances

    def _apply_buffered_at(self, optimizer, buffer, loss_scale, replicas, index):
        """Applies the map of the batch that arrived at step `index` of the run, from the buffer."""
        # Random layers are keyed to the batch's arrival step.
        arrival = buffer.origin + index
        self._seed_random_layers(arrival)
        slot = schedule.slot(index, optimizer.forward_steps, buffer.capacity)
        replicas.run(
            self._apply_buffered,
            (optimizer, buffer, slot, arrival, loss_scale, replicas),
        )

    def _finish(self, optimizer, buffer, step, decision, first, loss_scale, start_scale):
        """Phase 7: counts the step, averages the output iterate, reports incidents.

        `decision`: `(ok, replay, finite, valid_rate)`, as `_decide` made it.
        """
        ok, replay, finite, valid_rate = decision
        updates.finish_step(
            optimizer, self.trainable_variables, when=ok, replayed=replay, first=first
        )
        if loss_scale is not None:
            loss_scale.finish_step(start_scale, when=ok)
        buffer.skipped_batches.assign_add(tf.cast(tf.logical_not(finite), "int64"))
        reports = self._run.incidents
        reports.report("diverged", step, when=tf.logical_and(replay, self._diverged()))
        accepted = tf.logical_and(finite, valid_rate)
        reports.report("capacity", step, when=tf.logical_and(accepted, tf.logical_not(ok)))
        reports.report(
            "learning_rate", step, when=tf.logical_and(finite, tf.logical_not(valid_rate))
        )
        if optimizer.on_nonfinite == "raise":
            reports.report("nonfinite_batch", step, when=tf.logical_not(finite))
        else:
            reports.report("skipped_batch", step, when=tf.logical_and(
                tf.logical_not(finite), reports.clear()
            ))
        buffer.record_left(self._trained_state())

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
        updates.average_iterate(optimizer, self.trainable_variables, True, first)
        self._run.incidents.report("diverged", step, when=self._diverged())
        buffer.record_left(self._trained_state())
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
        loss = self._training_loss(x, y, y_pred, sample_weight)
        batch_size = tf.shape(keras.tree.flatten(x)[0])[0]
        tf_private.loss_tracker(self).update_state(
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
        updates.apply_map(
            optimizer, [g for g, _ in pairs], [v for _, v in pairs], learning_rate
        )
        return tf.constant(0)

    def _map_gradients(self, optimizer, x, y, sample_weight, scale=None):
        """The gradients of a map's loss (times `scale`, if given) at the live state."""
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._training_loss(x, y, y_pred, sample_weight)
            loss = optimizer.scale_loss(loss)
            if scale is not None:
                loss = loss * scale
        return tape.gradient(loss, self.trainable_variables)


def _noop():
    return tf.constant(0)


def _save(optimizer, trainable_variables, model_state):
    optimizer.save_anchor(trainable_variables, model_state)
    return _noop()
