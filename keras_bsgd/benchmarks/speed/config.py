"""The speed benchmark's configurations: the full run, the smoke test, and its fixed settings."""

INPUT_SHAPES = {
    "mlp_1024": (784,),
    "mlp_tiny": (784,),
    "cnn": (32, 32, 3),
    "resnet18": (32, 32, 3),
}
"""The models the benchmark times (names of `keras_bsgd.benchmarks.models.MODELS`) and the
shape of their synthetic examples."""

DEFAULTS = {
    "models": ["mlp_1024", "cnn"],
    "batch_sizes": [32],
    "windows": [1, 4, 16, 64],
    "depths": [16, 64, 256],
    "sgd_steps_per_execution": 64,
    "bsgd_steps_per_execution": None,
    "repeats": 5,
    "budget_s": 30.0,
    "fast_forward": True,
    "memory_steps": 10_000,
    "memory_batch_size": 128,
    "memory_examples": 50_000,
    "time_limit_s": None,
    "seed": 0,
}
"""The full benchmark: about 5.5 minutes on 2 (shared) CPU cores."""

TINY = {
    **DEFAULTS,
    "models": ["mlp_tiny"],
    "batch_sizes": [8],
    "windows": [1, 4],
    "depths": [2, 4],
    "sgd_steps_per_execution": 8,
    "repeats": 2,
    "budget_s": 2.0,
    "memory_steps": 100,
    "memory_examples": 1_000,
}
"""A smoke-test configuration: one small MLP, a few seconds of timing."""

NUM_CLASSES = 10
NUM_BATCHES = 16  # distinct batches, cycled
LEARNING_RATE = 0.01
