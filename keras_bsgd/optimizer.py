"""`BackwardSGD`: the Keras optimizer that holds backward-SGD's settings and state."""

import contextlib
import contextvars
import math
import numbers

import keras
import numpy as np

from keras_bsgd import execution

WRAP_HINT = (
    "BackwardSGD replays buffered batches, which needs the replaying trainer "
    "of keras_bsgd: build the model with `keras_bsgd.Model` / "
    "`keras_bsgd.Sequential`, or wrap an existing model with "
    "`model = keras_bsgd.wrap(model)` before `compile()`. (Keras' "
    "`clone_model` makes a `keras.Sequential` of a `keras_bsgd.Sequential`: "
    "clone one with `keras_bsgd.Sequential.from_config(model.get_config())`.)"
)



# Keras' `learning_rate` property, which `BackwardSGD` checks a rate against before it sets one.
_KERAS_LEARNING_RATE = keras.optimizers.Optimizer.learning_rate

# The `all_or_nothing()` load in progress: `(writes waiting for its end, its
# BackwardSGD, the trainable variables that one will be built with)`. Not
# attributes of the optimizer: Keras tracks the variables of every list an
# optimizer holds as its own.
_LOAD = contextvars.ContextVar("keras_bsgd_load", default=None)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _map_setting(name):
    """A setting of the maps' update, kept once: by the map optimizer, which applies it.

    Keras' `Optimizer.__init__` sets the base settings before the map
    optimizer exists; they wait in the instance until it is built with them.
    """

    def get(self):
        inner = self.__dict__.get("map_optimizer")
        if inner is None:
            return self.__dict__.get("_settings_before_map_optimizer", {}).get(name)
        return getattr(inner, name)

    def set(self, value):
        inner = self.__dict__.get("map_optimizer")
        if inner is None:
            self.__dict__.setdefault("_settings_before_map_optimizer", {})[name] = value
        else:
            setattr(inner, name, value)

    return property(get, set, doc=f"`{name}` of the map optimizer, which applies every map.")


