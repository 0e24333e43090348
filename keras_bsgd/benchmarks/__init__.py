"""The forward-vs-backward SGD comparison behind `keras-bsgd compare`."""

from keras_bsgd.benchmarks.counter import GradientCounter
from keras_bsgd.benchmarks.metrics import aggregate
from keras_bsgd.benchmarks.metrics import expected_grad_evals
from keras_bsgd.benchmarks.metrics import summarize_run
from keras_bsgd.benchmarks.models import MODELS
from keras_bsgd.benchmarks.plots import plot_comparison
from keras_bsgd.benchmarks.recorder import StepRecorder
from keras_bsgd.benchmarks.runner import EXACT
from keras_bsgd.benchmarks.runner import FORWARD
from keras_bsgd.benchmarks.runner import ComparisonResult
from keras_bsgd.benchmarks.runner import compare
from keras_bsgd.benchmarks.runner import window_method
from keras_bsgd.benchmarks.stream import BatchStream

__all__ = [
    "EXACT",
    "FORWARD",
    "MODELS",
    "BatchStream",
    "ComparisonResult",
    "GradientCounter",
    "StepRecorder",
    "aggregate",
    "compare",
    "expected_grad_evals",
    "plot_comparison",
    "summarize_run",
    "window_method",
]
