"""Hypothesis: random windows, batch sizes, step counts, momentum and shapes vs the reference."""

import keras
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_bsgd
from tests import reference
from tests.trajectories import make_mlp
from tests.trajectories import make_stream
from tests.trajectories import max_relative_error
from tests.trajectories import run

pytestmark = pytest.mark.tensorflow


# Derandomized: CI sees the same examples every run (no flaky landings);
# change the seed range or max_examples locally to explore further.
@settings(
    max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(
    window=st.one_of(st.none(), st.integers(1, 6)),
    batch_size=st.integers(1, 6),
    steps=st.integers(1, 12),
    momentum=st.sampled_from([0.0, 0.3, 0.9]),
    nesterov=st.booleans(),
    n_in=st.integers(1, 5),
    n_out=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_fast_path_equals_reference_at_every_step(
    window, batch_size, steps, momentum, nesterov, n_in, n_out, seed
):
    keras.backend.clear_session()
    batches, params = make_stream(seed, steps, batch_size=batch_size, n_in=n_in, n_out=n_out)
    rates = [0.05] * steps
    sgd = dict(momentum=momentum, nesterov=nesterov and momentum > 0)
    expected = reference.backward_sgd(
        reference.initial_state(params, momentum), batches, rates, window=window, **sgd
    )
    states = run(make_mlp(params), keras_bsgd.BackwardSGD(0.05, window=window, **sgd), batches)
    assert len(states) == steps
    errors = [max_relative_error(s, e) for s, e in zip(states, expected)]
    assert max(errors) <= 1e-5, errors