@keras.saving.register_keras_serializable(package="keras_bsgd")
class BackwardSGD(keras.optimizers.Optimizer):
    """Backward-SGD: SGD whose per-batch updates are composed newest-first.

    Each batch `i` defines a map `T_i`: one step of Keras `SGD` (momentum,
    Nesterov, weight decay, clipping as configured) at the learning rate of
    the step the batch arrived. Forward SGD applies the maps in arrival order;
    backward-SGD restarts every step from an anchor and replays the buffered
    batches newest-first, so that in contractive regions its iterates
    converge to a point (Dherin et al., 2025):

    ```
    exact (window=None):  S~_k = T_1(T_2(... T_k(S_0)))
    windowed (window=w):  A_k  = T_{k-w}(... T_1(S_0))       # the anchor
                          S~_k = T_{k-w+1}(... T_k(A_k))
    ```

    The replay runs in the trainer of `keras_bsgd.Model`, `Sequential` or
    `wrap(model)`; a plain `keras.Model` compiled with it refuses to train.
    What each setting computes: docs/semantics.md.

    Args:
        learning_rate: A float, a `LearningRateSchedule` or a callable, as
            for `keras.optimizers.SGD`. Defaults to `0.01`.
        momentum: Float in `[0, 1)`. Defaults to `0.0`.
        nesterov: Whether to apply Nesterov momentum. Defaults to `False`.
        window: Integer `w >= 1` for windowed backward-SGD, or `None` for
            exact backward-SGD. Defaults to `None`.
        max_steps: Exact mode's buffer capacity, the most steps of the run;
            `None`: the steps `fit()` plans, where known. Defaults to `None`.
        on_nonfinite: `"skip"` drops a batch with a NaN/Inf value or loss
            (`model.skipped_batches` counts it), `"raise"` stops `fit()`;
            either way the state is unchanged. Defaults to `"skip"`.
        replay_every: Integer `E >= 1`: compute the backward iterate only
            every `E` steps and at epoch ends (exact, not an approximation).
            Defaults to `1`.
        forward_steps: Integer `W >= 0`: steps `1..W` are plain forward SGD,
            a warm start for the backward phase. Defaults to `0`.
        **kwargs: The keyword arguments of `keras.optimizers.Optimizer`
            (`weight_decay`, `clipnorm`, `clipvalue`, `global_clipnorm`,
            `loss_scale_factor`, `use_ema`, `name`, ...). How the steps
            run (`xla_unit`, `index_buffering`) is set at the model's
            `compile()`; passed here (their old place) they warn and are
            passed on to it.

    References:
        - [Dherin et al., 2025](https://arxiv.org/abs/2502.01557), "How
          iteration order influences convergence and stability in deep
          learning".

    Example:

    >>> import keras, numpy as np, keras_bsgd
    >>> model = keras_bsgd.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=keras_bsgd.BackwardSGD(0.05, window=4), loss="mse")
    >>> x, y = np.ones((64, 3), "float32"), np.zeros((64, 1), "float32")
    >>> history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    >>> int(model.optimizer.iterations)
    16
    """

    momentum = _map_setting("momentum")
    nesterov = _map_setting("nesterov")
    weight_decay = _map_setting("weight_decay")
    clipnorm = _map_setting("clipnorm")
    clipvalue = _map_setting("clipvalue")
    global_clipnorm = _map_setting("global_clipnorm")
    loss_scale_factor = _map_setting("loss_scale_factor")

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        nesterov=False,
        window=None,
        max_steps=None,
        on_nonfinite="skip",
        index_buffering=None,
        xla_unit=None,
        replay_every=1,
        forward_steps=0,
        name="backward_sgd",
        **kwargs,
    ):
        _validate(learning_rate, momentum, window, max_steps, kwargs)
        _validate_schedule(replay_every, forward_steps, max_steps)
        _validate_on_nonfinite(on_nonfinite)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        # The rate of the map being applied: a map's rate is frozen when its
        # batch arrives, not read from the schedule when it is replayed.
        self._map_learning_rate = None
        self.map_optimizer = _MapSGD(
            learning_rate=self._frozen_learning_rate,
            name=f"{self.name}_map",
            **self.__dict__.pop("_settings_before_map_optimizer"),
        )
        self.window = None if window is None else int(window)
        self.max_steps = None if max_steps is None else int(max_steps)
        self.on_nonfinite = on_nonfinite
        # Execution settings passed here in their old spelling, for compile().
        self.execution_settings = execution.from_optimizer(
            name, xla_unit=xla_unit, index_buffering=index_buffering
        )
        self.replay_every = int(replay_every)
        self.forward_steps = int(forward_steps)
        # The model's non-trainable state that belongs to S (BatchNorm
        # statistics, ...), given by its trainer (`track_model_state`).
        self._model_state = _Untracked()
        # The run this optimizer trains (`keras_bsgd.run.Run`: the ring
        # buffer, its counters, the data store), made by the trainer at the
        # first fit(); a new optimizer starts a new run.
        self.run_state = None
        # Loaded state waiting for build(): values, and the saved variable count.
        self._pending_state = None
        self._expected_variables = None
        # What an unbuilt BackwardSGD saves: its counter and learning rate,
        # then the map optimizer's counter.
        self._unbuilt_variables = (len(super().variables), len(self.map_optimizer.variables))

    def _frozen_learning_rate(self):
        if self._map_learning_rate is None:
            raise TypeError(
                f"The map optimizer of '{self.name}' has no learning rate of "
                "its own outside a map: each map runs at the rate frozen when "
                "its batch arrived. Read `optimizer.learning_rate` (the rate "
                "of the next batch) instead; maps are applied by "
                f"keras_bsgd's trainer ({WRAP_HINT}) Received: a read of "
                "`map_optimizer.learning_rate` outside "
                "`BackwardSGD.applying_map()`"
            )
        return self._map_learning_rate

    @property
    def variables(self):
        """The state variables, then the run's that Keras must carry (JAX's ring; none on TensorFlow)."""
        run = getattr(self, "run_state", None)
        return self.state_variables + (list(run.variables) if run is not None else [])

    @property
    def state_variables(self):
        """What this optimizer saves, by position: its own variables (iteration counter,
        learning rate, EMA, anchor), then the map optimizer's (counter, momentum slots)."""
        inner = getattr(self, "map_optimizer", None)
        return super().variables + (inner.variables if inner is not None else [])

    def save_own_variables(self, store):
        for i, variable in enumerate(self.state_variables):
            store[str(i)] = variable.numpy()

    @property
    def momentums(self):
        """The momentum slots of the live state (the map optimizer's); empty without momentum."""
        return self.map_optimizer.momentums

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        # The map optimizer applies the weight decay.
        super().exclude_from_weight_decay(var_list=var_list, var_names=var_names)
        self.map_optimizer.exclude_from_weight_decay(
            var_list=var_list, var_names=var_names
        )

    def build(self, var_list):
        """Creates the momentum slots and the anchor state, in a fixed order.

        Args:
            var_list: The model's trainable variables.
        """
        if self.built:
            return
        super().build(var_list)
        # Momentum slots exist only if momentum is set, as it is now.
        inner = self.map_optimizer
        with keras.name_scope(inner.name, caller=inner):
            inner.build(var_list)
        # Anchor: the state S (weights, then momentum) that every step restarts
        # from. Saved with the optimizer, so its order here is the file layout.
        self.anchor_weights = [
            self.add_variable_from_reference(v, "anchor") for v in var_list
        ]
        self.anchor_momentums = [
            self.add_variable_from_reference(v, "anchor_momentum")
            for v in var_list
        ] if self.momentum else []
        self.anchor_model_state = self._anchors_of(self._model_state.variables)
        if self._pending_state is not None:
            values, self._pending_state = self._pending_state, None
            self._assign_state(values)
        if self._expected_variables is not None:
            count, self._expected_variables = self._expected_variables, None
            self._check_layout(count)

    def track_model_state(self, variables):
        """Makes the model's non-trainable state part of the state every step restarts from.

        Keras builds an optimizer from the trainable variables alone, and
        in places a trainer does not call (the first `fit()`'s build, a
        user's `optimizer.build()` before `load_weights`), so the trainer
        hands the rest of the model's state over here whenever it has it.
        Before `build()` this sizes the anchor; an optimizer built without
        it gets its anchor now, in the same place of its variables (and of
        a saved file) as `build()` would have put it.

        Args:
            variables: The model's non-trainable variables that belong to
                the training state (BatchNorm statistics, not random
                layers' seeds), in a fixed order.

        Raises:
            ValueError: if the anchor already holds another number of
                variables.
        """
        variables = list(variables)
        self._model_state.variables = variables
        if not self.built:
            return
        if variables and not self.anchor_model_state:
            self.anchor_model_state = self._anchors_of(variables)
        self._check_model_state(variables)

    def _anchors_of(self, model_state):
        return [self.add_variable_from_reference(v, "anchor_state") for v in model_state]

    def _check_model_state(self, model_state):
        if len(model_state) != len(self.anchor_model_state):
            raise ValueError(
                "The model's non-trainable state changed after the optimizer "
                f"was built: {len(self.anchor_model_state)} variables then, "
                f"{len(model_state)} now. Compile the model again with a new "
                f"BackwardSGD. Received: {len(model_state)} state variables"
            )

    def _live_and_anchor(self, trainable_variables, model_state):
        self._check_model_state(model_state)
        live = list(trainable_variables) + list(self.momentums)
        anchor = self.anchor_weights + self.anchor_momentums
        return live + list(model_state), anchor + self.anchor_model_state

    def save_anchor(self, trainable_variables, model_state=(), when=None):
        """Copies the live training state into the anchor.

        Args:
            trainable_variables: The variables the optimizer was built with.
            model_state: The model's non-trainable state variables, in the
                order `track_model_state` was given them.
            when: Optional boolean tensor: copy only where it is true (a
                step decides without a branch).
        """
        for live, anchor in zip(*self._live_and_anchor(trainable_variables, model_state)):
            anchor.assign(live if when is None else keras.ops.where(when, live, anchor))

    def restore_anchor(
        self, trainable_variables, model_state=(), when=None, model_state_otherwise=None
    ):
        """Copies the anchor into the live training state (see `save_anchor`).

        Args:
            trainable_variables: As for `save_anchor`.
            model_state: As for `save_anchor`.
            when: Optional boolean tensor: where it is false, the weights and
                momentum keep their live values and `model_state` gets
                `model_state_otherwise`.
            model_state_otherwise: Values for `model_state` where `when` is
                false (a snapshot taken before a logging pass moved them).
        """
        live, anchor = self._live_and_anchor(trainable_variables, model_state)
        if when is None:
            for variable, value in zip(live, anchor):
                variable.assign(value)
            return
        keep = live[: len(live) - len(model_state)] + list(model_state_otherwise)
        for variable, value, other in zip(live, anchor, keep):
            variable.assign(keras.ops.where(when, value, other))

    @contextlib.contextmanager
    def applying_map(self, learning_rate):
        """Freezes the map optimizer's learning rate while one map `T_i` is applied.

        Args:
            learning_rate: Scalar tensor, the rate frozen when batch `i` arrived.

        Yields:
            The map optimizer, configured with this optimizer's settings:
            one `apply()` of it is the map.
        """
        inner = self.map_optimizer
        self._map_learning_rate = learning_rate
        try:
            yield inner
        finally:
            self._map_learning_rate = None

    @property
    def window_capacity(self):
        """The batches windowed mode keeps: `window + replay_every - 1`, or None (exact mode).

        A replay every `E` steps advances the anchor by up to `E` maps at
        once, read from the buffer before the new batch overwrites the
        oldest slot.
        """
        if self.window is None:
            return None
        return self.window + self.replay_every - 1

    @property
    def learning_rate(self):
        """The learning rate the next batch is frozen with (a schedule's at `iterations`)."""
        return _KERAS_LEARNING_RATE.fget(self)

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        # Construction refuses a negative rate; a rate set later
        # (`LearningRateScheduler`, `ReduceLROnPlateau`, user code) is
        # refused here, before it is set. Schedules and callables are
        # evaluated by `check_learning_rate`.
        rate = _concrete_rate(learning_rate)
        if rate is not None and not _valid_rate(rate):
            raise ValueError(_rate_message(repr(learning_rate), self._next_step(), "set"))
        _KERAS_LEARNING_RATE.fset(self, learning_rate)

    def check_learning_rate(self):
        """Raises `ValueError` if the next batch would be frozen with a rate that is not valid.

        A map's learning rate is frozen into the buffer with its batch and
        replayed at every later step, so a negative or non-finite rate
        would corrupt every backward iterate after it. Construction and the
        `learning_rate` setter refuse such a value; this checks what
        neither sees, on the host: a value assigned to the rate's variable,
        or what a schedule or callable returns at the next step.

        Raises:
            ValueError: naming the step and the rate.

        Example:

        >>> import keras_bsgd
        >>> optimizer = keras_bsgd.BackwardSGD(0.1, window=4)
        >>> _ = optimizer.learning_rate.assign(-0.1)  # the setter is not called
        >>> optimizer.check_learning_rate()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: The learning rate of a backward-SGD map must be ... Received: learning_rate=-0.1 for step 1
        """
        rate = float(keras.ops.convert_to_numpy(self.current_learning_rate()))
        if not _valid_rate(rate):
            raise ValueError(
                _rate_message(
                    f"{rate:.7g}",
                    self._next_step(),
                    "assigned to the optimizer's learning-rate variable, or "
                    "returned by its schedule or callable,",
                )
            )

    def _next_step(self):
        """The step whose batch a rate set now is frozen with (int), or None inside a trace."""
        try:
            return int(keras.ops.convert_to_numpy(self.iterations)) + 1
        except Exception:  # a symbolic counter: there is no step to name
            return None

    def current_learning_rate(self):
        """The learning rate a batch arriving now is frozen with.

        Returns:
            A scalar float32 tensor: the schedule (or callable, or value)
            evaluated at `iterations`, i.e. before the current step is counted.
        """
        return keras.ops.cast(self.learning_rate, "float32")

    def stateless_apply_map(self, map_variables, grads, trainable_variables, learning_rate):
        """Stateless `T_i`: one step of the map optimizer at the map's frozen learning rate.

        Keras' `stateless_apply` of the map optimizer, so weight decay,
        clipping, `loss_scale_factor`, momentum and Nesterov act as in Keras
        `SGD`. This optimizer's `iterations` and EMA are untouched.

        Args:
            map_variables: Values of `map_optimizer.variables`.
            grads: Gradients, one per trainable variable.
            trainable_variables: Values of the variables the optimizer was
                built with.
            learning_rate: Scalar tensor, the rate frozen for this map.

        Returns:
            `(trainable_variables, map_variables)`, updated.
        """
        with self.applying_map(learning_rate) as inner:
            return inner.stateless_apply(map_variables, grads, trainable_variables)

    def apply(self, grads, trainable_variables=None):
        if not list(grads):
            # Keras' own no-op: Keras' train_step applies the empty gradients
            # of a model without trainable weights, which keras_bsgd trains
            # with Keras' step.
            return
        # Reached only from a trainer that does not replay (e.g. a plain
        # keras.Model's train_step): training on would silently be forward SGD.
        raise TypeError(
            f"{WRAP_HINT} A custom `train_step` cannot replace keras_bsgd's "
            "either: put a custom loss in `compute_loss` instead. Received: a "
            "call to `BackwardSGD.apply()`, which means the model's "
            "train_step is not keras_bsgd's."
        )

    def load_own_variables(self, store):
        # Keras only warns and skips on a layout mismatch; for backward-SGD a
        # silently fresh anchor would restart the run from other weights.
        values = [np.asarray(store[str(i)]) for i in range(len(store.keys()))]
        if not self.built:
            # Restored by build(), once the variables exist (load_weights right
            # after compile(), unpickling).
            if len(values) != sum(self._unbuilt_variables):
                self._check_layout_before_build(len(values))
            self._pending_state = values
            return
        self._assign_state(values)

    def _assign_state(self, values):
        own, inner = self._unbuilt_variables
        if len(values) == own + inner < len(self.state_variables):
            # Saved compiled but never trained: only the counters and the
            # learning rate existed. The rest is built fresh, as for a new run
            # (the first step sets the anchor from the model).
            pairs = list(zip(super().variables, values[:own]))
            pairs += zip(self.map_optimizer.variables, values[own:])
        else:
            self._check_layout(len(values))
            pairs = zip(self.state_variables, values)
        for variable, value in pairs:
            variable.assign(value)

    def expect_variables(self, count):
        """Checks that state saved from an optimizer with `count` variables fits this one.

        `tf.train.Checkpoint` restores optimizer variables by position and
        leaves unmatched ones as they are; another count means another
        layout (momentum or not, another model), which would resume from a
        mix of two states.

        Args:
            count: The number of variables of the saved optimizer.

        Raises:
            ValueError: now if the optimizer is built or a load knows what
                it will be built with (`all_or_nothing`), else at `build()`.
        """
        if self.built:
            self._check_layout(count)
        else:
            self._check_layout_before_build(count)
            self._expected_variables = int(count)

    def _check_layout_before_build(self, count):
        # Inside `all_or_nothing` the model's trainable variables are known,
        # so a file of another layout is refused by the load, not by the
        # first fit() after it.
        load = _LOAD.get()
        if load is not None and load[1] is self and load[2] is not None:
            self._check_layout(count, self._count_when_built(load[2]))

    def _count_when_built(self, var_list):
        """The number of `state_variables` that `build(var_list)` will create.

        Counted on a twin with the settings that shape the layout (momentum,
        use_ema, a learning rate that is a variable or not) rather than
        predicted: Keras' EMA adds variables of its own.
        """
        rate = self._learning_rate
        twin = BackwardSGD(
            learning_rate=0.0 if isinstance(rate, keras.Variable) else rate,
            momentum=self.momentum,
            use_ema=self.use_ema,
            name=f"{self.name}_layout",
        )
        twin.track_model_state(self._model_state.variables)
        twin.build(var_list)
        return len(twin.state_variables)

    def _check_layout(self, count, expected=None):
        expected = len(self.state_variables) if expected is None else expected
        if count != expected:
            raise ValueError(
                f"Cannot load the state of optimizer '{self.name}': the file "
                f"holds {count} optimizer variables and this "
                f"BackwardSGD has {expected} (iterations, learning "
                "rate, EMA, the anchor of weights, momentum and model state, "
                "and the map optimizer's counter and momentum slots). Load "
                "into a model with the same architecture compiled with the "
                "same momentum and use_ema settings; to start a new run from "
                "the weights of a file saved with another optimizer (Keras "
                "SGD, say), load them before compile() (or with "
                "`keras.models.load_model(path, compile=False)`) and compile "
                f"a new BackwardSGD. Received: {count} variables"
            )

    def finalize_variable_values(self, var_list):
        super().finalize_variable_values(var_list)
        if self.use_ema and self.run_state is not None:
            # Keras puts the averages in the model at fit()'s end: the run
            # takes them for weights it left, not weights set from outside.
            self.run_state.record_left([*var_list, *self._model_state.variables])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "nesterov": self.nesterov,
                "window": self.window,
                "max_steps": self.max_steps,
                "on_nonfinite": self.on_nonfinite,
                **self.execution_settings,
                "replay_every": self.replay_every,
                "forward_steps": self.forward_steps,
            }
        )
        return config


