"""`compiled_call`: a model's forward pass, compiled once, on TensorFlow or JAX."""

import keras


def compiled_call(model, training, jit_compile):
    """`model(x, training=training)` as a compiled function of a NumPy batch `x`.

    On TensorFlow, a `tf.function` (XLA with `jit_compile`). On JAX, Keras'
    `stateless_call` under `jax.jit` with the variables' current values as
    arguments; a training pass writes the non-trainable values it returns
    (BatchNormalization statistics) back into the variables, as the
    TensorFlow pass assigns them. Without `jit_compile` the call runs
    eagerly on JAX.

    Args:
        model: A built Keras model.
        training: The `training` argument of the call.
        jit_compile: Whether to XLA-compile the pass.

    Returns:
        A function of `x` returning the outputs as a NumPy array.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        call = tf.function(lambda x: model(x, training=training), jit_compile=jit_compile,
                           reduce_retracing=not training)
        return lambda x: call(x).numpy()
    if backend != "jax":
        raise ValueError(
            f"The benchmarks run on TensorFlow and JAX. Received: KERAS_BACKEND={backend!r}"
        )
    if not jit_compile:
        return lambda x: keras.ops.convert_to_numpy(model(x, training=training))
    return _jax_call(model, training)


def _jax_call(model, training):
    import jax

    def stateless(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=training)

    call = jax.jit(stateless)

    def run(x):
        outputs, non_trainable = call(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables], x,
        )
        if training:
            for variable, value in zip(model.non_trainable_variables, non_trainable):
                variable.assign(value)
        return keras.ops.convert_to_numpy(outputs)

    return run
