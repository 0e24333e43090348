import gc
import importlib.util
import os
import re

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()
ON_TENSORFLOW = BACKEND == "tensorflow"
# Markers of tests that need one backend; the others skip them.
BACKEND_MARKERS = ("tensorflow", "jax")
# Packages that import TensorFlow: the TensorFlow backend's, and the bench
# extra's (which trains with it). Off TensorFlow their doctests are not
# collected, which would import them.
TENSORFLOW_PACKAGES = (
    "keras_bsgd/backend/tensorflow", "keras_bsgd/benchmarks", "keras_bsgd/datasets"
)
TENSORFLOW_INSTALLED = importlib.util.find_spec("tensorflow") is not None
# A module marked as a whole, or importing TensorFlow at its top.
TENSORFLOW_MODULE = re.compile(
    r"^(pytestmark = .*pytest\.mark\.tensorflow|(import|from) tensorflow\b)", re.MULTILINE
)

if ON_TENSORFLOW:
    from tensorflow.python.framework import ops as tf_ops


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
    if not ON_TENSORFLOW:
        yield
        return
    registered = _custom_gradients()
    yield
    # The test's graphs are gone with it: unpin them, so that the next
    # clear_session() frees them.
    for name in _custom_gradients() - registered:
        del tf_ops._gradient_registry._registry[name]


def pytest_ignore_collect(collection_path, config):
    if ON_TENSORFLOW:
        return None
    path = collection_path.as_posix()
    if any(f"/{package}" in path for package in TENSORFLOW_PACKAGES):
        return True
    if not TENSORFLOW_INSTALLED and collection_path.suffix == ".py":
        # Collecting a module imports it (for its doctests too): TensorFlow
        # tests and helpers that import TensorFlow cannot be, without it.
        text = collection_path.read_text()
        if TENSORFLOW_MODULE.search(text):
            return True
    return None


def _needed_backend(item):
    for name in BACKEND_MARKERS:
        if item.get_closest_marker(name) is not None:
            return name
    if isinstance(item, pytest.DoctestItem):
        # A doctest cannot carry a marker: one that uses TensorFlow needs it.
        source = "".join(example.source for example in item.dtest.examples)
        if any(word in source for word in ("tf.", "tensorflow")):
            return "tensorflow"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        needed = _needed_backend(item)
        if needed not in (None, BACKEND):
            item.add_marker(
                pytest.mark.skip(reason=f"needs the {needed} backend; KERAS_BACKEND is {BACKEND!r}")
            )


def pytest_collection_finish(session):
    # What the imports allocated lives for the whole session: keep it out of
    # every later collection.
    gc.collect()
    gc.freeze()
