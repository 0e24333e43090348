"""Keras workflows that keep working, or fail loudly: custom steps, lazy builds, input types."""

import keras
import numpy as np
import pytest

import keras_bsgd
from tests import reference
from tests.trajectories import Batches
from tests.trajectories import StateRecorder
from tests.trajectories import make_stream
from tests.trajectories import max_relative_error

WINDOW = 3


def constant_dense(units, value, **kwargs):
    """A Dense layer that builds lazily, to known weights."""
    return keras.layers.Dense(
        units,
        kernel_initializer=keras.initializers.Constant(value[0].astype("float32")),
        bias_initializer=keras.initializers.Constant(value[1].astype("float32")),
        **kwargs,
    )


class LazyNet(keras_bsgd.Model):
    """A subclassed model whose layers build on the first call."""

    def __init__(self, params, **kwargs):
        super().__init__(**kwargs)
        self.hidden = constant_dense(5, params[:2], activation="tanh")
        self.out = constant_dense(2, params[2:])

    def call(self, x):
        return self.out(self.hidden(x))


def lazy_sequential(params):
    return keras_bsgd.Sequential(
        [constant_dense(5, params[:2], activation="tanh"), constant_dense(2, params[2:])]
    )


def expected_states(batches, params):
    return reference.backward_sgd(
        reference.initial_state(params, 0.0), batches, [0.1] * len(batches), window=WINDOW
    )


def assert_matches_reference(states, batches, params):
    expected = expected_states(batches, params)
    assert len(states) == len(expected)
    for s, e in zip(states, expected, strict=True):
        assert max_relative_error(s, e) <= 1e-5


def fit_recorded(model, data, mode, **fit_kwargs):
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=WINDOW), loss="mse", **mode)
    recorder = StateRecorder()
    model.fit(data, verbose=0, callbacks=[recorder], shuffle=False, **fit_kwargs)
    return recorder.states


def arrays(batches):
    xs = np.concatenate([b[0] for b in batches]).astype("float32")
    ys = np.concatenate([b[1] for b in batches]).astype("float32")
    return xs, ys


MODES = {"graph": dict(jit_compile=False), "xla": dict(jit_compile=True)}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("make", [LazyNet, lazy_sequential], ids=["subclass", "sequential"])
def test_lazily_built_models_train_as_built_ones(make, mode):
    batches, params = make_stream(seed=21, num_batches=6)
    xs, ys = arrays(batches)
    model = make(params)
    assert not model.built
    states = fit_recorded(model, xs, MODES[mode], y=ys, batch_size=4)
    assert_matches_reference(states, batches, params)


def generator(batches, extra=()):
    for x, y in [*batches, *extra]:
        yield x.astype("float32"), y.astype("float32")


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", ["generator", "py_dataset"])
def test_generators_and_py_datasets_train_with_the_first_batch_size(kind, mode):
    batches, params = make_stream(seed=22, num_batches=6)
    data = generator(batches) if kind == "generator" else Batches(list(generator(batches)))
    model = lazy_sequential(params)  # built from the first batch too
    states = fit_recorded(model, data, MODES[mode])
    assert_matches_reference(states, batches, params)
    assert model.replay_buffer.batch_size == 4


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", ["generator", "py_dataset"])
def test_a_shorter_batch_is_skipped_and_a_larger_one_refused_with_the_state_kept(kind, mode):
    batches, params = make_stream(seed=23, num_batches=4)
    partial = (batches[0][0][:2], batches[0][1][:2])
    stream = [*batches[:2], partial, *batches[2:]]
    data = generator(stream) if kind == "generator" else Batches(list(generator(stream)))
    model = lazy_sequential(params)
    recorder = StateRecorder()
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=WINDOW), loss="mse", **MODES[mode])
    with pytest.warns(UserWarning, match=r"skipped 1 partial batch\(es\) \(2 examples\)"):
        model.fit(data, verbose=0, callbacks=[recorder], shuffle=False)
    assert int(model.optimizer.iterations) == 4
    states = recorder.states
    assert max_relative_error(states[2], states[1]) == 0  # the skipped batch
    assert_matches_reference([*states[:2], *states[3:]], batches, params)

    larger = tuple(np.concatenate([a, a]) for a in batches[0])
    stream = [batches[0], larger]
    data = generator(stream) if kind == "generator" else Batches(list(generator(stream)))
    with pytest.raises(ValueError, match="holds batches of 4 examples.*a batch of 8 examples"):
        model.fit(data, verbose=0, callbacks=[recorder], shuffle=False)
    assert int(model.optimizer.iterations) == 5
    after_one = expected_states([*batches, batches[0]], params)[-1]
    final = {"params": [np.asarray(v.value) for v in model.trainable_variables], "momentum": []}
    assert max_relative_error(final, after_one) <= 1e-5


