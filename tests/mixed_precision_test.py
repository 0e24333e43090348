"""Mixed precision on every backend: `mixed_bfloat16`, and `mixed_float16` with loss scaling.

Under `mixed_float16` Keras wraps the optimizer in a `LossScaleOptimizer`; a
replayed map whose float16 gradient overflows is recomputed at half the
scale (same state, same random draws) instead of being skipped.
"""

import keras
import numpy as np
import pytest

import keras_bsgd
from keras_bsgd import random_layers
from tests import keras_reference
from tests.backends_test import random_layers_model


class WeightsRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.states = []

    def on_train_batch_end(self, batch, logs=None):
        self.states.append([
            np.array(keras.ops.convert_to_numpy(v.value)) for v in self.model.variables
            if not random_layers.is_seed_state(v)
        ])


def make_batches(num, batch_size=8, n_in=6, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    return [
        dict(
            x=rng.normal(size=(batch_size, n_in)).astype("float32"),
            y=rng.normal(size=(batch_size, n_out)).astype("float32"),
        )
        for _ in range(num)
    ]


def fit_batches(model, optimizer, batches, jit_compile=True):
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    recorder = WeightsRecorder()
    x, y = (np.concatenate([b[k] for b in batches]) for k in ("x", "y"))
    model.fit(x, y, batch_size=len(batches[0]["x"]), shuffle=False, verbose=0,
              callbacks=[recorder])
    return recorder.states


def under_policy(policy, function):
    keras.mixed_precision.set_global_policy(policy)
    try:
        return function()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def batchnorm_mlp(model_class=keras_bsgd.Sequential):
    keras.utils.set_random_seed(0)
    return model_class(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3),
        ]
    )


def forward_sgd_kernel(model_fn, batches):
    """The first kernel after forward SGD (Keras SGD) on `batches`, float32."""
    states = keras_reference.backward_states(
        model_fn(keras.Sequential), keras.optimizers.SGD(0.1), batches, window=1,
        draws_per_map=random_layers.draws_per_map(),
    )
    return states[-1][0]


def relative(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_mixed_bfloat16_tracks_float32_and_is_backward():
    # No random layers: on JAX they draw other numbers in bfloat16, for Keras
    # SGD too (measured there: 3.5e-2 apart after 10 steps).
    batches = make_batches(10)
    runs = {
        policy: under_policy(policy, lambda: fit_batches(
            batchnorm_mlp(), keras_bsgd.BackwardSGD(0.1), batches
        ))
        for policy in ("float32", "mixed_bfloat16")
    }
    bf16, f32 = runs["mixed_bfloat16"][-1][0], runs["float32"][-1][0]
    rel = relative(bf16, f32)
    assert rel < 5e-3, rel
    assert relative(bf16, forward_sgd_kernel(batchnorm_mlp, batches)) > 5 * rel


@pytest.mark.parametrize("window", [None, 4])
def test_mixed_float16_tracks_float32_and_is_backward(window):
    # Dropout and noise draw other numbers in float16, so this model has none.
    batches = make_batches(10)
    models = {}

    def run(policy):
        models[policy] = batchnorm_mlp()
        return fit_batches(models[policy], keras_bsgd.BackwardSGD(0.1, window=window), batches)

    runs = {policy: under_policy(policy, lambda: run(policy))
            for policy in ("float32", "mixed_float16")}
    # Keras wrapped the optimizer; the replay happened inside the wrapper.
    wrapper = models["mixed_float16"].optimizer
    assert isinstance(wrapper, keras.optimizers.LossScaleOptimizer)
    assert int(keras.ops.convert_to_numpy(wrapper.iterations.value)) == 10
    for step, (f16, f32) in enumerate(zip(runs["mixed_float16"], runs["float32"], strict=True)):
        rel = relative(f16[0], f32[0])
        assert rel < 1e-3, (step, rel)
    assert relative(f16[0], forward_sgd_kernel(batchnorm_mlp, batches)) > 5 * rel


@pytest.mark.parametrize("jit_compile", [False, True])
def test_mixed_float16_overflow_recomputes_the_map_instead_of_skipping_it(jit_compile):
    # At a scale of 2**40 every float16 gradient overflows; each map is
    # recomputed at half the scale, with the same BatchNorm state and dropout
    # masks, until it is finite. Powers of two scale exactly, so the run
    # equals one that never overflowed, step for step and bit for bit.
    batches = make_batches(10)
    runs, scales = [], []

    def run(initial_scale, growth):
        optimizer = keras.optimizers.LossScaleOptimizer(
            keras_bsgd.BackwardSGD(0.1, window=4),
            initial_scale=initial_scale,
            dynamic_growth_steps=growth,
        )
        runs.append(fit_batches(random_layers_model(keras_bsgd.Sequential), optimizer,
                                batches, jit_compile))
        scales.append(float(keras.ops.convert_to_numpy(optimizer.dynamic_scale.value)))
        assert int(keras.ops.convert_to_numpy(optimizer.iterations.value)) == 10

    for initial_scale, growth in ((2.0**8, 4), (2.0**40, 2000)):
        under_policy("mixed_float16", lambda: run(initial_scale, growth))
    for step, (a, b) in enumerate(zip(*runs, strict=True)):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f"step {step + 1}")
    # No overflow at 2**8: doubled after steps 4 and 8, as Keras does.
    assert scales[0] == 2.0**10
    # Lowered to the largest scale at which the maps were finite.
    assert 1.0 <= scales[1] <= 2.0**16


def test_mixed_float16_resume_from_keras_file_is_bitwise_exact(tmp_path):
    # The loss scale and its growth count are training state too.
    from tests.saving_test import make_model, stream

    def run(model, start, stop):
        if not model.compiled:
            model.compile(
                optimizer=keras.optimizers.LossScaleOptimizer(
                    keras_bsgd.BackwardSGD(0.05, momentum=0.5, window=3),
                    initial_scale=2.0**30, dynamic_growth_steps=4,
                ),
                loss="mse", jit_compile=True,
            )
        model.fit(stream(start, stop), verbose=0, shuffle=False)
        return model

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        expected = run(make_model(), 0, 160)
        run(make_model(), 0, 56).save(tmp_path / "run.keras")
        resumed = keras.models.load_model(tmp_path / "run.keras")
        assert isinstance(resumed.optimizer, keras.optimizers.LossScaleOptimizer)
        run(resumed, 56, 160)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for name in ("dynamic_scale", "step_counter", "iterations"):
        values = (keras.ops.convert_to_numpy(getattr(m.optimizer, name).value)
                  for m in (resumed, expected))
        assert float(next(values)) == float(next(values)), name
    for a, b in zip(resumed.get_weights(), expected.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