class _Untracked:
    """Variables an optimizer refers to but does not own (Keras tracks a list attribute's)."""

    variables = ()


class _MapSGD(keras.optimizers.SGD):
    """The Keras SGD a `BackwardSGD` applies its maps with.

    Its variables are saved and loaded by position as part of the
    `BackwardSGD`'s `variables` (which checks their layout); Keras' saving
    would also save them on their own, and on loading warn about, and skip,
    a compiled-but-untrained file's single counter.
    """

    def save_own_variables(self, store):
        pass

    def load_own_variables(self, store):
        pass


def _validate_on_nonfinite(on_nonfinite):
    if on_nonfinite not in ("skip", "raise"):
        raise ValueError(
            "`on_nonfinite` must be 'skip' (drop a batch whose loss or "
            "values are NaN/Inf, leaving the state unchanged) or 'raise'. "
            f"Received: on_nonfinite={on_nonfinite!r}"
        )


def _validate_schedule(replay_every, forward_steps, max_steps):
    if not _is_int(replay_every) or replay_every < 1:
        raise ValueError(
            "`replay_every` must be a positive integer: replay (compute the "
            "backward iterate) every that many steps, and at every epoch's "
            "and fit()'s last step; 1 replays at every step. Received: "
            f"replay_every={replay_every!r}"
        )
    if not _is_int(forward_steps) or forward_steps < 0:
        raise ValueError(
            "`forward_steps` must be a non-negative integer: the number of "
            "plain forward-SGD steps before the backward phase starts (0: "
            f"backward from the first step). Received: forward_steps={forward_steps!r}"
        )
    if max_steps is not None and forward_steps >= max_steps:
        raise ValueError(
            "`forward_steps` must be smaller than `max_steps`: exact mode "
            "buffers the max_steps - forward_steps batches of the backward "
            "phase, and this leaves none. Raise max_steps or lower "
            f"forward_steps. Received: forward_steps={forward_steps!r}, "
            f"max_steps={max_steps!r}"
        )


