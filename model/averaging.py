"""The moving average of the weights that training validates, keeps and exports.

Keras 3's optimizers keep an exponential moving average of the weights with `use_ema=True`, at a fixed
`ema_momentum` from the second step on, so a short run drags its initial weights along for ~1 / (1 -
momentum) steps. `AveragingAdam` warms the momentum up instead; `averaged_weights` swaps the averages into
the model, as Keras's `SwapEMAWeights` callback does around validation, for saving the best epoch.

Both rely on private parts of Keras's optimizer, and are kept side by side here so that a Keras upgrade is
checked in one place (tests/test_averaging.py fails if these parts change):
- `Optimizer._update_model_variables_moving_average(trainable_variables)`, which `apply` calls after each
  update step while `iterations` still counts the steps before it (AveragingAdam overrides it);
- `Optimizer._trainable_variables` and `Optimizer._model_variables_moving_average`, the variables and their
  averages in the same order (averaged_weights reads them).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="video_classifier")
class AveragingAdam(keras.optimizers.Adam):
    """Adam whose moving average of the weights (`use_ema`) warms up: at step t the momentum is
    min(ema_momentum, (1 + t) / (10 + t)), as in `tf.train.ExponentialMovingAverage` with `num_updates`.

    The average then spans about the last tenth of the steps taken (up to ~1 / (1 - ema_momentum) steps),
    so a short run averages its recent weights instead of dragging its initial ones along, as Keras's
    fixed momentum does.
    """

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.use_ema:
            return
        step = ops.cast(self.iterations, "float32")
        # Step 0 copies the weights into the (zero-initialised) averages.
        momentum = ops.where(step > 0, ops.minimum(self.ema_momentum, (1.0 + step) / (10.0 + step)), 0.0)
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                m = ops.cast(momentum, variable.dtype)
                average.assign(m * average + (1.0 - m) * variable)


@contextlib.contextmanager
def averaged_weights(model: keras.Model) -> Iterator[None]:
    """With an optimizer that keeps a moving average of the weights (`use_ema`), the averaged weights are the
    model's inside the block and the raw ones again after it, like Keras's SwapEMAWeights around validation;
    otherwise nothing changes."""
    optimizer = model.optimizer
    if not getattr(optimizer, "use_ema", False):
        yield
        return
    pairs = list(zip(optimizer._trainable_variables, optimizer._model_variables_moving_average))

    def swap():
        for variable, average in pairs:
            value = ops.copy(variable)  # a snapshot, without the NumPy round trip (and its copy= warning)
            variable.assign(average)
            average.assign(value)

    swap()
    try:
        yield
    finally:
        swap()
