"""`BackwardSGD`'s updates in a TensorFlow step: a map under `tf.distribute`, the EMA, the count.

The optimizer (`keras_bsgd.optimizer`) holds the settings and the state and
imports no TensorFlow; what only a TensorFlow step needs (replica-context
routing, a branch in the graph) is here, as functions of the optimizer.
"""

import tensorflow as tf

from keras_bsgd import keras_private
from keras_bsgd.backend.tensorflow import keras_private as tf_private


def apply_map(optimizer, grads, trainable_variables, learning_rate):
    """Applies one map `T_i`: one `apply()` of the map optimizer at a frozen learning rate.

    The `BackwardSGD`'s `iterations` and EMA are untouched: inner replays
    are not steps. (The map optimizer's own counter is Keras' and means
    nothing here.)

    Args:
        optimizer: The `BackwardSGD`.
        grads: Gradients, one per trainable variable.
        trainable_variables: The variables the optimizer was built with.
        learning_rate: Scalar tensor, the rate frozen for this map.
    """
    with optimizer.applying_map(learning_rate) as inner:
        context = tf.distribute.get_replica_context()
        if context is not None and not tf.distribute.has_strategy():
            # Without a strategy there is nothing to all-reduce, and Keras
            # skips the all-reduce in cross-replica context, which
            # `merge_call` enters. Each all-reduce registers a
            # `tf.custom_gradient` that TensorFlow never frees, pinning
            # the traced graph (tensorflow/tensorflow#97697): memory grew
            # with every compiled model in a process.
            context.merge_call(lambda _: inner.apply(grads, trainable_variables))
        elif tf.distribute.get_strategy().num_replicas_in_sync > 1:
            # Each map is its own `strategy.run` (keras_bsgd's replicas
            # module): Keras all-reduces the gradients and updates every
            # replica.
            inner.apply(grads, trainable_variables)
        else:
            _apply_on_one_replica(inner, grads, trainable_variables, learning_rate)


def _apply_on_one_replica(optimizer, grads, variables, learning_rate):
    # One replica of a strategy (a one-device MirroredStrategy): the replay
    # loop runs inside Keras' `strategy.run`, where `optimizer.apply()` would
    # `merge_call` (for the all-reduce and for weight decay) from a
    # `tf.while_loop`, which TensorFlow refuses. So this runs `apply()`'s
    # parts without them, in Keras' order and arithmetic; with one replica
    # the update is the same.
    if optimizer.loss_scale_factor is not None:
        grads = [g / optimizer.loss_scale_factor for g in grads]
    grads = tf_private.clip_gradients(optimizer, grads)
    if optimizer.weight_decay is not None:
        for variable in variables:
            if tf_private.uses_weight_decay(optimizer, variable):
                rate = tf.cast(learning_rate, variable.dtype)
                decay = tf.cast(optimizer.weight_decay, variable.dtype)
                variable.assign_sub(variable * decay * rate)
    for grad, variable in zip(grads, variables):
        optimizer.update_step(grad, variable, learning_rate)
    for variable in variables:
        if variable.constraint is not None:
            variable.assign(variable.constraint(variable))


def finish_step(optimizer, trainable_variables, when=True, replayed=None, first=None):
    """Counts one outer step, if `when`, and averages the output iterate.

    Args:
        optimizer: The `BackwardSGD`.
        trainable_variables: The variables the optimizer was built with.
        when: Boolean tensor: whether the step counts (a dropped batch
            does not).
        replayed: Boolean tensor: whether the model now holds a new
            output iterate, which the EMA then averages. Defaults to
            `when`.
        first: Boolean tensor: whether it is the run's first output
            iterate (see `average_iterate`). Defaults to
            `iterations == 0`.
    """
    average_iterate(
        optimizer, trainable_variables, when if replayed is None else replayed, first
    )
    optimizer.iterations.assign_add(tf.cast(when, optimizer.iterations.dtype))


def average_iterate(optimizer, trainable_variables, when=True, first=None):
    """Updates the EMA (`use_ema=True`) with the model's weights, if `when`.

    The averages are the ones Keras' `Optimizer.build` creates, so that
    `finalize_variable_values` and `keras.callbacks.SwapEMAWeights` see
    them. As in Keras, `ema = m * ema + (1 - m) * w`, and the first update
    (`first`) copies the weights. Keras keys "first" to `iterations == 0`;
    with `replay_every > 1` the first output iterate comes later, so the
    trainer says which one is first.
    """
    if not optimizer.use_ema:
        return
    if first is None:
        first = tf.equal(optimizer.iterations, 0)
    momentum = tf.where(first, 0.0, optimizer.ema_momentum)

    def update_ema():
        for variable, average in zip(
            trainable_variables, keras_private.ema_averages(optimizer)
        ):
            if average is not None:
                m = tf.cast(momentum, variable.dtype)
                average.assign(m * average + (1 - m) * variable)
        return tf.constant(0)

    tf.cond(tf.convert_to_tensor(when), update_ema, lambda: tf.constant(0))
