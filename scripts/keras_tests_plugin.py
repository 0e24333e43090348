"""pytest plugin of scripts/keras_tests.py: Keras' own test files, plain or trained by keras_bsgd.

Loaded with `-p keras_tests_plugin` (this directory on PYTHONPATH). Always:
registers the markers Keras' test files use (Keras' repository registers them
in a conftest.py that the wheel does not ship) and skips `multi_device` tests
on one device, as that conftest does.

With `--bsgd-substitute`, every model compiled with a plain Keras `SGD` (the
string "sgd", an `SGD` instance, or one inside a `LossScaleOptimizer`) is
trained by keras_bsgd instead:

* the optimizer becomes `keras_bsgd.BackwardSGD(window=1)` with the same
  settings (learning rate or schedule, momentum, Nesterov, weight decay and
  its exclusions, clipping, EMA, `loss_scale_factor`, name). `window=1` is
  documented to equal Keras `SGD` step for step. An `SGD` instance that is not
  built yet is turned into that `BackwardSGD` in place, so that a test holding
  it (reading `optimizer.iterations`, its EMA, ...) reads the optimizer that
  trains; a built one is replaced by a new `BackwardSGD`.
* the model's class becomes keras_bsgd's: `keras_bsgd.Sequential` for a
  `keras.Sequential`, `keras_bsgd.FunctionalModel` for a functional model, and
  for any other class `C` (a `keras.Model` subclass, or a layer mixed with a
  Keras trainer) a subclass of `C` whose method order is that of
  `class C(keras_bsgd.Model)`: `C`'s own methods, then keras_bsgd's
  `ReplayTrainer`, then Keras' classes. The instance keeps its identity
  (`model.__class__` is switched), so the test's references stay valid.

A model whose class replaces `train_step` (keras_bsgd refuses those by design)
or whose `SGD` settings `BackwardSGD` does not support
(`gradient_accumulation_steps`, `ema_overwrite_frequency`) stays plain. Each
test's substitutions are recorded as junit properties `bsgd_substituted` and
`bsgd_kept_plain`, which keras_tests.py reports.
"""

import functools
import inspect

import pytest

SUBSTITUTED = []  # this test's substitutions, "Class: how"
KEPT_PLAIN = []  # this test's SGD-compiled models left plain, "Class: why"

# SGD settings passed on to BackwardSGD as they are (all but learning_rate).
SGD_SETTINGS = (
    "name",
    "momentum",
    "nesterov",
    "weight_decay",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "loss_scale_factor",
    "gradient_accumulation_steps",
)
WEIGHT_DECAY_EXCLUSIONS = ("_exclude_from_weight_decay", "_exclude_from_weight_decay_pattern")


def pytest_addoption(parser):
    parser.getgroup("keras_bsgd").addoption(
        "--bsgd-substitute",
        action="store_true",
        help="train every model compiled with Keras SGD with keras_bsgd (BackwardSGD(window=1))",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "requires_trainable_backend: needs a backend that trains")
    config.addinivalue_line("markers", "multi_device: needs more than one device")
    if config.getoption("bsgd_substitute"):
        install()


def pytest_collection_modifyitems(config, items):
    import keras

    if keras.backend.backend() == "jax":
        import jax

        devices = jax.device_count()
    else:
        devices = 1  # Keras' conftest counts devices on JAX and torch only
    if devices > 1:
        return
    skip = pytest.mark.skip(reason="Requires multiple devices")
    for item in items:
        if "multi_device" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logstart(nodeid, location):
    SUBSTITUTED.clear()
    KEPT_PLAIN.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    if call.when == "teardown":
        # junitxml writes the properties the teardown report carries.
        if SUBSTITUTED:
            item.user_properties.append(("bsgd_substituted", "; ".join(SUBSTITUTED)))
        if KEPT_PLAIN:
            item.user_properties.append(("bsgd_kept_plain", "; ".join(KEPT_PLAIN)))
    yield


# The substitution.


def install():
    """Patches Keras' `Trainer.compile` (which every model class inherits) to substitute."""
    import keras_bsgd  # noqa: F401 (before the patch: it reads compile's signature)
    from keras.src.trainers.trainer import Trainer

    original = Trainer.compile
    if getattr(original, "_bsgd_substitution", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def compile(self, *args, **kwargs):
        from keras_bsgd.models import ReplayTrainer

        if isinstance(self, ReplayTrainer):
            # A keras_bsgd model (its compile() calls this one through super()).
            return original(self, *args, **kwargs)
        arguments = signature.bind(self, *args, **kwargs).arguments
        arguments.pop("self")
        optimizer = arguments.get("optimizer", signature.parameters["optimizer"].default)
        if not _trains_with_sgd(optimizer):
            return original(self, *args, **kwargs)
        name = type(self).__name__
        why = _why_plain(self, optimizer)
        if why is not None:
            KEPT_PLAIN.append(f"{name}: {why}")
            return original(self, *args, **kwargs)
        arguments["optimizer"], how = _backward_sgd_for(optimizer)
        # Past Keras' __setattr__ (attribute tracking): only the class changes.
        object.__setattr__(self, "__class__", replay_class(type(self)))
        SUBSTITUTED.append(f"{name}: {how}")
        # Dispatched again: keras_bsgd's compile, then (through super()) Keras'.
        return self.compile(**arguments)

    compile._bsgd_substitution = True
    Trainer.compile = compile


def _inner(optimizer):
    import keras

    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def _trains_with_sgd(optimizer):
    """Whether `optimizer` is Keras' own SGD ("sgd", an instance, in a loss-scale wrapper),
    or a `BackwardSGD` (a substituted model saved and loaded again, a shared instance)."""
    import keras
    import keras_bsgd

    if isinstance(optimizer, str):
        return optimizer.lower() == "sgd"
    inner = _inner(optimizer)
    return type(inner) is keras.optimizers.SGD or isinstance(inner, keras_bsgd.BackwardSGD)


def _why_plain(model, optimizer):
    """Why `model` cannot train with keras_bsgd in this substitution, or None."""
    import keras_bsgd
    from keras_bsgd import custom_code

    try:
        custom_code.check_no_custom_train_step(type(model))
    except ValueError:
        return "its class replaces train_step (refused by keras_bsgd)"
    inner = _inner(optimizer)
    if isinstance(optimizer, str) or isinstance(inner, keras_bsgd.BackwardSGD):
        return None
    try:
        keras_bsgd.BackwardSGD(window=1, **_sgd_settings(inner))
    except (ValueError, TypeError) as error:
        return f"BackwardSGD refuses its SGD settings ({str(error).split(':')[0]})"
    return None


def _sgd_settings(sgd):
    """The `BackwardSGD` arguments that reproduce `sgd`'s update."""
    import keras

    config = sgd.get_config()
    settings = {name: config[name] for name in SGD_SETTINGS if name in config}
    rate = sgd._learning_rate
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) or (
        callable(rate) and not isinstance(rate, keras.Variable)
    ):
        settings["learning_rate"] = rate
    else:
        settings["learning_rate"] = float(keras.ops.convert_to_numpy(sgd.learning_rate))
    return settings