@pytest.mark.tensorflow
def test_dataset_whose_map_dropped_the_static_batch_size_trains():
    import tensorflow as tf

    # keras-io "text classification from scratch": vectorize in the tf.data
    # pipeline; TextVectorization's output has an unknown batch dimension.
    vectorize = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=4)
    vectorize.adapt(["a b c d", "e f g h"])
    texts = np.array(["a b", "c d e", "f g h", "a h"] * 4)
    labels = np.arange(16, dtype="float32").reshape(16, 1) / 16
    dataset = (
        tf.data.Dataset.from_tensor_slices((texts, labels))
        .batch(4, drop_remainder=True)
        .map(lambda x, y: (vectorize(x), y))
    )
    assert dataset.element_spec[0].shape[0] is None
    model = keras_bsgd.Sequential(
        [keras.layers.Embedding(20, 3), keras.layers.GlobalAveragePooling1D(),
         keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse",
                  jit_compile=True)
    model.fit(dataset, epochs=2, verbose=0)
    assert int(model.optimizer.iterations) == 8
    assert model.replay_buffer.batch_size == 4


@pytest.mark.tensorflow
def test_dataset_without_drop_remainder_trains_and_skips_its_partial_batch():
    import tensorflow as tf

    batches, params = make_stream(seed=24, num_batches=4)
    xs, ys = arrays(batches)
    dataset = tf.data.Dataset.from_tensor_slices((xs[:15], ys[:15])).batch(4)
    assert dataset.element_spec[0].shape[0] is None
    model = lazy_sequential(params)
    with pytest.warns(UserWarning, match=r"skipped 1 partial batch\(es\) \(3 examples\)"):
        states = fit_recorded(model, dataset, MODES["xla"])
    assert int(model.optimizer.iterations) == 3
    assert_matches_reference(states[:3], batches[:3], params)


class DoubledLoss:
    """The `Model.compute_loss` docstring's pattern: a custom loss and its own tracker.

    Twice the compiled loss: the trajectory is that of twice the learning rate.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = 2.0 * super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )
        self.loss_tracker.update_state(loss)
        return loss

    @property
    def metrics(self):
        return [self.loss_tracker]

    def reset_metrics(self):
        self.loss_tracker.reset_state()


class KerasFunctional(DoubledLoss, keras.Model):
    pass


class BsgdFunctional(DoubledLoss, keras_bsgd.Model):
    pass


class KerasSubclass(DoubledLoss, keras.Model):
    def __init__(self, params, **kwargs):
        super().__init__(**kwargs)
        self.hidden = constant_dense(5, params[:2], activation="tanh")
        self.out = constant_dense(2, params[2:])

    def call(self, x):
        return self.out(self.hidden(x))


class BsgdSubclass(DoubledLoss, LazyNet):
    pass


def functional_graph(params):
    inputs = keras.Input((3,))
    hidden = constant_dense(5, params[:2], activation="tanh")(inputs)
    return inputs, constant_dense(2, params[2:])(hidden)


def built_subclass(model):
    model(np.zeros((1, 3), "float32"))
    return model


@pytest.mark.parametrize(
    "make",
    [
        lambda p: keras_bsgd.wrap(KerasFunctional(*functional_graph(p))),
        lambda p: BsgdFunctional(*functional_graph(p)),
        lambda p: keras_bsgd.wrap(built_subclass(KerasSubclass(p))),
        lambda p: BsgdSubclass(p),
    ],
    ids=["wrap-functional", "functional-subclass", "wrap-subclass", "subclass"],
)
def test_compute_loss_overrides_define_every_map_and_the_logged_loss(make):
    batches, params = make_stream(seed=24, num_batches=6)
    xs, ys = arrays(batches)
    model = make(params)
    assert isinstance(model, keras_bsgd.Model)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.05, window=WINDOW), loss="mse",
                  jit_compile=True)
    recorder = StateRecorder()
    history = model.fit(xs, ys, batch_size=4, shuffle=False, verbose=0, callbacks=[recorder])
    # Twice the loss at learning rate 0.05 is the plain loss at 0.1.
    assert_matches_reference(recorder.states, batches, params)
    # The tracker saw each batch once, at the weights it arrived at: replays
    # updated no metric.
    before = [params] + [s["params"] for s in recorder.states[:-1]]
    logged = [2 * reference.mlp_loss_and_grads(p, x, y)[0] for p, (x, y) in zip(before, batches)]
    np.testing.assert_allclose(history.history["loss"][0], np.mean(logged), rtol=1e-5)
    assert list(history.history) == ["loss"]


class CustomTrainStep(keras.Model):
    # keras.io "Customizing what happens in fit()": the step computes its own loss.
    def train_step(self, data):
        raise AssertionError("never called")


class CustomTestStep(keras.Model):
    def test_step(self, data):
        return {"custom": 1.0}


def test_wrap_refuses_a_custom_train_or_test_step_and_says_what_to_do():
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2)(inputs)
    with pytest.raises(ValueError, match=r"defines the training step itself.*compute_loss.*"
                       r"Received: a model of class CustomTrainStep that overrides `train_step`"):
        keras_bsgd.wrap(CustomTrainStep(inputs, outputs))
    with pytest.raises(ValueError, match=r"derive the class from `keras_bsgd.Model`.*"
                       r"CustomTestStep that overrides `test_step`"):
        keras_bsgd.wrap(CustomTestStep(inputs, outputs))


def test_keras_bsgd_subclass_with_train_step_is_refused_and_test_step_is_honoured():
    class Stepping(keras_bsgd.Model):
        def train_step(self, data):
            raise AssertionError("never called")

    class Evaluating(keras_bsgd.Model):
        # Keras' step signature is the backend's: stateless on JAX.
        if keras.backend.backend() == "jax":
            def test_step(self, state, data):
                return {"custom": 1.0}, state
        else:
            def test_step(self, data):
                return {"custom": 1.0}

    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2)(inputs)
    model = Stepping(inputs, outputs)
    with pytest.raises(ValueError, match=r"Stepping that overrides `train_step`"):
        model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    assert not model.compiled
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")  # plain Keras: allowed
    model.optimizer = keras_bsgd.BackwardSGD(0.1, window=2)  # set after compile()
    with pytest.raises(ValueError, match=r"Stepping that overrides `train_step`"):
        model.fit(np.ones((8, 3), "float32"), np.ones((8, 2), "float32"), batch_size=4)

    model = Evaluating(inputs, outputs)
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    model.fit(np.ones((8, 3), "float32"), np.ones((8, 2), "float32"), batch_size=4, verbose=0)
    result = model.evaluate(np.ones((8, 3), "float32"), np.ones((8, 2), "float32"),
                            batch_size=4, verbose=0, return_dict=True)
    assert result == {"custom": 1.0}


@pytest.mark.tensorflow  # the JAX trainer does not save its run yet
def test_custom_loss_models_save_as_their_own_class_or_refuse(tmp_path):
    batches, params = make_stream(seed=25, num_batches=4)
    xs, ys = arrays(batches)
    model = BsgdFunctional(*functional_graph(params))
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.05, window=WINDOW), loss="mse")
    model.fit(xs[:8], ys[:8], batch_size=4, verbose=0)
    model.save(tmp_path / "custom.keras")
    loaded = keras.models.load_model(tmp_path / "custom.keras",
                                     custom_objects={"BsgdFunctional": BsgdFunctional})
    assert isinstance(loaded, BsgdFunctional) and isinstance(loaded, keras_bsgd.FunctionalModel)
    loaded.fit(xs[8:], ys[8:], batch_size=4, verbose=0)
    model.fit(xs[8:], ys[8:], batch_size=4, verbose=0)
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    wrapped = keras_bsgd.wrap(KerasFunctional(*functional_graph(params)))
    wrapped.compile(optimizer=keras_bsgd.BackwardSGD(0.05, window=WINDOW), loss="mse")
    with pytest.raises(ValueError, match=r"would train with another loss.*"
                       r"Received: a wrapped KerasFunctional"):
        wrapped.save(tmp_path / "wrapped.keras")
    wrapped.save_weights(tmp_path / "wrapped.weights.h5")  # weights only: fine


def test_train_step_override_that_calls_the_backward_step_is_kept():
    class Counting(keras_bsgd.Model):
        traces = 0

        def train_step(self, *state_and_data):  # (state, data) on JAX, (data) elsewhere
            Counting.traces += 1
            return super().train_step(*state_and_data)

    batches, params = make_stream(seed=26, num_batches=6)
    xs, ys = arrays(batches)
    inputs, outputs = functional_graph(params)
    states = fit_recorded(Counting(inputs, outputs), xs, MODES["graph"], y=ys, batch_size=4)
    assert_matches_reference(states, batches, params)
    assert Counting.traces >= 1


def small_data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, x.sum(1, keepdims=True)


def dense_net(model_class=keras_bsgd.Sequential):
    return model_class([keras.Input((3,)), keras.layers.Dense(1, kernel_initializer="ones")])


class LossWithoutTrainingArgument(keras_bsgd.Model):
    """Keras 3.0-3.2's `compute_loss` signature, which Keras still calls."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        return keras.ops.mean(keras.ops.square(y_pred - y))


def test_compute_loss_without_training_argument_is_called_as_keras_calls_it():
    x, y = small_data()
    inputs = keras.Input((3,))
    custom = LossWithoutTrainingArgument(
        inputs, keras.layers.Dense(1, kernel_initializer="ones")(inputs)
    )
    custom.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2))
    custom.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    plain = dense_net()
    plain.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    plain.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    for a, b in zip(custom.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_train_on_batch_runs_eagerly_as_compiled():
    x, y = small_data()
    weights = []
    for run_eagerly in (True, False):
        model = dense_net()
        model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse",
                      run_eagerly=run_eagerly)
        for i in range(0, 16, 4):
            model.train_on_batch(x[i : i + 4], y[i : i + 4])
        weights.append(model.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("index_buffering", [True, False])
def test_model_without_trainable_weights_trains_as_keras_trains_it(index_buffering):
    x, y = small_data(seed=1)
    results = []
    for optimizer in (
        keras_bsgd.BackwardSGD(0.1), keras.optimizers.SGD(0.1)
    ):
        model_class = keras_bsgd.Sequential if optimizer.name != "SGD" else keras.Sequential
        model = dense_net(model_class)
        model.layers[0].trainable = False
        normalize = keras.layers.BatchNormalization(center=False, scale=False)
        model = model_class([keras.Input((3,)), normalize, *model.layers])
        model.compile(optimizer=optimizer, loss="mse", metrics=["mae"],
                      **({} if model_class is keras.Sequential else {"index_buffering": index_buffering}))
        assert not model.trainable_variables
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        results.append((history.history, [np.asarray(w) for w in model.get_weights()]))
    (ours, our_weights), (keras_logs, keras_weights) = results
    assert ours.keys() == keras_logs.keys()
    for key in ours:
        np.testing.assert_allclose(ours[key], keras_logs[key], rtol=1e-6)
    for a, b in zip(our_weights, keras_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # BatchNorm statistics moved


def test_float64_train_on_batch_then_float32_fit_is_one_run():
    x, y = small_data(seed=2)
    model = dense_net()
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    model.train_on_batch(x[:4].astype("float64"), y[:4].astype("float64"))
    model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 5
    assert model.replayed_step == 5


def test_skipped_nonfinite_batches_are_reported_once_per_fit():
    x, y = small_data(seed=3)
    x[5, 0] = np.nan
    model = dense_net()
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    with pytest.warns(UserWarning, match=r"skipped 1 batch\(es\) in this fit\(\).*"
                      r"on_nonfinite='raise'"):
        history = model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and model.skipped_batches == 1
    assert set(history.history) == {"loss"}


def test_a_skipped_batch_logs_a_nan_loss_and_terminate_on_nan_stops_there():
    x, y = small_data(seed=3)
    x[5, 0] = np.nan  # the second batch
    model = dense_net()
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    losses = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(logs["loss"])
    )
    with pytest.warns(UserWarning, match=r"skipped 1 batch"):
        history = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0,
                            callbacks=[record, keras.callbacks.TerminateOnNaN()])
    assert len(losses) == 2 and np.isfinite(losses[0]) and np.isnan(losses[1])
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])
    assert int(model.optimizer.iterations) == 1 and model.skipped_batches == 1

    losses.clear()
    with pytest.warns(UserWarning, match=r"skipped 1 batch"):
        model.fit(x, y, batch_size=4, shuffle=False, verbose=0, callbacks=[record])
    assert np.isnan(losses[1]) and np.all(np.isfinite(np.delete(losses, 1)))
    assert int(model.optimizer.iterations) == 1 + len(x) // 4 - 1
