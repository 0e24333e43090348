"""The backward-SGD-vs-baselines comparison behind `keras-bsgd compare`."""

# Imported on first use: the comparison needs TensorFlow, and the speed benchmark and the
# models (keras_bsgd.benchmarks.models) must import without it on a JAX-only machine.
import importlib

_EXPORTS = {
    "GradientCounter": "keras_bsgd.benchmarks.counter",
    "IterateProbe": "keras_bsgd.benchmarks.evaluation",
    "EXACT": "keras_bsgd.benchmarks.methods",
    "FORWARD": "keras_bsgd.benchmarks.methods",
    "FORWARD_DECAY": "keras_bsgd.benchmarks.methods",
    "FORWARD_EMA": "keras_bsgd.benchmarks.methods",
    "FORWARD_POLYAK": "keras_bsgd.benchmarks.methods",
    "SCHEDULE_FREE": "keras_bsgd.benchmarks.methods",
    "UniformAverage": "keras_bsgd.benchmarks.averaging",
    "ScheduleFreeAdamW": "keras_bsgd.benchmarks.schedule_free",
    "fit_rate": "keras_bsgd.benchmarks.contraction",
    "window_method": "keras_bsgd.benchmarks.methods",
    "aggregate": "keras_bsgd.benchmarks.metrics",
    "expected_grad_evals": "keras_bsgd.benchmarks.metrics",
    "summarize_run": "keras_bsgd.benchmarks.metrics",
    "MODELS": "keras_bsgd.benchmarks.models",
    "plot_comparison": "keras_bsgd.benchmarks.plots",
    "StepRecorder": "keras_bsgd.benchmarks.recorder",
    "DEFAULTS": "keras_bsgd.benchmarks.runner",
    "ComparisonResult": "keras_bsgd.benchmarks.runner",
    "compare": "keras_bsgd.benchmarks.runner",
    "BatchStream": "keras_bsgd.benchmarks.stream",
}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = [
    "DEFAULTS",
    "EXACT",
    "FORWARD",
    "FORWARD_DECAY",
    "FORWARD_EMA",
    "FORWARD_POLYAK",
    "MODELS",
    "SCHEDULE_FREE",
    "ScheduleFreeAdamW",
    "BatchStream",
    "ComparisonResult",
    "GradientCounter",
    "IterateProbe",
    "StepRecorder",
    "UniformAverage",
    "aggregate",
    "compare",
    "expected_grad_evals",
    "fit_rate",
    "plot_comparison",
    "summarize_run",
    "window_method",
]
