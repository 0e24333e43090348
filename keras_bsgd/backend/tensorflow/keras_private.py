"""The private Keras/TensorFlow names the TensorFlow backend relies on, in one place, each with the reason.

Used through the functions here:
- `Optimizer._clip_gradients` and `Optimizer._use_weight_decay`: the parts of
  `apply()` that one replica of a strategy runs without its `merge_call`
  (`updates._apply_on_one_replica`); Keras has no public way to run them alone.
- `Trainer._loss_tracker`: the `Mean` of the logged loss, which the logging
  pass updates as Keras' `train_step` does; Keras has no public handle on it.
- `Trainer._distribute_strategy`: the strategy the model was created under
  (None without one), which decides the step's replica routing; Keras keeps
  it under this name only.
- `_DefaultDistributionStrategy`: the class name of "no strategy", which has
  no public class.
- `tensorflow.python.util.tf_stack.StackTraceFilter`: leaves frames out of
  the stacks TensorFlow records for traced ops, which it keeps for as long as
  the process lives once XLA has compiled them (`op_traces`); TensorFlow's own
  autograph filters its frames this way, with no public API.
- `tensorflow.python.framework.ops.Operation.from_node_def`: the frame every
  traced op's recorded stack passes through (`op_traces` keeps its file).

Overridden, so they stay methods of `backend/tensorflow/trainer.py`:
- `Trainer._maybe_symbolic_build(iterator, data_batch)`: builds the model
  from the first batch before the step is traced;
- `Model._trackable_children(save_type, ...)`: keeps the run's Python state
  out of exported SavedModels.

The core's private Keras names are in `keras_bsgd/keras_private.py`.
`tests/tensorflow_private_names_test.py` fails, naming the name, if Keras
or TensorFlow changes one.
"""

import inspect

from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.util.tf_stack import StackTraceFilter  # noqa: F401

DEFAULT_STRATEGY_CLASS = "_DefaultDistributionStrategy"


def op_creation_file():
    """The source file of the frame through which TensorFlow creates every traced op."""
    return inspect.getfile(tf_ops.Operation.from_node_def)


def clip_gradients(optimizer, grads):
    """`grads` clipped as `optimizer.apply()` clips them (`clipnorm`, `clipvalue`, `global_clipnorm`)."""
    return optimizer._clip_gradients(grads)


def uses_weight_decay(optimizer, variable):
    """Whether `optimizer.apply()` decays `variable` (`exclude_from_weight_decay`)."""
    return optimizer._use_weight_decay(variable)


def loss_tracker(model):
    """The `keras.metrics.Mean` that logs the compiled model's loss."""
    return model._loss_tracker


def distribute_strategy(model):
    """The `tf.distribute` strategy `model` was created under, or None."""
    return model._distribute_strategy
