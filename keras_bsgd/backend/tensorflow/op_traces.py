"""What TensorFlow keeps of each traced op's Python stack: under XLA, the caller's frames only.

TensorFlow records the Python stack of every op it traces. When XLA compiles a
function, TensorFlow freezes each op's stack into strings and keeps them for as
long as the process lives, as it keeps the compiled program: with every frame,
that was half of what each compiled backward-SGD model left behind
(docs/performance.md, "Memory"). The step's ops are made through tf.function,
Keras and keras_bsgd frames that tell a user nothing, so under XLA they are
traced with those frames left out; the caller's frames stay, a user's own layers
included.
"""

import os
import sys

import keras
import tensorflow as tf

import keras_bsgd
from keras_bsgd.backend.tensorflow import keras_private as tf_private

_LIBRARIES = tuple(os.path.dirname(package.__file__) + os.sep for package in (tf, keras, keras_bsgd))


def library_files():
    """The source files of the loaded TensorFlow, Keras and keras_bsgd modules.

    Example:

    >>> keras_bsgd.__file__ in library_files()
    True
    """
    files = (getattr(module, "__file__", None) for module in list(sys.modules.values()))
    return frozenset(f for f in files if isinstance(f, str) and f.startswith(_LIBRARIES))


class _LibraryFrames(tf_private.StackTraceFilter):
    def __init__(self, kept):
        super().__init__()
        self._kept = kept

    def get_filtered_filenames(self):
        return library_files() - self._kept


def call_with_callers_frames(fn, *args, enabled=True):
    """`fn(*args)`, its traced ops recording no TensorFlow, Keras or keras_bsgd frame.

    Two files keep their frames, so that no op is left without one (which
    crashes TensorFlow): TensorFlow's `ops.py`, whose three frames that create
    an op are the innermost ones TensorFlow skips in every recorded stack (it
    skips frames that the filter keeps: without them it would skip three of
    the caller's), and this one, whose frame calling `fn` is on the stack of
    every op `fn` makes.

    Args:
        fn: What to call.
        *args: Its arguments.
        enabled: False: `fn(*args)`, recording every frame.

    Returns:
        What `fn` returns.

    Example:

    >>> @tf.function
    ... def f():
    ...     return call_with_callers_frames(keras.ops.add, tf.ones(2), 1.0)
    >>> graph = f.get_concrete_function().graph
    >>> files = {frame.filename for op in graph.get_operations() for frame in op.traceback}
    >>> keras.src.ops.numpy.__file__ in files
    False
    """
    if not enabled:
        return fn(*args)
    with _LibraryFrames(frozenset((tf_private.op_creation_file(), __file__))):
        return fn(*args)
