"""An interrupted `fit()` leaves its run resumable, on the active backend (issue #21 item 1).

Whatever stops an epoch (Ctrl-C, `on_nonfinite="raise"`, a refused batch,
a callback's error), the next `fit()` continues the same run, bitwise as if
the stopped epoch had ended after its last completed step; only weights set
from outside start a new run.
"""

import keras
import numpy as np
import pytest

import keras_bsgd

BATCH = 4


def data(seed, batches):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batches * BATCH, 3)).astype("float32")
    return x, np.tanh(x @ rng.normal(size=(3, 2))).astype("float32")


def model(optimizer):
    net = keras_bsgd.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(5, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(1)),
        keras.layers.Dense(2, kernel_initializer=keras.initializers.GlorotUniform(2)),
    ])
    net.compile(optimizer=optimizer, loss="mse", jit_compile=False)
    return net


OPTIMIZERS = {
    "exact_replay_every_3": lambda **kw: keras_bsgd.BackwardSGD(0.1, replay_every=3, max_steps=40, **kw),
    "window_4_momentum": lambda **kw: keras_bsgd.BackwardSGD(0.1, window=4, momentum=0.5, **kw),
}


class StopAt(keras.callbacks.Callback):
    def __init__(self, step, error):
        super().__init__()
        self.step, self.error, self.seen = step, error, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            raise self.error


def state(net):
    return [np.asarray(v.value) for v in [*net.trainable_variables, *net.optimizer.variables]
            if "replay" not in v.path]


def uninterrupted(make, x, y, done, x2, y2):
    """The run of (x, y), its first `done` batches again, then (x2, y2), without interruption."""
    net = model(make())
    net.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    net.fit(x[: done * BATCH], y[: done * BATCH], batch_size=BATCH, shuffle=False, verbose=0)
    net.fit(x2, y2, batch_size=BATCH, shuffle=False, verbose=0)
    return net


def assert_same_run(a, b):
    assert int(a.optimizer.iterations) == int(b.optimizer.iterations)
    assert a.replayed_step == b.replayed_step
    for u, v in zip(a.trainable_variables, b.trainable_variables, strict=True):
        np.testing.assert_array_equal(np.asarray(u.value), np.asarray(v.value))


@pytest.mark.parametrize(
    "kind, error", [("exact_replay_every_3", KeyboardInterrupt), ("window_4_momentum", RuntimeError)]
)
def test_a_fit_stopped_at_a_random_step_continues_the_same_run(kind, error):
    rng = np.random.default_rng(abs(hash((kind, error.__name__))) % 1000)
    x, y = data(0, 6)
    x2, y2 = data(1, 3)
    for done in sorted(rng.choice(np.arange(1, 6), size=2, replace=False)):
        net = model(OPTIMIZERS[kind]())
        with pytest.raises(error):  # in the second epoch
            net.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
                    callbacks=[StopAt(6 + int(done), error("stop"))])
        net.fit(x2, y2, batch_size=BATCH, shuffle=False, verbose=0)
        assert_same_run(net, uninterrupted(OPTIMIZERS[kind], x, y, int(done), x2, y2))


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_a_fit_stopped_by_a_nonfinite_batch_continues_the_same_run(kind):
    x, y = data(2, 6)
    x2, y2 = data(3, 3)
    poisoned = x.copy()
    poisoned[3 * BATCH + 1, 0] = np.nan  # batch 4
    make = lambda: OPTIMIZERS[kind](on_nonfinite="raise")  # noqa: E731
    net = model(make())
    net.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    with pytest.raises(ValueError, match="non-finite value or loss"):
        net.fit(poisoned, y, batch_size=BATCH, shuffle=False, verbose=0)
    net.fit(x2, y2, batch_size=BATCH, shuffle=False, verbose=0)
    assert_same_run(net, uninterrupted(make, x, y, 3, x2, y2))


def test_weights_set_after_an_interrupted_fit_still_start_a_new_run():
    x, y = data(4, 6)
    net = model(OPTIMIZERS["window_4_momentum"]())
    with pytest.raises(KeyboardInterrupt):
        net.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
                callbacks=[StopAt(3, KeyboardInterrupt())])
    net.set_weights([w * 0.5 for w in net.get_weights()])
    net.fit(x[:BATCH], y[:BATCH], batch_size=BATCH, shuffle=False, verbose=0)
    # A new run: its step 1 is the outer step 4.
    assert net.replayed_step == 4 and int(net.optimizer.iterations) == 4
    assert net.gradient_evaluations == 1 + 2 + 3 + 1  # not + 4: a new run's first map
