"""The private Keras names the JAX trainer relies on, in one place, each with the reason.

- `JAXTrainer._update_metrics_variables`: Keras' own stateless metric update
  in its `train_step` (the loss tracker weighted by the batch size, then
  `compute_metrics`). The logging pass must update the metrics exactly as
  Keras' step does, and Keras has no public stateless equivalent.
- `JAXTrainer._jax_state` and `_jax_state_synced`: the state `fit()` holds
  between steps, which the public `jax_state_sync()` writes into the
  variables. A step that raises must leave its state there (Keras' `fit()`
  syncs it in its `finally`); Keras has no public setter.
- `Variable._value = None`: how Keras' `fit()` releases the values of the
  variables whose values the stateless step holds
  (`JAXTrainer._purge_model_variables`), until `jax_state_sync()` assigns
  them back. The run's variables join the step's state after Keras did it,
  at the run's first step, so they are released the same way; Keras has no
  public method for one variable.

The core's private Keras names (the symbolic build, the EMA variables, ...)
are in `keras_bsgd/keras_private.py`.

`tests/jax_private_names_test.py` fails, naming the name, if Keras changes one.
"""

_STATE_KEYS = (
    "trainable_variables",
    "non_trainable_variables",
    "optimizer_variables",
    "metrics_variables",
)


def update_metrics(model, metrics, unscaled_loss, x, y, y_pred, sample_weight):
    """The metric variables' values after Keras' own update with one batch (stateless)."""
    _, metrics = model._update_metrics_variables(metrics, unscaled_loss, x, y, y_pred, sample_weight)
    return metrics


def hold_state(model, state):
    """Puts a `(trainable, non_trainable, optimizer, metrics)` state tuple in `model`'s variables."""
    model._jax_state = dict(zip(_STATE_KEYS, state))
    model._jax_state_synced = False
    model.jax_state_sync()


def release_values(variables):
    """Drops `variables`' values while a step's state holds them, as Keras' `fit()` does."""
    for variable in variables:
        variable._value = None
