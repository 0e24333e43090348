"""fit() input Keras refuses is refused on the index-buffering path too, before any state changes.

Index buffering hands Keras example indices instead of the arrays, so Keras'
own checks of the arrays (their cardinalities, sample weights against `y`,
class weights) would never run, and the step would gather past the end of
the shorter arrays. Both backends feed indices through `keras_bsgd.index_feed`.
"""

import keras
import numpy as np
import pytest

import keras_bsgd

N, BATCH = 16, 4
KINDS = (
    "y_length",
    "sample_weight_length",
    "second_input_length",
    "sample_weight_structure",
    "sample_weight_not_per_sample",
    "class_weight_and_sample_weight",
    "class_weight_with_two_outputs",
    "length_after_validation_split",
    "validation_data_length",
)


def make_model(model_class, two_outputs, seed=0):
    keras.utils.set_random_seed(seed)
    a, b = keras.Input((4,), name="a"), keras.Input((2,), name="b")
    hidden = keras.layers.Dense(5, activation="tanh")(keras.layers.Concatenate()([a, b]))
    outputs = [keras.layers.Dense(3)(hidden)]
    if two_outputs:
        outputs.append(keras.layers.Dense(1)(hidden))
    return model_class([a, b], outputs if two_outputs else outputs[0])


def compile_model(model, optimizer):
    model.compile(
        optimizer=optimizer,
        loss=["sparse_categorical_crossentropy", "mse"][: len(model.outputs)]
        if len(model.outputs) > 1
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def bsgd_model(two_outputs, seed=0):
    model = make_model(keras_bsgd.Model, two_outputs, seed)
    optimizer = keras_bsgd.BackwardSGD(0.05, momentum=0.5, window=None, max_steps=64)
    return compile_model(model, optimizer)


def good_data(rng, two_outputs, n=N):
    x = [rng.normal(size=(n, 4)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")]
    y = rng.integers(0, 3, n)
    if two_outputs:
        y = [y, rng.normal(size=(n, 1)).astype("float32")]
    return x, y


def bad_case(rng, kind):
    """`(two_outputs, fit keyword arguments)` of one refused fit() of `kind`."""
    two_outputs = kind in (
        "sample_weight_structure", "sample_weight_not_per_sample", "class_weight_with_two_outputs"
    )
    x, y = good_data(rng, two_outputs)
    other = int(rng.choice([8, 12, 20, 24]))  # another length, a multiple of BATCH
    kwargs = dict(x=x, y=y)
    if kind == "y_length":
        kwargs["y"] = rng.integers(0, 3, other)
    elif kind == "sample_weight_length":
        kwargs["sample_weight"] = rng.random(other).astype("float32")
    elif kind == "second_input_length":
        kwargs["x"] = [x[0], rng.normal(size=(other, 2)).astype("float32")]
    elif kind == "sample_weight_structure":
        kwargs["sample_weight"] = [rng.random(N).astype("float32")]
    elif kind == "sample_weight_not_per_sample":
        kwargs["sample_weight"] = rng.random((N, 3)).astype("float32")
    elif kind == "class_weight_and_sample_weight":
        kwargs.update(sample_weight=rng.random(N).astype("float32"), class_weight={0: 1.0, 1: 2.0, 2: 0.5})
    elif kind == "class_weight_with_two_outputs":
        kwargs["class_weight"] = {0: 1.0, 1: 2.0, 2: 0.5}
    elif kind == "length_after_validation_split":
        # 20 inputs, 16 labels: Keras splits every array at the first one's
        # split point (16), trains on 16 and 16, and refuses the validation
        # part (4 against 0) when it first evaluates; here before any step.
        kwargs.update(x=[np.concatenate([x[0], x[0][:4]]), np.concatenate([x[1], x[1][:4]])],
                      validation_split=0.2)
    elif kind == "validation_data_length":
        vx, vy = good_data(rng, two_outputs, n=8)
        kwargs["validation_data"] = (vx, vy[: int(rng.choice([4, 6]))])
    return two_outputs, kwargs


def keras_error(two_outputs, kwargs):
    """The error Keras' own fit() raises for `kwargs` (a plain Keras model and SGD)."""
    model = compile_model(make_model(keras.Model, two_outputs), keras.optimizers.SGD(0.05))
    with pytest.raises(ValueError) as error:
        model.fit(**kwargs, batch_size=BATCH, epochs=1, verbose=0)
    return str(error.value)


def state(model):
    """Every array of the training state, and what the run's data store holds."""
    variables = {id(v): v for v in model.weights + model.optimizer.variables}
    if model.replay_buffer is not None:
        variables.update((id(v), v) for v in model.replay_buffer.variables)
    arrays = [np.array(keras.ops.convert_to_numpy(v)) for v in variables.values()]
    store = model.data_store
    return arrays, None if store is None else store.size


def assert_same_state(a, b):
    assert a[1] == b[1]
    assert len(a[0]) == len(b[0])
    for x, y in zip(a[0], b[0]):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("seed", range(4))
def test_mismatched_arrays_are_refused_as_keras_refuses_them_and_change_nothing(seed):
    """Property: over random mismatches of each kind, Keras' error, and the run as it was."""
    rng = np.random.default_rng(seed)
    models = {}
    for kind in rng.permutation(KINDS):
        two_outputs, kwargs = bad_case(rng, kind)
        if two_outputs not in models:
            model = bsgd_model(two_outputs)
            x, y = good_data(np.random.default_rng(100), two_outputs)
            model.fit(x, y, batch_size=BATCH, verbose=0)
            assert model.data_store is not None  # the run buffers indices
            models[two_outputs] = model
        model = models[two_outputs]
        before = state(model)
        expected = keras_error(two_outputs, kwargs)
        with pytest.raises(ValueError) as error:
            model.fit(**kwargs, batch_size=BATCH, epochs=1, verbose=0)
        assert str(error.value) == expected, kind
        assert_same_state(state(model), before)


def test_x_and_y_of_different_lengths_in_exact_mode_are_refused_before_any_step():
    """Issue #21: 16 inputs and 8 labels trained and went on to `inf`."""
    model = bsgd_model(two_outputs=False)
    x, y = good_data(np.random.default_rng(0), two_outputs=False)
    model.fit(x, y, batch_size=BATCH, verbose=0)
    before = state(model)
    with pytest.raises(ValueError, match=r"Data cardinality is ambiguous.*'x' sizes: 16, 16\n'y' sizes: 8"):
        model.fit(x, y[:8], batch_size=BATCH, verbose=0)
    assert_same_state(state(model), before)
    # The run goes on as if the refused fit() had not been called.
    model.fit(x, y, batch_size=BATCH, verbose=0, shuffle=False)
    untouched = bsgd_model(two_outputs=False)
    untouched.fit(x, y, batch_size=BATCH, verbose=0)
    untouched.fit(x, y, batch_size=BATCH, verbose=0, shuffle=False)
    assert_same_state(state(model), state(untouched))
    assert all(np.isfinite(w).all() for w in model.get_weights())


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return N // BATCH

    def __getitem__(self, i):
        part = slice(i * BATCH, (i + 1) * BATCH)
        return tuple(a[part] for a in self.x), self.y[part]


def test_a_refused_first_fit_leaves_a_new_run_free_to_take_any_input():
    x, y = good_data(np.random.default_rng(0), two_outputs=False)
    model = bsgd_model(two_outputs=False)
    with pytest.raises(ValueError, match="Data cardinality is ambiguous"):
        model.fit(x, y[:8], batch_size=BATCH, verbose=0)
    model.fit(Batches(x, y), verbose=0, shuffle=False)  # not an index-buffered run
    assert model.data_store is None
    untouched = bsgd_model(two_outputs=False)
    untouched.fit(Batches(x, y), verbose=0, shuffle=False)
    assert_same_state(state(model), state(untouched))


# Learning rates set after construction (issue #21 item 6).


def windowed_model(seed=0, learning_rate=0.05):
    model = make_model(keras_bsgd.Model, two_outputs=False, seed=seed)
    return compile_model(model, keras_bsgd.BackwardSGD(learning_rate, momentum=0.5, window=2))


def windowed_fit(model, epochs=1, **kwargs):
    x, y = good_data(np.random.default_rng(7), two_outputs=False)
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, **kwargs)


@pytest.mark.parametrize("rate", [-0.05, float("nan"), float("inf"), np.float32(-1.0), True])
def test_a_learning_rate_set_after_construction_is_refused_naming_the_step(rate):
    """Issue #21: `optimizer.learning_rate = -0.05` trained silently (construction refuses it)."""
    model = windowed_model()
    windowed_fit(model)  # 4 steps
    before = state(model)
    with pytest.raises(ValueError, match=r"must be a finite number >= 0.*for step 5$") as error:
        model.optimizer.learning_rate = rate
    assert f"Received: learning_rate={rate!r}" in str(error.value)
    assert_same_state(state(model), before)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == np.float32(0.05)
    model.optimizer.learning_rate = 0.0  # still settable to a valid rate


@pytest.mark.parametrize("rate", [-0.05, float("nan")])
def test_construction_refuses_the_same_rates(rate):
    with pytest.raises(ValueError, match=f"Received: learning_rate={rate!r}"):
        keras_bsgd.BackwardSGD(rate, window=2)


def test_a_callback_setting_a_negative_rate_stops_fit_before_the_epoch_trains_with_it():
    model, untouched = windowed_model(), windowed_model()
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, rate: 0.05 - 0.1 * epoch)
    with pytest.raises(ValueError, match="Received: learning_rate=-0.05.* for step 5"):
        windowed_fit(model, epochs=3, callbacks=[schedule])
    windowed_fit(untouched)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 4
    assert_same_state(state(model), state(untouched))


def test_check_learning_rate_sees_assigned_values_and_schedules():
    optimizer = keras_bsgd.BackwardSGD(0.05, window=2)
    optimizer.check_learning_rate()
    optimizer.learning_rate.assign(-0.05)  # not through the setter
    with pytest.raises(ValueError, match=r"Received: learning_rate=-0.05 for step 1$"):
        optimizer.check_learning_rate()
    decay = keras.optimizers.schedules.PolynomialDecay(0.1, 10, end_learning_rate=-0.1)
    optimizer = keras_bsgd.BackwardSGD(decay, window=2)
    optimizer.check_learning_rate()  # 0.1 at step 1
    optimizer.iterations.assign(6)
    with pytest.raises(ValueError, match=r"Received: learning_rate=-0.02 for step 7$"):
        optimizer.check_learning_rate()


def test_a_schedule_turning_negative_mid_fit_is_refused_at_that_step_with_the_state_kept():
    # 0.1 - 0.02 * iterations: 0.0 for step 6, -0.02 for step 7. The step
    # freezes the rate, so the check is the step's own (the host checks only
    # the first step of a fit()).
    decay = keras.optimizers.schedules.PolynomialDecay(0.1, 10, end_learning_rate=-0.1)
    model, untouched = windowed_model(learning_rate=decay), windowed_model(learning_rate=decay)
    with pytest.raises(ValueError, match=r"negative or not finite.*Received: an invalid "
                                         r"learning rate at step 7$"):
        windowed_fit(model, epochs=2)  # 8 steps
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 6
    windowed_fit(untouched)  # steps 1-4, then 5-6 on the same batches
    x, y = good_data(np.random.default_rng(7), two_outputs=False)
    untouched.fit([a[: 2 * BATCH] for a in x], y[: 2 * BATCH], batch_size=BATCH, shuffle=False,
                  verbose=0)
    assert_same_state(training_state(model), training_state(untouched))
    assert model.replayed_step == untouched.replayed_step == 6
    # The refused step recomputed step 6's iterate from the anchor (window 2):
    # its two maps are counted, and so is the map optimizer's own counter.
    assert model.gradient_evaluations == untouched.gradient_evaluations + 2


def training_state(model):
    """Weights, model state and the optimizer's state (not the map optimizer's own counter)."""
    optimizer = model.optimizer
    kept = [v for v in optimizer.state_variables if v is not optimizer.map_optimizer.iterations]
    arrays = [np.array(keras.ops.convert_to_numpy(v)) for v in [*model.weights, *kept]]
    return arrays, None


def test_fit_refuses_a_rate_assigned_to_the_variable_before_any_step():
    model = windowed_model()
    windowed_fit(model)
    model.optimizer.learning_rate.assign(-0.05)
    before = state(model)
    with pytest.raises(ValueError, match="for step 5"):
        windowed_fit(model)
    assert_same_state(state(model), before)


# Cloning.


def sequential_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras_bsgd.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(3)]
    )


