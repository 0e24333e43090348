"""The backward-SGD-vs-baselines comparison behind `keras-bsgd compare`."""

from keras_bsgd.benchmarks.counter import GradientCounter
from keras_bsgd.benchmarks.evaluation import IterateProbe
from keras_bsgd.benchmarks.methods import EXACT
from keras_bsgd.benchmarks.methods import FORWARD
from keras_bsgd.benchmarks.methods import FORWARD_DECAY
from keras_bsgd.benchmarks.methods import FORWARD_EMA
from keras_bsgd.benchmarks.methods import window_method
from keras_bsgd.benchmarks.metrics import aggregate
from keras_bsgd.benchmarks.metrics import expected_grad_evals
from keras_bsgd.benchmarks.metrics import summarize_run
from keras_bsgd.benchmarks.models import MODELS
from keras_bsgd.benchmarks.plots import plot_comparison
from keras_bsgd.benchmarks.recorder import StepRecorder
from keras_bsgd.benchmarks.runner import DEFAULTS
from keras_bsgd.benchmarks.runner import ComparisonResult
from keras_bsgd.benchmarks.runner import compare
from keras_bsgd.benchmarks.stream import BatchStream

__all__ = [
    "DEFAULTS",
    "EXACT",
    "FORWARD",
    "FORWARD_DECAY",
    "FORWARD_EMA",
    "MODELS",
    "BatchStream",
    "ComparisonResult",
    "GradientCounter",
    "IterateProbe",
    "StepRecorder",
    "aggregate",
    "compare",
    "expected_grad_evals",
    "plot_comparison",
    "summarize_run",
    "window_method",
]
