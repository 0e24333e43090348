"""The private Keras/TensorFlow names the TensorFlow backend relies on
(`keras_bsgd/backend/tensorflow/keras_private.py`, and the two methods its
trainer overrides).

Each test fails, naming the name, if Keras or TensorFlow changes it.
"""

import inspect

import keras
import numpy as np
import pytest

import keras_bsgd
from keras_bsgd.backend.tensorflow import keras_private as tf_private

pytestmark = pytest.mark.tensorflow


def test_maybe_symbolic_build_takes_an_iterator_or_a_batch():
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    parameters = inspect.signature(TensorFlowTrainer._maybe_symbolic_build).parameters
    assert list(parameters) == ["self", "iterator", "data_batch"]


def test_loss_tracker_is_the_logged_loss_mean():
    model = keras_bsgd.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    assert isinstance(tf_private.loss_tracker(model), keras.metrics.Mean)
    assert tf_private.loss_tracker(model) in model.metrics


def test_trackable_children_takes_a_save_type():
    model = keras_bsgd.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    assert "_replay_state" in model._trackable_children("checkpoint")
    assert "_replay_state" not in model._trackable_children("savedmodel")


def test_the_default_strategy_class_name():
    import tensorflow as tf

    assert type(tf.distribute.get_strategy()).__name__ == tf_private.DEFAULT_STRATEGY_CLASS


def test_distribute_strategy_is_the_strategy_the_model_was_made_under():
    import tensorflow as tf

    assert tf_private.distribute_strategy(keras_bsgd.Sequential([keras.Input((2,))])) is None
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = keras_bsgd.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert tf_private.distribute_strategy(model) is strategy


def test_one_replica_runs_keras_clipping_and_weight_decay_parts():
    optimizer = keras_bsgd.BackwardSGD(0.1, window=2, clipnorm=1.0, weight_decay=0.1)
    variable = keras.Variable(np.ones((2,), "float32"))
    optimizer.build([variable])
    inner = optimizer.map_optimizer
    (clipped,) = tf_private.clip_gradients(inner, [keras.ops.convert_to_tensor([3.0, 4.0])])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clipped), [0.6, 0.8], rtol=1e-6)
    assert tf_private.uses_weight_decay(inner, variable)
    inner.exclude_from_weight_decay(var_list=[variable])
    assert not tf_private.uses_weight_decay(inner, variable)


def test_a_stack_trace_filter_leaves_library_frames_out_of_every_traced_op():
    """`op_traces`: TensorFlow records filtered stacks, and none is left empty (which would crash it).

    The model's pass and its gradient run in a `tf.while_loop`, as the step's
    maps do; every op keeps the frame of `op_traces` that called the traced
    code and this test's frames, and no other frame of keras, keras_bsgd or
    TensorFlow but `ops.py`.
    """
    import os

    import tensorflow as tf

    from keras_bsgd.backend.tensorflow import op_traces

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    ops = []

    def body(x, i, total):
        with tf.GradientTape() as tape:
            loss = keras.ops.sum(model(x))
        grads = tape.gradient(loss, model.trainable_variables)
        ops.extend(tf.compat.v1.get_default_graph().get_operations())
        return i + 1, total + keras.ops.sum(grads[0])

    def loop(x):
        return tf.while_loop(lambda i, t: i < 2, lambda i, t: body(x, i, t), (0, 0.0))[1]

    @tf.function(jit_compile=True, autograph=False)
    def step(x):
        graph = tf.compat.v1.get_default_graph()
        before = set(graph.get_operations())
        result = op_traces.call_with_callers_frames(loop, x)
        ops.extend(op for op in graph.get_operations() if op not in before)
        return result

    step.get_concrete_function(tf.TensorSpec((4, 3)))
    assert len(ops) > 20
    kept = (tf_private.op_creation_file(), op_traces.__file__)
    library = tuple(
        os.path.dirname(package.__file__) for package in (tf, keras, keras_bsgd)
    )
    for op in ops:
        files = [frame.filename for frame in op.traceback]
        assert op_traces.__file__ in files and __file__ in files, (op.name, files)
        assert all(f in kept or not f.startswith(library) for f in files), (op.name, files)
