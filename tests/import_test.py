"""keras_bsgd needs only keras and numpy besides the backend in use: on JAX, no TensorFlow."""

import os
import subprocess
import sys

# Run where `import tensorflow` fails, as in an install of `keras-bsgd[jax]` alone.
WITHOUT_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = None
import keras
import numpy as np
import keras_bsgd

model = keras_bsgd.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
model.compile(optimizer=keras_bsgd.BackwardSGD(0.1, window=4), loss="mse")
model.fit(np.ones((16, 3), "float32"), np.ones((16, 2), "float32"), batch_size=4, verbose=0)
assert model.gradient_evaluations == 1 + 2 + 3 + 4
print(sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "tensorflow" and v))
"""


def test_jax_backend_imports_and_trains_without_tensorflow():
    env = dict(os.environ, KERAS_BACKEND="jax")
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW], env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
