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

import contextlib
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


def callers_frames_only(enabled=True):
    """A context in which traced ops record no TensorFlow, Keras or keras_bsgd frame.

    Two files keep their frames, so that no op is left without one (which
    crashes TensorFlow): TensorFlow's `ops.py`, whose three frames that create
    an op are the innermost ones TensorFlow skips in every recorded stack (it
    skips frames that the filter keeps: without them it would skip three of
    the caller's), and the file of the code that enters the context, which is
    on the stack of every op made inside it.

    Args:
        enabled: False: a context that changes nothing.

    Example:

    >>> @tf.function
    ... def f():
    ...     with callers_frames_only():
    ...         return keras.ops.add(tf.ones(2), 1.0)
    >>> graph = f.get_concrete_function().graph
    >>> files = {frame.filename for op in graph.get_operations() for frame in op.traceback}
    >>> keras.src.ops.numpy.__file__ in files
    False
    """
    if not enabled:
        return contextlib.nullcontext()
    entering = sys._getframe(1).f_code.co_filename
    return _LibraryFrames(frozenset((tf_private.op_creation_file(), entering)))
