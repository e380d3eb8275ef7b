"""The per-epoch callbacks: best epoch, learning-rate halving, early stopping, history, resumption, TensorBoard."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.errors import UserError
from model.callbacks import (
    CHECKPOINTS_DIR,
    HISTORY_COLUMNS,
    STATE_FILE,
    EpochSummaries,
    TrainingState,
    random_states,
    read_history,
    restore_random_states,
    resume_state,
    write_history,
)
from model.classifier import ClassifierConfig, build_classifier, compile_classifier
from model.config import MIN_LEARNING_RATE


def small_model(ema_momentum=0.0):
    """A compiled classifier whose optimizer is built, as after training's first step: the checkpoints it saves
    hold the optimizer's variables, as training's do."""
    config = ClassifierConfig(num_classes=2, max_seq_length=4, feature_dim=8)
    model = compile_classifier(build_classifier(config), ema_momentum=ema_momentum)
    model.optimizer.build(model.trainable_variables)
    return model


def epochs(state, val_losses):
    """Feed `state` one epoch end per validation loss; stops where the callback stops the run."""
    for epoch, val_loss in enumerate(val_losses, start=state.epochs_done):
        state.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5, "val_loss": val_loss, "val_accuracy": 0.5})
        if state.model.stop_training:
            break


def rates(staging):
    return [row["learning_rate"] for row in read_history(os.path.join(staging, "history.csv"))]


def test_history_round_trips(tmp_path):
    path = str(tmp_path / "history.csv")
    assert read_history(path) == []
    rows = [{"epoch": 1, "loss": 0.7, "accuracy": 0.5, "val_loss": 0.8, "val_accuracy": 0.25, "learning_rate": 1e-3},
            {"epoch": 2, "loss": 0.6, "val_loss": 0.9, "learning_rate": 5e-4, "ignored": 1}]
    write_history(path, rows)
    with open(path) as f:
        assert f.readline().strip() == ",".join(HISTORY_COLUMNS)
    assert read_history(path) == [rows[0], {k: v for k, v in rows[1].items() if k != "ignored"}]
    assert os.listdir(tmp_path) == ["history.csv"]  # written whole, no temporary file left


def test_learning_rate_halves_when_the_validation_loss_stalls_and_survives_resume(tmp_path):
    staging = str(tmp_path / "run.partial")
    state = TrainingState(staging, patience=0, fingerprint={"seed": 1}, lr_patience=2)
    state.set_model(small_model())
    # Best at epoch 1, then no improvement: halved after epochs 3 and 5; a new best at 6 restarts the count.
    epochs(state, [1.0, 1.1, 1.2, 1.3, 1.4, 0.9, 1.0])
    assert rates(staging) == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])
    assert state.best_epoch == 6 and state.last_lr_change == 5 and state.best_val_loss == pytest.approx(0.9)
    assert sorted(os.listdir(os.path.join(staging, CHECKPOINTS_DIR))) == ["best.weights.h5", "last.keras"]
    # --resume takes the lowered rate from the last model and the count from the state file.
    saved = resume_state(staging, {"seed": 1})
    assert saved == {"epochs_done": 7, "best_epoch": 6, "best_val_loss": pytest.approx(0.9), "stopped_early": False,
                     "last_lr_change": 5, "random_states": random_states(state.model), "fingerprint": {"seed": 1}}
    resumed = TrainingState(staging, patience=0, fingerprint={"seed": 1}, state=saved, lr_patience=2)
    assert len(resumed.history) == 7
    reloaded = keras.saving.load_model(resumed.last_model_path)
    assert float(keras.ops.convert_to_numpy(reloaded.optimizer.learning_rate)) == pytest.approx(2.5e-4)
    resumed.set_model(reloaded)
    epochs(resumed, [1.0])  # two epochs since the best (6): halved again
    assert float(keras.ops.convert_to_numpy(reloaded.optimizer.learning_rate)) == pytest.approx(1.25e-4)
    assert MIN_LEARNING_RATE < 1.25e-4
    assert [row["epoch"] for row in read_history(os.path.join(staging, "history.csv"))] == list(range(1, 9))


def test_the_learning_rate_stops_at_its_floor(tmp_path):
    staging = str(tmp_path / "run.partial")
    model = small_model()
    model.optimizer.learning_rate.assign(3e-5)
    state = TrainingState(staging, patience=0, fingerprint={}, lr_patience=1)
    state.set_model(model)
    epochs(state, [1.0, 1.1, 1.2, 1.3])
    assert rates(staging) == pytest.approx([3e-5, 3e-5, 1.5e-5, MIN_LEARNING_RATE])


def test_warm_up_epochs_are_not_judged(tmp_path):
    staging = str(tmp_path / "run.partial")
    state = TrainingState(staging, patience=3, fingerprint={}, lr_patience=1, start_from_epoch=3)
    state.set_model(small_model())
    # Epoch 1 has the lowest loss but is warm-up: the best is epoch 4, the first judged one. The rate then
    # halves after each epoch without a lower loss (history logs the rate an epoch ran at), and the run
    # stops 3 epochs after epoch 4.
    epochs(state, [0.1, 0.5, 0.6, 1.0, 1.1, 1.2, 1.3, 1.4])
    assert state.best_epoch == 4 and state.best_val_loss == pytest.approx(1.0)
    assert state.stopped_early and state.epochs_done == 7
    assert rates(staging) == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 2.5e-4])


def test_lr_patience_zero_keeps_the_learning_rate(tmp_path):
    staging = str(tmp_path / "run.partial")
    state = TrainingState(staging, patience=0, fingerprint={}, lr_patience=0)
    state.set_model(small_model())
    epochs(state, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert rates(staging) == pytest.approx([1e-3] * 5)
    assert state.best_epoch == 1 and not state.stopped_early


def test_a_never_finite_loss_keeps_no_best_epoch(tmp_path):
    staging = str(tmp_path / "run.partial")
    state = TrainingState(staging, patience=2, fingerprint={})
    state.set_model(small_model())
    epochs(state, [float("nan")] * 4)
    assert state.best_epoch == 0 and state.stopped_early and state.epochs_done == 2
    assert os.listdir(os.path.join(staging, CHECKPOINTS_DIR)) == ["last.keras"]


def test_the_best_checkpoint_holds_the_averaged_weights(tmp_path):
    staging = str(tmp_path / "run.partial")
    model = small_model(ema_momentum=0.9)
    x = {"features": np.random.default_rng(0).normal(size=(4, 4, 8)).astype("float32"),
         "mask": np.ones((4, 4), bool)}
    for _ in range(3):
        model.train_on_batch(x, np.array([0, 1, 0, 1]))
    raw = model.get_weights()
    averages = [keras.ops.convert_to_numpy(v) for v in model.optimizer._model_variables_moving_average]
    state = TrainingState(staging, patience=0, fingerprint={})
    state.set_model(model)
    epochs(state, [0.5])
    for after, before in zip(model.get_weights(), raw):  # the model trains on with its raw weights
        np.testing.assert_array_equal(after, before)
    best = small_model(ema_momentum=0.9)
    best.load_weights(state.best_weights_path)
    for kept, average in zip(best.get_weights(), averages):
        np.testing.assert_array_equal(kept, average)


def test_resume_refuses_a_missing_or_different_run(tmp_path):
    staging = str(tmp_path / "run.partial")
    with pytest.raises(UserError, match="there is no interrupted run to continue in"):
        resume_state(staging, {})
    state = TrainingState(staging, patience=0, fingerprint={"batch_size": 16, "seed": 1})
    state.set_model(small_model())
    epochs(state, [1.0])
    with open(os.path.join(staging, STATE_FILE)) as f:
        assert json.load(f)["fingerprint"] == {"batch_size": 16, "seed": 1}
    with pytest.raises(UserError, match=r"used different batch_size$"):
        resume_state(staging, {"batch_size": 8, "seed": 1})
    assert resume_state(staging, {"batch_size": 16, "seed": 1})["epochs_done"] == 1


def test_epoch_summaries_are_tensorboard_scalars(tmp_path):
    summaries = EpochSummaries(str(tmp_path / "logs"))
    summaries.on_train_begin()
    for epoch, (loss, val_loss) in enumerate([(0.9, 1.0), (0.5, 0.75)]):
        summaries.on_epoch_end(epoch, {"loss": loss, "accuracy": 0.5, "val_loss": val_loss, "val_accuracy": 0.25})
    summaries.on_train_end()
    found = {}
    for name in ("train", "validation"):
        (events,) = os.listdir(tmp_path / "logs" / name)
        for raw in tf.data.TFRecordDataset(str(tmp_path / "logs" / name / events)).as_numpy_iterator():
            event = tf.compat.v1.Event.FromString(raw)
            for value in event.summary.value:
                found[(name, value.tag, event.step)] = round(float(tf.make_ndarray(value.tensor)), 6)
    assert found == {("train", "epoch_loss", 1): 0.9, ("train", "epoch_accuracy", 1): 0.5,
                     ("train", "epoch_loss", 2): 0.5, ("train", "epoch_accuracy", 2): 0.5,
                     ("validation", "epoch_loss", 1): 1.0, ("validation", "epoch_accuracy", 1): 0.25,
                     ("validation", "epoch_loss", 2): 0.75, ("validation", "epoch_accuracy", 2): 0.25}


def test_the_random_generators_states_survive_a_reload(tmp_path):
    # Keras saves a model without its dropout generators' states: a reloaded model would redraw the masks of
    # the steps before, so train_state.json keeps them and --resume sets them again.
    model = small_model()
    for variable in model.variables:
        if variable.path.endswith("seed_generator_state"):
            variable.assign(keras.ops.convert_to_tensor([7, 42], dtype=variable.dtype))
    states = random_states(model)
    assert states and all(state == [7, 42] for state in states)
    model.save(str(tmp_path / "m.keras"))
    reloaded = keras.saving.load_model(str(tmp_path / "m.keras"))
    assert random_states(reloaded) != states
    restore_random_states(reloaded, states)
    assert random_states(reloaded) == states
    with pytest.raises(ValueError, match="1 random states for a model with 2 random generators"):
        restore_random_states(reloaded, states[:1])
