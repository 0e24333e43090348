"""One backward-SGD step on JAX: pure functions of the state Keras carries.

Step `k` of a run (docs/design.md §1; `W` = forward_steps, arithmetic in
`keras_bsgd.schedule`), as `Step.train` composes the phases:

0. start: if something other than the last step wrote the model (a
   callback), a new run starts from it, and this step is its first;
1. log: loss and metrics of the new batch `B_k` at the current weights, and
   whether the batch and its loss are finite;
2. restore: the maps start from the anchor, if the step replays (with
   `replay_every=1`, a step that does not count recomputes the previous
   iterate rather than masking the state);
3. forward: `k <= W` applies `T_k` (forward SGD);
4. write: `B_k` and its frozen learning rate into the ring, unless `k <= W`
   (written before anything reads the ring, so XLA updates it in place);
5. advance: windowed mode moves the anchor by the maps that left the window;
6. replay: `T_k, T_{k-1}, ...` newest-first from the anchor;
7. finish: count the step, average the output iterate, report incidents,
   record what the step leaves in the model (for step 0 of the next).

Whether a step replays only sets trip counts and masks, so one trace serves
every step of a run.
"""

import collections

import jax
import keras
from jax import lax
from keras import ops

from keras_bsgd import schedule
from keras_bsgd import errors
from keras_bsgd import random_layers
from keras_bsgd import keras_private
from keras_bsgd.fingerprint import fingerprint
from keras_bsgd.backend.jax import keras_private as jax_private
from keras_bsgd.backend.jax.loss_scale import LossScale
from keras_bsgd.backend.jax.run_state import EVALUATIONS_BASE

# The training state S of docs/design.md §2: weights, the model's
# non-trainable state, and the map optimizer's variables (its counter and
# momentum slots); with `mixed_float16`, also the loss scale the next map
# starts from (None otherwise), which the maps lower where they overflow.
State = collections.namedtuple("State", ["weights", "model_state", "map_variables", "scale"])


def where(condition, new, old):
    """`new` where `condition` (a scalar) is true, else `old`, leaf by leaf."""
    return jax.tree_util.tree_map(lambda a, b: ops.where(condition, a, b), new, old)


def all_finite(tensors):
    floats = [t for t in tensors if t is not None and keras.backend.is_float_dtype(t.dtype)]
    checks = [ops.all(ops.isfinite(t)) for t in floats]
    return ops.all(ops.stack(checks)) if checks else ops.convert_to_tensor(True)