def _validate(learning_rate, momentum, window, max_steps, kwargs):
    if window is not None and (not _is_int(window) or window < 1):
        raise ValueError(
            "`window` must be a positive integer (windowed backward-SGD) or "
            "None (exact backward-SGD). "
            f"Received: window={window!r}"
        )
    if max_steps is not None and (not _is_int(max_steps) or max_steps < 1):
        raise ValueError(
            "`max_steps` must be a positive integer: the buffer capacity of "
            f"exact backward-SGD. Received: max_steps={max_steps!r}"
        )
    if window is not None and max_steps is not None:
        raise ValueError(
            "`max_steps` sets the buffer capacity of exact mode (window=None); "
            "with a window the buffer always holds `window` batches. Pass "
            "one of them: `window=w` for windowed backward-SGD, or "
            "`max_steps=n` for exact backward-SGD over at most n steps. "
            f"Received: window={window!r}, max_steps={max_steps!r}"
        )
    if isinstance(learning_rate, bool) or (
        isinstance(learning_rate, numbers.Real) and not _valid_rate(learning_rate)
    ):
        raise ValueError(
            "`learning_rate` must be a finite float >= 0, a "
            "LearningRateSchedule or a callable. "
            f"Received: learning_rate={learning_rate!r}"
        )
    if (
        not isinstance(momentum, numbers.Real)
        or isinstance(momentum, bool)
        or not 0 <= momentum < 1
    ):
        raise ValueError(
            "`momentum` must be a float in [0, 1). "
            f"Received: momentum={momentum!r}"
        )
    if kwargs.get("ema_overwrite_frequency"):
        raise ValueError(
            "BackwardSGD does not support `ema_overwrite_frequency`: every step "
            "recomputes the weights from the anchor, so an overwrite would be "
            "discarded at the next step. The EMA of the output iterates is "
            "copied into the model at the end of fit() (use_ema=True). "
            "Received: ema_overwrite_frequency="
            f"{kwargs['ema_overwrite_frequency']!r}"
        )
    if kwargs.get("gradient_accumulation_steps"):
        raise ValueError(
            "BackwardSGD does not support `gradient_accumulation_steps`: every "
            "batch is its own update map. Use a larger batch instead. "
            "Received: gradient_accumulation_steps="
            f"{kwargs['gradient_accumulation_steps']!r}"
        )


