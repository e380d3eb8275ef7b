"""The weight averaging pinned to the private Keras optimizer API it relies on.

These tests fail if Keras renames or stops calling `Optimizer._update_model_variables_moving_average`, or
changes `_trainable_variables` / `_model_variables_moving_average`: then AveragingAdam would silently fall
back to Keras's fixed momentum, or averaged_weights would swap in the wrong values.
"""

import keras
import numpy as np
import pytest

from model.averaging import AveragingAdam, averaged_weights

STEPS = 6


def tiny_model(optimizer):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    return model


def batches():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4 * STEPS, 3)).astype("float32"), rng.integers(0, 2, size=4 * STEPS)


class RecordWeights(keras.callbacks.Callback):
    """The raw weights and the optimizer's averages after every training step."""

    def __init__(self):
        super().__init__()
        self.raw, self.averages = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.raw.append([keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables])
        self.averages.append([keras.ops.convert_to_numpy(v)
                              for v in self.model.optimizer._model_variables_moving_average])


def expected_averages(raw_steps, momentum_at):
    """The moving average after each step, in NumPy: the first step copies the weights."""
    averages, out = raw_steps[0], [raw_steps[0]]
    for step, weights in enumerate(raw_steps[1:], start=1):
        m = momentum_at(step)
        averages = [m * a + (1 - m) * w for w, a in zip(weights, averages)]
        out.append(averages)
    return out


def test_keras_still_has_the_private_pieces():
    assert callable(getattr(keras.optimizers.Optimizer, "_update_model_variables_moving_average", None))
    assert "_update_model_variables_moving_average" in AveragingAdam.__dict__  # the override is ours
    optimizer = AveragingAdam(learning_rate=0.01, use_ema=True, ema_momentum=0.99)
    model = tiny_model(optimizer)
    x, y = batches()
    model.train_on_batch(x[:4], y[:4])
    assert [v.shape for v in optimizer._trainable_variables] == [v.shape for v in model.trainable_variables]
    assert [v.shape for v in optimizer._model_variables_moving_average] == [v.shape for v in model.trainable_variables]
    assert int(optimizer.iterations) == 1


def test_fit_runs_the_warm_up_average():
    model = tiny_model(AveragingAdam(learning_rate=0.05, use_ema=True, ema_momentum=0.99))
    recorder = RecordWeights()
    x, y = batches()
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[recorder])
    assert len(recorder.raw) == STEPS
    warm_up = expected_averages(recorder.raw, lambda t: min(0.99, (1 + t) / (10 + t)))  # 2/11, 3/12, ...
    fixed = expected_averages(recorder.raw, lambda t: 0.99)  # what Keras's own update would give
    for got, want in zip(recorder.averages, warm_up):
        for average, expected in zip(got, want):
            np.testing.assert_allclose(average, expected, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a, f, atol=1e-4) for a, f in zip(recorder.averages[-1], fixed[-1]))
    assert any(not np.allclose(a, w) for a, w in zip(recorder.averages[-1], recorder.raw[-1]))


def test_without_use_ema_nothing_is_averaged():
    model = tiny_model(AveragingAdam(learning_rate=0.05))
    x, y = batches()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert not model.optimizer.use_ema
    before = model.get_weights()
    with averaged_weights(model):
        for inside, raw in zip(model.get_weights(), before):
            np.testing.assert_array_equal(inside, raw)


def test_averaged_weights_swaps_in_exactly_the_averages_and_back():
    model = tiny_model(AveragingAdam(learning_rate=0.05, use_ema=True, ema_momentum=0.9))
    x, y = batches()
    for start in range(0, len(x), 4):
        model.train_on_batch(x[start:start + 4], y[start:start + 4])
    raw = model.get_weights()
    averages = [keras.ops.convert_to_numpy(v) for v in model.optimizer._model_variables_moving_average]
    assert any(not np.allclose(a, r) for a, r in zip(averages, raw))
    with averaged_weights(model):
        for inside, average in zip(model.get_weights(), averages):
            np.testing.assert_array_equal(inside, average)
    for after, before in zip(model.get_weights(), raw):
        np.testing.assert_array_equal(after, before)
    for kept, average in zip(model.optimizer._model_variables_moving_average, averages):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(kept), average)


def test_a_checkpoint_keeps_averaging_where_it_stopped(tmp_path):
    model = tiny_model(AveragingAdam(learning_rate=0.05, use_ema=True, ema_momentum=0.99))
    x, y = batches()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    model.save(tmp_path / "last.keras")
    reloaded = keras.saving.load_model(tmp_path / "last.keras")
    assert type(reloaded.optimizer) is AveragingAdam and reloaded.optimizer.use_ema
    assert int(reloaded.optimizer.iterations) == STEPS
    assert reloaded.optimizer.ema_momentum == pytest.approx(0.99)
    for loaded, saved in zip(reloaded.optimizer._model_variables_moving_average,
                             model.optimizer._model_variables_moving_average):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded), keras.ops.convert_to_numpy(saved))
