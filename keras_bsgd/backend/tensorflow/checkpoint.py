"""`ReplayState`: the trainer's state that is not a Keras variable, in `tf.train.Checkpoint`.

`tf.train.Checkpoint` saves the variables it can reach from the model and the
optimizer (weights, BatchNorm statistics, the anchor, counters). Two parts of
the backward-SGD training state are not among them: the replay buffer, which
the trainer creates at the first training step from the batch's shape, and the
states of Keras `SeedGenerator`s, which TensorFlow does not track. A
`ReplayState` is a checkpoint dependency of every compiled keras_bsgd model
that carries both as one serialized string, written and read on the host with
the same code as `.keras` files.

One string under one fixed key is what makes restoring into a fresh model
work: TensorFlow asks an object for its keys and dtypes before it reads a
checkpoint, and a fresh model has no buffer yet, so buffer-shaped keys would
not match.
"""

import io
import weakref

import numpy as np
import tensorflow as tf


class ReplayState(tf.train.experimental.PythonState):
    """The replay buffer and random-layer seeds of a model, for `tf.train.Checkpoint`.

    keras_bsgd models attach one at `compile()`; users do not create it. It
    holds a weak reference to two methods of its model: `save(store)`, which
    writes NumPy arrays into a dict, and `load(store)`, which reads them back
    (and raises `ValueError` if they do not fit the model).

    Args:
        save: Bound method that fills a dict with arrays.
        load: Bound method that reads such a dict.

    Example:

    >>> import keras, numpy as np, tensorflow as tf, tempfile, keras_bsgd
    >>> def new_model():
    ...     model = keras_bsgd.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    ...     model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=2), loss="mse")
    ...     return model
    >>> model = new_model()
    >>> x, y = np.ones((8, 2), "float32"), np.ones((8, 1), "float32")
    >>> _ = model.fit(x, y, batch_size=4, verbose=0)
    >>> checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    >>> path = checkpoint.save(tempfile.mkdtemp() + "/ckpt")
    >>> fresh = new_model()
    >>> _ = tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).restore(path)
    >>> _ = fresh.fit(x, y, batch_size=4, verbose=0)  # rebuilds the buffer first
    >>> _ = model.fit(x, y, batch_size=4, verbose=0)
    >>> np.array_equal(fresh.get_weights()[0], model.get_weights()[0])
    True
    """

    def __init__(self, save, load):
        self._save = weakref.WeakMethod(save)
        self._load = weakref.WeakMethod(load)

    def serialize(self):
        """Returns the model's replay state as `.npz` bytes."""
        store = {}
        self._save()(store)
        data = io.BytesIO()
        np.savez(data, **store)
        return data.getvalue()

    def deserialize(self, string_value):
        """Loads the replay state from bytes written by `serialize`."""
        with np.load(io.BytesIO(string_value), allow_pickle=False) as data:
            store = {key: data[key] for key in data.files}
        self._load()(store)
