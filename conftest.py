import gc
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
from tensorflow.python.framework import ops as tf_ops  # noqa: E402


def _custom_gradients():
    """Names of the graph-mode `tf.custom_gradient`s registered so far.

    TF registers each one in a global registry that is never emptied, and each
    entry pins the whole graph it was traced in (tensorflow/tensorflow#97697).
    Keras' optimizer makes one per gradient all-reduce, so every traced train
    step leaks its graphs: about 10,000 Python objects per keras_bsgd model
    (4 all-reduces per trace), which made each test's `gc.collect()` cost
    1-2 s by the end of the suite.
    """
    registry = tf_ops._gradient_registry._registry
    return {name for name in registry if name.startswith("CustomGradient-")}


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    registered = _custom_gradients()
    yield
    # The test's graphs are gone with it: unpin them, so that the next
    # clear_session() frees them.
    for name in _custom_gradients() - registered:
        del tf_ops._gradient_registry._registry[name]


def pytest_collection_finish(session):
    # What the imports allocated lives for the whole session: keep it out of
    # every later collection.
    gc.collect()
    gc.freeze()