def _backward_sgd_for(optimizer):
    """`(the optimizer to compile with, how it was made)` for an SGD-compiled model."""
    import keras_bsgd

    if isinstance(optimizer, str):
        return keras_bsgd.BackwardSGD(window=1, name="SGD"), 'BackwardSGD for "sgd"'
    inner = _inner(optimizer)
    if isinstance(inner, keras_bsgd.BackwardSGD):
        return optimizer, "its BackwardSGD"
    wrapped = " in a LossScaleOptimizer" if inner is not optimizer else ""
    settings = _sgd_settings(inner)
    if inner.built:
        new = keras_bsgd.BackwardSGD(window=1, **settings)
        _copy_exclusions(inner, new)
        if wrapped:
            return _rewrap(optimizer, new), f"new BackwardSGD for a built SGD{wrapped}"
        return new, "new BackwardSGD for a built SGD"
    exclusions = {n: getattr(inner, n) for n in WEIGHT_DECAY_EXCLUSIONS if hasattr(inner, n)}
    # In place: the test's reference to its SGD is the optimizer that trains.
    object.__setattr__(inner, "__class__", keras_bsgd.BackwardSGD)
    inner.__dict__.clear()
    keras_bsgd.BackwardSGD.__init__(inner, window=1, **settings)
    _set_exclusions(inner, exclusions)
    return optimizer, f"SGD instance{wrapped} made BackwardSGD in place"


def _copy_exclusions(source, target):
    names = (n for n in WEIGHT_DECAY_EXCLUSIONS if hasattr(source, n))
    _set_exclusions(target, {name: getattr(source, name) for name in names})


def _set_exclusions(optimizer, exclusions):
    if not exclusions:
        return
    for target in (optimizer, optimizer.map_optimizer):
        for name, value in exclusions.items():
            setattr(target, name, value)
        target._exclude_from_weight_decay_cache = {}


def _rewrap(loss_scale_optimizer, inner):
    import keras

    config = loss_scale_optimizer.get_config()
    config.pop("inner_optimizer", None)
    return keras.optimizers.LossScaleOptimizer(inner, **config)


# The model classes.

REPLAY_CLASSES = {}

# Classes from these packages are the library's; the others (test files'
# classes included, which live in keras.src.*_test modules) are the user's.
LIBRARY_PACKAGES = ("keras", "keras_bsgd", "tensorflow", "jax", "builtins", "abc")


def _is_library_class(cls):
    module = cls.__module__
    return module.split(".")[0] in LIBRARY_PACKAGES and not module.endswith("_test")


def replay_class(cls):
    """keras_bsgd's class for instances of Keras model class `cls` (see the module docstring)."""
    import keras
    import keras_bsgd
    from keras.src.models.functional import Functional

    if cls is keras.Sequential:
        return keras_bsgd.Sequential
    if cls is Functional:
        return keras_bsgd.FunctionalModel
    if cls is keras.Model:
        return keras_bsgd.Model
    if cls not in REPLAY_CLASSES:
        REPLAY_CLASSES[cls] = _ordered_subclass(cls)
    return REPLAY_CLASSES[cls]


def _ordered_subclass(cls):
    """A subclass of `cls` and `ReplayTrainer`, ordered as `class cls(keras_bsgd.Model)` would be.

    The classes of the test (or user) come first, so that their overrides
    win and their `super()` calls reach keras_bsgd's trainer, as in a
    subclass of `keras_bsgd.Model`; then the trainer; then Keras' classes.
    Python's own order for `(cls, ReplayTrainer)` would put the trainer after
    Keras', and `(ReplayTrainer, cls)` before the test's overrides, so the
    order is given by a metaclass.
    """
    from keras_bsgd.models import ReplayTrainer

    own = [k for k in cls.__mro__ if not _is_library_class(k)]
    library = [k for k in cls.__mro__ if _is_library_class(k)]
    trainer = [k for k in ReplayTrainer.__mro__ if k is not object]

    class Meta(type(cls)):
        def mro(new):
            if new.__dict__.get("_bsgd_replay_class_of") is not cls:
                return super().mro()  # a subclass of the new class: Python's order
            return [new, *own, *trainer, *library]

    return Meta(
        cls.__name__,
        (cls, ReplayTrainer),
        {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "_bsgd_replay_class_of": cls,
        },
    )