def _valid_rate(rate):
    return math.isfinite(rate) and rate >= 0


def _concrete_rate(learning_rate):
    """A learning rate being set as a float, or None for a schedule, a callable or a traced value."""
    if isinstance(learning_rate, bool):
        return math.nan  # Keras would set 1.0 or 0.0: refused, as at construction
    if isinstance(learning_rate, numbers.Real):
        return float(learning_rate)
    if callable(learning_rate):
        return None
    try:
        return float(keras.ops.convert_to_numpy(learning_rate))
    except Exception:  # a symbolic tensor inside a trace
        return None


def _rate_message(rate, step, how):
    at = "" if step is None else f" for step {step}"
    return (
        "The learning rate of a backward-SGD map must be a finite number >= 0: "
        "each batch's rate is frozen with it in the replay buffer and replayed "
        "at every later step, so a negative or non-finite one would corrupt "
        f"every backward iterate after it. This rate was {how} after "
        "construction (which refuses it too); nothing was trained with it. "
        "Set a rate >= 0, or fix the schedule or callback that computed it. "
        f"Received: learning_rate={rate}{at}"
    )


def when_loaded(write):
    """Runs `write()` now, or at the end of the `all_or_nothing()` load around it.

    The training state outside Keras variables (the replay buffer, the run)
    is written through this, so that a load refused after its checks have
    passed (by a later object of the file) has written none of it.

    Args:
        write: A function of no arguments that writes loaded state.
    """
    load = _LOAD.get()
    if load is None:
        write()
    else:
        load[0].append(write)


