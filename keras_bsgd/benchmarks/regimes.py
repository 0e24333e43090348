"""Named settings of `compare` for the paper's regime (arXiv 2502.01557).

The paper trains without regularization at a constant learning rate and
small batches, an MLP on Fashion-MNIST and a ResNet-18 on CIFAR-10. These
settings keep all of that but the data (no download is possible: the
`keras_bsgd.benchmarks.digit_images` tasks stand in, at the same shapes)
and the size of the ResNet (at width 8, one eighth of ResNet-18's), so
that each runs in a few minutes on 2 CPU cores. `compare`'s own default
is the other regime: a warm start with weight decay, where the maps
contract by construction.

Every regime is a warm start; `forward_steps=0` gives its cold start.
"""

REGIMES = {
    "paper_mlp": {
        "dataset": "digits_28x28",
        "model": "mlp_fashion",
        "batch_size": 16,
        "learning_rate": 0.1,
        "momentum": 0.0,
        "weight_decay": None,
        "forward_steps": 2000,
        "steps": 1000,
        "eval_every": 10,
        "windows": (16,),
        # Two seeds: exact backward-SGD's 50,500 gradients take 40 s a seed here.
        "seeds": (0, 1),
        "schedule_free_learning_rates": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
        "jit_compile": True,
    },
    "paper_resnet": {
        "dataset": "digits_32x32x3",
        "model": "resnet18_w8",
        "batch_size": 16,
        "learning_rate": 0.05,
        "momentum": 0.0,
        "weight_decay": None,
        "forward_steps": 1000,
        "steps": 100,
        "eval_every": 10,
        "windows": (16,),
        "seeds": (0,),
        # From its warm start the held-out loss rose from 1e-3 to 3e-2: lower rates.
        "schedule_free_learning_rates": (1e-4, 3e-4, 1e-3, 3e-3),
        # XLA:CPU compiles each of the run's ResNet steps for 10-20 s and runs
        # them no faster than TensorFlow's own kernels here.
        "jit_compile": False,
    },
}
"""`compare` keyword arguments by regime name; any of them can be overridden."""


def settings(name):
    """The `compare` keyword arguments of regime `name`.

    Args:
        name: One of `REGIMES`.

    Returns:
        A new dict.

    Example:

    >>> settings("paper_mlp")["weight_decay"] is None
    True
    """
    if name not in REGIMES:
        raise ValueError(
            f"Unknown regime. Expected one of {sorted(REGIMES)}. Received: name={name!r}"
        )
    return dict(REGIMES[name])
