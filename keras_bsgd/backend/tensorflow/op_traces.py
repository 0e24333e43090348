"""What TensorFlow keeps of each traced op's Python stack: under XLA, the caller's frames only.

TensorFlow records the Python stack of every op it traces. When XLA compiles a
function, TensorFlow freezes each op's stack into strings and keeps them for as
long as the process lives, as it keeps the compiled program (docs/performance.md,
"Memory"): with every frame, that was half of what each compiled backward-SGD
model left behind. Its ops are made through tf.function, Keras and keras_bsgd
frames that tell a user nothing (TensorFlow hides its own frames from error
messages already), so the step is traced with those frames left out. The caller's
frames stay, a user's own layers included; so does the innermost frame, in
TensorFlow's `ops.py`, which every op's recorded stack passes through: a stack
with no frame left would crash TensorFlow.
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

    Two files keep their frames: TensorFlow's `ops.py`, whose innermost frames
    TensorFlow drops from every recorded stack itself (`StackTraceFilter`'s
    contract), and the file of the code that enters the context, which is on
    the stack of every op made inside it. So no op is left without a frame,
    whatever calls the step.

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