@contextlib.contextmanager
def all_or_nothing(variables, optimizer=None, trainable_variables=None):
    """A load that changes everything or nothing: on an error, the state before it.

    Keras loads a file object by object (layers, optimizer, the model's own
    entry), and when one object refuses its part it loads every other one
    before it raises. Inside this context the values of `variables` are
    kept, the writes passed to `when_loaded` wait until the context ends
    without an error, and an error puts `variables` and `optimizer`'s loaded
    state awaiting `build()` back as they were, bit for bit, before it
    propagates.

    Args:
        variables: Every variable the load may write: the model's, its
            metrics' and its optimizer's (not the replay buffer's, which is
            written through `when_loaded`).
        optimizer: The model's `BackwardSGD`, or None.
        trainable_variables: The model's trainable variables, which an
            unbuilt `optimizer` will be built with: a file of another
            layout is then refused by the load, not at `build()`.

    Example:

    >>> import keras
    >>> v = keras.Variable(1.0)
    >>> try:
    ...     with all_or_nothing([v]):
    ...         _ = v.assign(2.0)
    ...         when_loaded(lambda: v.assign(3.0))
    ...         raise ValueError("refused")
    ... except ValueError:
    ...     pass
    >>> float(v.numpy())
    1.0
    """
    if _LOAD.get() is not None:
        yield  # inside a load already: that one's end decides
        return
    values = [np.array(keras.ops.convert_to_numpy(v)) for v in variables]
    host = None if optimizer is None else (optimizer._pending_state, optimizer._expected_variables)
    writes = []
    token = _LOAD.set((writes, optimizer, trainable_variables))
    try:
        yield
    except BaseException as error:
        _LOAD.reset(token)
        for variable, value in zip(variables, values):
            variable.assign(value)
        if host is not None:
            optimizer._pending_state, optimizer._expected_variables = host
        error.add_note(
            "keras_bsgd: nothing was loaded; the model's weights, its "
            "optimizer's variables and the backward-SGD run are as they were "
            "before the load."
        )
        raise
    _LOAD.reset(token)
    for write in writes:
        write()


def backward_sgd_of(optimizer):
    """The `BackwardSGD` that `optimizer` is or (`mixed_float16`) wraps, or None."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer if isinstance(optimizer, BackwardSGD) else None