class Step:
    """The step of one traced train function: the model, its optimizer and where their state sits.

    Args:
        model: The `keras_bsgd` model (a JAX `ReplayTrainer`).
        optimizer: Its `BackwardSGD`, built, whose run (`run_state`) has its `RunState`.
    """

    def __init__(self, model, optimizer):
        self.model = model
        self.optimizer = optimizer
        self.run = optimizer.run_state.state
        self.store = optimizer.run_state.data_store
        # The model's optimizer: the `BackwardSGD`, or a `LossScaleOptimizer`
        # around it, whose variables come first in the state Keras carries.
        self.variables = model.optimizer.variables
        self.loss_scale = None
        if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
            self.loss_scale = LossScale(model.optimizer, self.variables)
        self.layout = Layout(model, optimizer, self.loss_scale)

    # The whole step.

    def train(self, state, data):
        weights, non_trainable, optimizer_values, metrics = state
        o = Values(self.variables, optimizer_values)
        item = batch = keras.utils.unpack_x_y_sample_weight(data)
        if self.store is not None:
            item, batch = batch[0], self.gather(o, batch[0])
        k = o[self.optimizer.iterations] + 1
        self.start_run_if_state_changed(o, weights, non_trainable, k)
        local = k - o[self.run.origin]
        rate = self.learning_rate(optimizer_values)
        finite, logged_state, logged_metrics = self.log(
            weights, non_trainable, metrics, batch, optimizer_values, k
        )
        forward, ok, replay, valid_rate = self.decide(o, local, finite, rate)
        context = (non_trainable, metrics, optimizer_values)
        start_scale = self.layout.scale(o)
        s, target, when = self.restore(o, weights, non_trainable, local, ok, replay)
        s, forward_maps = self.forward(s, batch, rate, k, replay & forward, *context)
        self.write(o, item, rate, local, ok & ~forward)
        s, advances = self.advance(s, o, target, when, *context)
        s, replayed = self.replay(s, o, target, when, *context)
        s = self.finish(s, o, k, replay, forward_maps + advances + replayed)
        self.count(o, k, ok, finite, valid_rate)
        if self.loss_scale is not None:
            s = s._replace(scale=self.loss_scale.count_step(o, s.scale, start_scale, ok))
        metrics = where(finite, logged_metrics, metrics)
        return self.logs(metrics), self.carried(s, logged_state, o, metrics)

    def replay_to_current_step(self, state):
        """Computes the output iterate of the current step (epoch ends with `replay_every > 1`)."""
        weights, non_trainable, optimizer_values, metrics = state
        o = Values(self.variables, optimizer_values)
        k = o[self.optimizer.iterations]
        local = k - o[self.run.origin]
        context = (non_trainable, metrics, optimizer_values)
        s = self.layout.anchor(o)
        s, advances = self.advance(s, o, local, None, *context)
        s, replayed = self.replay(s, o, local, None, *context)
        s = self.finish(s, o, k, ops.convert_to_tensor(True), advances + replayed)
        return self.carried(s, non_trainable, o, metrics)

    # Phases.

    def start_run_if_state_changed(self, o, weights, non_trainable, k):
        """Makes step `k` the first of a new run if something else wrote the model since the last step.

        A callback's assignment between steps, or `set_weights` between
        `train_on_batch` calls, would otherwise be overwritten by the
        anchor: the live state becomes the anchor, as the host's start of a
        run makes it.
        """
        run, layout = self.run, self.layout
        model_state = layout.model_state(non_trainable)
        left = o[run.left]
        changed = ops.equal(left[0], 1) & ops.not_equal(
            left[1], fingerprint([*weights, *model_state])
        )
        live = State(weights, model_state, layout.map_values(o), layout.scale(o))
        layout.set_anchor(o, where(changed, live, layout.anchor(o)))
        for counter in (run.origin, run.replayed_step):
            o[counter] = ops.where(changed, k - 1, o[counter])

    def log(self, weights, non_trainable, metrics, batch, optimizer_values, k):
        """The logging pass: Keras' own forward pass and metric update for `B_k`."""
        x, y, sample_weight = batch
        keyed = self.layout.key_random_layers(non_trainable, k)
        loss, (unscaled, y_pred, non_trainable, metrics) = self.model.compute_loss_and_updates(
            weights, keyed, metrics, x, y, sample_weight,
            training=True, optimizer_variables=optimizer_values,
        )
        metrics = jax_private.update_metrics(
            self.model, metrics, unscaled, x, y, y_pred, sample_weight
        )
        finite = all_finite([unscaled, *keras.tree.flatten(batch)])
        return finite, non_trainable, metrics

    def decide(self, o, local, finite, rate):
        """`(forward, ok, replay, valid_rate)`: whether step `local` is forward, counts, replays.

        `valid_rate`: whether the rate it freezes is finite and not negative.
        """
        optimizer = self.optimizer
        forward = schedule.is_forward(local, optimizer.forward_steps)
        room = True
        if optimizer.window is None:
            room = local - optimizer.forward_steps <= self.run.slots
        clear = ops.equal(o[self.run.incident][0], 0)
        valid_rate = ops.isfinite(rate) & (rate >= 0)
        ok = finite & valid_rate & (forward | room) & clear
        replay = ok & schedule.replays(local, optimizer.replay_every, optimizer.forward_steps)
        return forward, ok, replay, valid_rate

    def restore(self, o, weights, non_trainable, local, ok, replay):
        """The state the maps start from, the step whose iterate they compute, and a mask.

        With `replay_every=1` every counted step replays, and a step that does
        not count (a dropped batch) recomputes the previous iterate instead,
        from the anchor as always: no select over the whole state, which costs
        a pass over every weight per step. Otherwise a step that does not
        replay keeps the live state, under a mask (`when`).

        Returns:
            `(s, target, when)`: `when` is None for "always".
        """
        anchor = self.layout.anchor(o)
        if self.optimizer.replay_every == 1:
            return anchor, ops.where(ok, local, local - 1), None
        live = State(
            weights, self.layout.model_state(non_trainable), self.layout.map_values(o),
            self.layout.scale(o),
        )
        return where(replay, anchor, live), local, replay

    def forward(self, s, batch, rate, k, when, *context):
        """`T_k(s)` on the new batch where `when` (a forward step), else `s`."""
        trips = ops.where(when, 1, 0)
        s = lax.fori_loop(0, trips, lambda i, s: self.apply_map(s, batch, rate, k, *context), s)
        return s, trips

    def write(self, o, batch, rate, local, when):
        """Stores `B_k` (or its example indices) and its rate in its slot where `when`, else in the scratch slot."""
        run = self.run
        slot = ops.where(when, run.slot(local, self.optimizer.forward_steps), run.slots)
        for variable, leaf in zip(run.batches, run.leaves(batch)):
            leaf = ops.cast(leaf, variable.dtype)
            o[variable] = lax.dynamic_update_index_in_dim(o[variable], leaf, slot, 0)
        o[run.learning_rates] = lax.dynamic_update_index_in_dim(
            o[run.learning_rates], ops.cast(rate, "float32"), slot, 0
        )

    def advance(self, s, o, target, when, *context):
        """Moves the anchor to step `target`'s by the maps that left the window, where `when`.

        `when`: a boolean scalar, or None for always.
        """
        optimizer = self.optimizer
        if optimizer.window is None and not optimizer.forward_steps:
            return s, 0
        replayed = o[self.run.replayed_step] - o[self.run.origin]
        first, last = schedule.advance_range(
            replayed, target, optimizer.window, optimizer.forward_steps
        )
        trips = last - first if when is None else ops.where(when, last - first, 0)
        s = lax.fori_loop(
            0, trips, lambda i, s: self.apply_buffered(s, o, first + 1 + i, *context), s
        )
        self.layout.set_anchor(o, s if when is None else where(when, s, self.layout.anchor(o)))
        return s, trips

    def replay(self, s, o, target, when, *context):
        """Applies the maps of batches `target, target - 1, ...` newest-first, where `when`."""
        optimizer = self.optimizer
        count = schedule.replay_count(target, optimizer.window, optimizer.forward_steps)
        trips = count if when is None else ops.where(when, count, 0)
        s = lax.fori_loop(0, trips, lambda i, s: self.apply_buffered(s, o, target - i, *context), s)
        return s, trips

    def finish(self, s, o, k, replay, maps):
        """Averages the output iterate and counts the maps; a diverged replay is reported."""
        run = self.run
        # The host puts the (finite) anchor in the model and starts a new run from it.
        diverged = replay & ~all_finite(s.weights)
        first = ops.equal(o[run.replayed_step], 0)
        self.layout.average(o, s.weights, replay & ~diverged, first)
        o[run.replayed_step] = ops.where(replay, k, o[run.replayed_step])
        o[run.evaluations] = add_evaluations(o[run.evaluations], maps)
        self.report(o, k, ops.where(diverged, errors.INCIDENT_CODES["diverged"], 0))
        # What the step leaves in the model, for the next step's start.
        o[run.left] = ops.stack(
            [ops.convert_to_tensor(1, "int32"), fingerprint([*s.weights, *s.model_state])]
        )
        return s

    def count(self, o, k, ok, finite, valid_rate):
        """Counts the step if `ok` and the batch if it was dropped; reports why it did not count."""
        optimizer, run = self.optimizer, self.run
        o[optimizer.iterations] = o[optimizer.iterations] + ops.cast(ok, "int32")
        o[run.skipped] = o[run.skipped] + ops.cast(~finite, "int32")
        code = ops.where(finite & ~ok, errors.INCIDENT_CODES["capacity"], 0)
        code = ops.where(finite & ~valid_rate, errors.INCIDENT_CODES["learning_rate"], code)
        dropped = "nonfinite_batch" if optimizer.on_nonfinite == "raise" else "skipped_batch"
        code = ops.where(finite, code, errors.INCIDENT_CODES[dropped])
        self.report(o, k, code)

    def report(self, o, k, code):
        """Records incident `code` at step `k` unless one is waiting for the host already."""
        incident = o[self.run.incident]
        new = ops.cast(ops.stack([code, k]), "int32")
        o[self.run.incident] = ops.where(ops.equal(incident[0], 0) & (code > 0), new, incident)

    # One map.

    def apply_buffered(self, s, o, index, *context):
        """Applies the map of the batch that arrived at step `index` of the run, from the ring."""
        run = self.run
        slot = run.slot(index, self.optimizer.forward_steps)
        leaves = [lax.dynamic_index_in_dim(o[v], slot, 0, keepdims=False) for v in run.batches]
        batch = run.batch(leaves)
        if self.store is not None:
            batch = self.gather(o, batch)
        rate = lax.dynamic_index_in_dim(o[run.learning_rates], slot, 0, keepdims=False)
        return self.apply_map(s, batch, rate, o[run.origin] + index, *context)

    def apply_map(self, s, batch, rate, arrival, non_trainable, metrics, optimizer_values):
        """`T_arrival(s)`: one step of the map optimizer at the map's frozen rate."""
        x, y, sample_weight = batch
        keyed = self.layout.key_random_layers(
            self.layout.with_model_state(non_trainable, s.model_state), arrival
        )

        def gradients(scale):
            # Keras scales the loss by the wrapper's scale in optimizer_values.
            values = optimizer_values
            if scale is not None:
                values = self.loss_scale.with_scale(optimizer_values, scale)

            def loss(weights):
                value, aux = self.model.compute_loss_and_updates(
                    weights, keyed, metrics, x, y, sample_weight,
                    training=True, optimizer_variables=values,
                )
                return value, aux[2]

            return jax.grad(loss, has_aux=True)(s.weights)

        if self.loss_scale is None:
            (grads, non_trainable), scale = gradients(None), None
        else:
            grads, non_trainable, scale = self.loss_scale.gradients(gradients, s.scale)
        weights, map_variables = self.optimizer.stateless_apply_map(
            s.map_variables, grads, s.weights, rate
        )
        return State(weights, self.layout.model_state(non_trainable), map_variables, scale)

    # State in and out.

    def gather(self, o, indices):
        """The batch of examples `indices` from the run's data store (index buffering)."""
        return self.store.gather([o[v] for v in self.store.variables], indices)

    def learning_rate(self, optimizer_values):
        """The rate a batch arriving now is frozen with: the schedule at `iterations`."""
        mapping = list(zip(self.variables, optimizer_values))
        with keras.StatelessScope(state_mapping=mapping):
            return ops.cast(self.optimizer.learning_rate, "float32")

    def logs(self, metrics):
        mapping = list(zip(self.model.metrics_variables, metrics))
        with keras.StatelessScope(state_mapping=mapping):
            return self.model.get_metrics_result()

    def carried(self, s, non_trainable, o, metrics):
        self.layout.set_map_values(o, s.map_variables)
        self.layout.set_scale(o, s.scale)
        non_trainable = self.layout.with_model_state(non_trainable, s.model_state)
        return s.weights, non_trainable, o.values, metrics