def trains_by_backward_sgd(model):
    x = np.random.default_rng(0).normal(size=(N, 6)).astype("float32")
    y = np.random.default_rng(1).integers(0, 3, N)
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    return model.gradient_evaluations == 1 + 2 + 3 + 3  # window 2: w + 1 once k > w


def compiled_for_clone(model):
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(0.05, window=2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


class Subclassed(keras_bsgd.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(5, activation="tanh")
        self.out = keras.layers.Dense(3)

    def call(self, inputs):
        return self.out(self.hidden(inputs))


def functional_model():
    inputs = keras.Input((6,))
    return keras_bsgd.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(5)(inputs)))


def subclassed_model():
    model = Subclassed()
    model(np.zeros((1, 6), "float32"))
    return model


def wrapped_model():
    return keras_bsgd.wrap(
        keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), keras.layers.Dense(3)])
    )


@pytest.mark.parametrize("make", [functional_model, subclassed_model, wrapped_model])
def test_clone_model_of_a_keras_bsgd_model_is_one_and_trains_by_backward_sgd(make):
    clone = keras.models.clone_model(compiled_for_clone(make()))
    assert isinstance(clone, keras_bsgd.Model)
    assert isinstance(clone.optimizer, keras_bsgd.BackwardSGD)
    assert trains_by_backward_sgd(clone)


def test_a_sequential_model_clones_with_from_config_and_trains_as_the_original():
    """Keras' clone_model makes a keras.Sequential of any Sequential (no hook for subclasses)."""
    model = compiled_for_clone(sequential_model())
    plain = keras.models.clone_model(model)
    assert type(plain) is keras.Sequential  # Keras' behaviour: if this changes, so can the docs
    with pytest.raises(TypeError, match=r"keras_bsgd\.Sequential\.from_config\(model\.get_config\(\)\)"):
        trains_by_backward_sgd(plain)
    clone = keras_bsgd.Sequential.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    clone.compile_from_config(model.get_compile_config())
    assert type(clone) is keras_bsgd.Sequential
    assert trains_by_backward_sgd(clone) and trains_by_backward_sgd(model)
    for a, b in zip(clone.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
