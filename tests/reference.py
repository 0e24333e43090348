"""Slow, obviously correct float64 NumPy reference for every composition order.

Everything here follows docs/design.md §1 literally, with no buffers, anchors or
ring indices: the backward iterate at step k is recomputed from scratch by
composing the per-batch maps in the stated order. The model is a two-layer
MLP `y = tanh(x W1 + b1) W2 + b2` with mean squared error, with backprop
written out by hand, so nothing here depends on TensorFlow or Keras.

A *state* is a dict `{"params": [W1, b1, W2, b2], "momentum": [...]}`; the
momentum list is empty when `momentum == 0`, as in Keras `SGD`.
"""

import numpy as np


def init_mlp(rng, n_in, n_hidden, n_out):
    """Returns float64 MLP parameters `[W1, b1, W2, b2]` drawn from `rng`."""
    return [
        rng.normal(0.0, 0.5, (n_in, n_hidden)),
        rng.normal(0.0, 0.1, (n_hidden,)),
        rng.normal(0.0, 0.5, (n_hidden, n_out)),
        rng.normal(0.0, 0.1, (n_out,)),
    ]


def mlp_loss_and_grads(params, x, y):
    """Mean squared error of the MLP on one batch and its exact gradient.

    The loss is the mean over batch and output units, which is what
    `keras.losses.MeanSquaredError()` computes.
    """
    w1, b1, w2, b2 = params
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    h = np.tanh(x @ w1 + b1)
    out = h @ w2 + b2
    diff = out - y
    loss = np.mean(diff**2)
    d_out = 2.0 * diff / diff.size
    g_w2 = h.T @ d_out
    g_b2 = d_out.sum(axis=0)
    d_h = (d_out @ w2.T) * (1.0 - h**2)
    g_w1 = x.T @ d_h
    g_b1 = d_h.sum(axis=0)
    return loss, [g_w1, g_b1, g_w2, g_b2]


def initial_state(params, momentum):
    """The training state S_0: the parameters and zero momentum slots."""
    return {
        "params": [np.array(p, np.float64) for p in params],
        "momentum": [np.zeros_like(p, np.float64) for p in params]
        if momentum
        else [],
    }


def sgd_map(state, batch, learning_rate, momentum=0.0, nesterov=False):
    """T_i: one Keras `SGD` step on `batch` from `state` (not modified).

    Keras' rule: `m = momentum * m - lr * g`, then `w += m`, or with
    Nesterov `w += momentum * m - lr * g`.
    """
    _, grads = mlp_loss_and_grads(state["params"], *batch)
    if not momentum:
        return {
            "params": [p - learning_rate * g for p, g in zip(state["params"], grads)],
            "momentum": [],
        }
    new_m = [momentum * m - learning_rate * g for m, g in zip(state["momentum"], grads)]
    if nesterov:
        new_p = [
            p + momentum * m - learning_rate * g
            for p, m, g in zip(state["params"], new_m, grads)
        ]
    else:
        new_p = [p + m for p, m in zip(state["params"], new_m)]
    return {"params": new_p, "momentum": new_m}


def compose(state, batches, learning_rates, order, **sgd_kwargs):
    """Applies `T_i` for i in `order` (0-based batch indices), first to last."""
    for i in order:
        state = sgd_map(state, batches[i], learning_rates[i], **sgd_kwargs)
    return state


def forward_sgd(state0, batches, learning_rates, **sgd_kwargs):
    """Forward SGD: S_k = T_k(S_{k-1}). Returns [S_1, ..., S_N]."""
    out, state = [], state0
    for k in range(len(batches)):
        state = sgd_map(state, batches[k], learning_rates[k], **sgd_kwargs)
        out.append(state)
    return out


def backward_sgd(state0, batches, learning_rates, window=None, **sgd_kwargs):
    """Exact (`window=None`) or windowed backward-SGD. Returns [S~_1, ..., S~_N].

    Windowed: A_k = T_{k-w} o ... o T_1(S_0) and
    S~_k = T_{k-w+1} o ... o T_k(A_k), i.e. the last w batches applied
    newest-first from the anchor. Exact: S~_k = T_1 o ... o T_k(S_0).
    Both are recomputed from S_0 at every step.
    """
    out = []
    for k in range(1, len(batches) + 1):
        w = k if window is None else min(window, k)
        anchor = compose(state0, batches, learning_rates, range(k - w), **sgd_kwargs)
        newest_first = range(k - 1, k - w - 1, -1)
        out.append(compose(anchor, batches, learning_rates, newest_first, **sgd_kwargs))
    return out


def warm_backward_sgd(state0, batches, learning_rates, window=None, forward_steps=0, **sgd_kwargs):
    """Forward SGD for `forward_steps` steps, then backward-SGD from the state it reached.

    Returns [S_1, ..., S_W, S~_{W+1}, ..., S~_N]: exact mode
    S~_k = T_{W+1} o ... o T_k(S_W); windowed mode replays the last
    `window` batches after W newest-first from forward SGD's iterate at
    max(W, k - window).
    """
    forward = forward_sgd(state0, batches[:forward_steps], learning_rates, **sgd_kwargs)
    start = forward[-1] if forward else state0
    backward = backward_sgd(
        start, batches[forward_steps:], learning_rates[forward_steps:], window, **sgd_kwargs
    )
    return forward + backward


def observed(iterates, replay_every, replayed_also=()):
    """What the model holds after each step with `replay_every`.

    Step k (1-based) shows iterate k if it is replayed (a multiple of
    `replay_every`, or in `replayed_also`: epoch ends, forward steps), else
    the last replayed iterate (before the first, None: the initial state).
    """
    out, last = [], None
    for k, iterate in enumerate(iterates, start=1):
        if k % replay_every == 0 or k in replayed_also:
            last = iterate
        out.append(last)
    return out
