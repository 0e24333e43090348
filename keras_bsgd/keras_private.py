"""The private Keras names the backend-neutral core relies on, in one place, each with the reason.

- `keras.src.models.functional.Functional`: Keras has no public name for the
  functional model class. Functional keras_bsgd models need it as a base
  class: Keras' own route for subclasses called with `(inputs, outputs)`
  rewrites `__bases__` of the whole class chain, which would turn
  `keras_bsgd.Model` itself functional for every later user.
- `ArrayDataAdapter` (`keras.src.trainers.data_adapters`): with index
  buffering `fit()` never shows Keras the arrays, so they are shown to the
  adapter Keras would have made of them, which refuses mismatched
  cardinalities, sample weights and class weights in Keras' own words.
- `data_adapter_utils.class_weight_to_sample_weights`: `fit()` turns class
  weights into sample weights inside its adapter; with index buffering that
  must happen to the arrays first, exactly as Keras does it.
- `Layer._flatten_layers(include_self=False)`: the walk over nested layers;
  the public `model.layers` stops at the first level of a nested model.
- `Trainer._symbolic_build(data_batch=...)`: builds a lazily built model and
  its compiled loss and metrics from a batch's shapes; Keras has no public
  way to build compiled losses and metrics. `ReplayTrainerBase` overrides it
  too: Keras builds the optimizer there, from the trainable variables
  alone, and the `BackwardSGD` needs the rest of the model's state.
- `Optimizer._model_variables_moving_average`: the EMA variables Keras'
  `build()` creates and `finalize_variable_values` / `SwapEMAWeights` read;
  the replay updates them with the output iterate.

The layout of a `SeedGenerator`'s state, which keys random layers to a batch,
is `keras_bsgd/random_layers.py`'s (tested by `tests/random_layers_test.py`).
Each backend's own private names are in `keras_bsgd/backend/<name>/keras_private.py`.
`tests/keras_private_test.py` fails, naming the name, if Keras changes one.
"""

from keras.src.models.functional import Functional  # noqa: F401 (re-exported)
from keras.src.trainers.data_adapters.array_data_adapter import (  # noqa: F401
    ArrayDataAdapter,
)
from keras.src.trainers.data_adapters.data_adapter_utils import (  # noqa: F401
    class_weight_to_sample_weights,
)


def nested_layers(model):
    """Every layer inside `model`, at any depth (not `model` itself)."""
    return model._flatten_layers(include_self=False)


def build_from_batch(model, batch):
    """Builds `model` (and its compiled loss and metrics) from `batch`, a nest of arrays or specs."""
    model._symbolic_build(data_batch=batch)


def ema_averages(optimizer):
    """The EMA variables of `optimizer` (`use_ema=True`), one per trainable variable."""
    return optimizer._model_variables_moving_average
