"""The step arithmetic (`keras_bsgd.schedule`) against the composition order of docs/design.md §1.

A ring of batch indices is simulated with the schedule's slots and trip counts,
as a write-first step uses them, and the maps each replay composes are checked
against the order the float64 reference composes them in.
"""

import pytest

from keras_bsgd import schedule


def expected_order(k, window, forward_steps):
    """1-based batches composed into S~_k, first to last (tests/reference.py's warm_backward_sgd)."""
    if k <= forward_steps:
        return list(range(1, k + 1))
    back = k - forward_steps
    w = back if window is None else min(window, back)
    anchor = list(range(1, forward_steps + back - w + 1))
    return anchor + list(range(k, k - w, -1))


def simulate(steps, window, forward_steps, replay_every):
    """The maps composed at each replayed step, read from a simulated write-first ring."""
    capacity = steps - forward_steps if window is None else None
    slots = schedule.ring_slots(window, replay_every, capacity)
    ring = [None] * slots
    anchor, replayed, out = [], 0, {}
    for k in range(1, steps + 1):
        forward = bool(schedule.is_forward(k, forward_steps))
        replay = bool(schedule.replays(k, replay_every, forward_steps)) or k == steps
        if forward:
            anchor = anchor + [k]
        else:
            ring[int(schedule.slot(k, forward_steps, slots))] = k
        if not replay:
            continue
        first, last = (int(v) for v in schedule.advance_range(replayed, k, window, forward_steps))
        for i in range(first + 1, last + 1):
            batch = ring[int(schedule.slot(i, forward_steps, slots))]
            assert batch == i, f"step {k}: the anchor's batch {i} was overwritten by {batch}"
            anchor = anchor + [i]
        count = int(schedule.replay_count(k, window, forward_steps))
        replays = [ring[int(schedule.slot(k - i, forward_steps, slots))] for i in range(count)]
        assert replays == list(range(k, k - count, -1)), f"step {k}: ring holds {replays}"
        out[k] = anchor + replays
        replayed = k
    return out


@pytest.mark.parametrize("window", [None, 1, 2, 5])
@pytest.mark.parametrize("forward_steps", [0, 3])
@pytest.mark.parametrize("replay_every", [1, 2, 4])
def test_ring_and_trip_counts_compose_the_reference_order(window, forward_steps, replay_every):
    steps = 17
    composed = simulate(steps, window, forward_steps, replay_every)
    for k, order in composed.items():
        assert order == expected_order(k, window, forward_steps), k
    replayed = [k for k in range(1, steps + 1) if k <= forward_steps or k % replay_every == 0]
    assert sorted(composed) == sorted(set(replayed) | {steps})


def test_anchor_step_examples():
    assert int(schedule.anchor_step(3, window=4, forward_steps=0)) == 0
    assert int(schedule.anchor_step(10, window=4, forward_steps=0)) == 6
    assert int(schedule.anchor_step(10, window=None, forward_steps=3)) == 3
    assert int(schedule.anchor_step(5, window=4, forward_steps=8)) == 5