def add_evaluations(words, maps):
    """Adds `maps` to a count held in two int32 words, `[low, high]` (base 2**30)."""
    low = words[0] + ops.cast(maps, "int32")
    carry = low // EVALUATIONS_BASE
    return ops.stack([low - carry * EVALUATIONS_BASE, words[1] + carry])


class Values:
    """The values of a list of variables inside a traced step, read and written by variable.

    Variables are told apart by identity: `==` on a `keras.Variable` is an op.
    """

    def __init__(self, variables, values):
        self._index = {id(v): i for i, v in enumerate(variables)}
        self.values = list(values)

    def __getitem__(self, variable):
        return self.values[self._index[id(variable)]]

    def __setitem__(self, variable, value):
        self.values[self._index[id(variable)]] = value


class Layout:
    """Where the training state and its anchor sit in Keras' state lists."""

    def __init__(self, model, optimizer, loss_scale=None):
        self.optimizer = optimizer
        self.loss_scale = loss_scale
        non_trainable = model.non_trainable_variables
        self.seeds = [i for i, v in enumerate(non_trainable) if random_layers.is_seed_state(v)]
        self.state = [i for i, v in enumerate(non_trainable) if not random_layers.is_seed_state(v)]
        self.map_variables = list(optimizer.map_optimizer.variables)
        positions = {id(v): i for i, v in enumerate(self.map_variables)}
        self.momentums = [positions[id(m)] for m in optimizer.momentums]

    def model_state(self, non_trainable):
        return [non_trainable[i] for i in self.state]

    def with_model_state(self, non_trainable, model_state):
        non_trainable = list(non_trainable)
        for i, value in zip(self.state, model_state):
            non_trainable[i] = value
        return non_trainable

    def key_random_layers(self, non_trainable, index):
        non_trainable = list(non_trainable)
        for i in self.seeds:
            non_trainable[i] = random_layers.keyed(non_trainable[i], index)
        return non_trainable

    def map_values(self, o):
        return [o[v] for v in self.map_variables]

    def set_map_values(self, o, values):
        for variable, value in zip(self.map_variables, values):
            o[variable] = value

    def anchor(self, o):
        """The anchor as a `State`; its map variables are the live ones with anchored momentum."""
        optimizer = self.optimizer
        map_variables = self.map_values(o)
        for i, anchor in zip(self.momentums, optimizer.anchor_momentums):
            map_variables[i] = o[anchor]
        return State(
            [o[v] for v in optimizer.anchor_weights],
            [o[v] for v in optimizer.anchor_model_state],
            map_variables,
            self.scale(o),
        )

    def scale(self, o):
        """The loss scale the next map starts from, or None without loss scaling."""
        return None if self.loss_scale is None else o[self.loss_scale.wrapper.dynamic_scale]

    def set_scale(self, o, scale):
        if self.loss_scale is not None:
            o[self.loss_scale.wrapper.dynamic_scale] = scale

    def set_anchor(self, o, s):
        optimizer = self.optimizer
        for variable, value in zip(optimizer.anchor_weights, s.weights):
            o[variable] = value
        for variable, value in zip(optimizer.anchor_model_state, s.model_state):
            o[variable] = value
        for variable, i in zip(optimizer.anchor_momentums, self.momentums):
            o[variable] = s.map_variables[i]

    def average(self, o, weights, when, first):
        """Keras' EMA update with the output iterate `weights`, where `when` (`use_ema=True`)."""
        optimizer = self.optimizer
        if not optimizer.use_ema:
            return
        momentum = ops.where(first, 0.0, optimizer.ema_momentum)
        for average, value in zip(keras_private.ema_averages(optimizer), weights):
            m = ops.cast(momentum, value.dtype)
            o[average] = ops.where(when, m * o[average] + (1 - m) * value, o[average])
