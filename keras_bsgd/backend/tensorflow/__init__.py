"""The TensorFlow backend: a step over stateful variables, tf.distribute, XLA units, tf.data."""
