"""What training does after every epoch, as Keras callbacks, and the files it keeps in the staging folder.

    <staging>/
      history.csv          one row per epoch: HISTORY_COLUMNS (the learning rate the epoch ran at)
      logs/train, logs/validation    TensorBoard scalars (EpochSummaries)
      checkpoints/         last.keras (with its optimizer) and best.weights.h5: what --resume needs
      train_state.json     the epoch counts, the random generators' states and the fingerprint of the run
                           (see `resume_state`)

Every file is replaced whole (`common.publish.write_atomically`), so a run killed at any point leaves a
staging folder `--resume` can continue from.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from typing import Sequence

import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from common import fs
from common.errors import UserError
from common.publish import write_atomically
from model.averaging import averaged_weights
from model.config import LR_FACTOR, MIN_LEARNING_RATE
from model.export import HISTORY_FILE

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "train_state.json"
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


def write_history(path: str, rows: Sequence[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, text.getvalue().encode("utf-8"))


def read_history(path: str) -> list[dict]:
    """Rows of a `history.csv` (epoch as int, metrics as float); [] if there is none."""
    if not fs.exists(path):
        return []
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
            for row in csv.DictReader(io.StringIO(fs.read_text(path)))]


def random_states(model: keras.Model) -> list[list[int]]:
    """The states of the model's random generators (dropout's), in the order of its variables: Keras does not
    save them with the model, and a resumed run that restarts them redraws the masks of the first steps."""
    return [[int(x) for x in keras.ops.convert_to_numpy(v)] for v in model.variables
            if v.path.endswith("seed_generator_state")]


def restore_random_states(model: keras.Model, states: Sequence[Sequence[int]]) -> None:
    """Set the model's random generators to `states` (from `random_states` of a model of the same layers)."""
    variables = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    if len(variables) != len(states):
        raise ValueError(f"{len(states)} random states for a model with {len(variables)} random generators")
    for variable, state in zip(variables, states):
        variable.assign(keras.ops.convert_to_tensor(state, dtype=variable.dtype))


def resume_state(staging: str, fingerprint: dict) -> dict:
    """The state the interrupted run in `staging` saved, which must have had the same `fingerprint`."""
    state_path = os.path.join(staging, STATE_FILE)
    if not os.path.exists(state_path) or not os.path.exists(os.path.join(staging, CHECKPOINTS_DIR, "last.keras")):
        raise UserError(f"--resume: there is no interrupted run to continue in {staging}")
    state = fs.read_json(state_path)
    before = state.get("fingerprint", {})
    if differences := [key for key in fingerprint if before.get(key) != fingerprint[key]]:
        raise UserError(f"--resume: the interrupted run in {staging} used different {', '.join(differences)}")
    return state


class TrainingState(keras.callbacks.Callback):
    """After every epoch: keeps the best weights by validation loss (the moving average of the weights when
    the optimizer keeps one: those are the weights validated), halves the learning rate after
    `lr_patience` epochs without improvement (0: never; not below MIN_LEARNING_RATE), stops early after
    `patience` epochs without improvement (0: never), writes `history.csv`, and saves what `--resume` needs
    (the last model with its optimizer, learning rate included, and this state) so an interrupted run can
    go on.

    The first `start_from_epoch` epochs are a warm-up, as in Keras's `EarlyStopping(start_from_epoch=...)`:
    they are validated and logged but not judged, so none of them is kept as the best and none lowers the
    learning rate or stops the run. On a small validation set the loss often has an early low while the
    accuracy is still rising; judging from the first epoch would lower the rate and stop there."""

    def __init__(self, staging: str, patience: int, fingerprint: dict, state: dict | None = None,
                 lr_patience: int = 0, start_from_epoch: int = 0):
        super().__init__()
        self.staging = staging
        self.patience = patience
        self.lr_patience = lr_patience
        self.start_from_epoch = start_from_epoch
        self.fingerprint = fingerprint
        state = state or {}
        self.epochs_done = state.get("epochs_done", 0)
        self.best_epoch = state.get("best_epoch", 0)
        self.best_val_loss = state.get("best_val_loss", math.inf)
        self.stopped_early = state.get("stopped_early", False)
        self.last_lr_change = state.get("last_lr_change", 0)
        self.random_states = state.get("random_states", [])
        self.history = read_history(self.history_path)[: self.epochs_done]

    @property
    def history_path(self) -> str:
        return os.path.join(self.staging, HISTORY_FILE)

    @property
    def best_weights_path(self) -> str:
        return os.path.join(self.staging, CHECKPOINTS_DIR, "best.weights.h5")

    @property
    def last_model_path(self) -> str:
        return os.path.join(self.staging, CHECKPOINTS_DIR, "last.keras")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.epochs_done = epoch + 1
        val_loss = float(logs.get("val_loss", math.nan))
        judged = self.epochs_done > self.start_from_epoch
        if judged and val_loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch = val_loss, self.epochs_done
            with averaged_weights(self.model):  # the weights that were validated
                write_atomically(self.best_weights_path, self.model.save_weights)
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        metrics = {key: float(logs[key]) for key in HISTORY_COLUMNS[1:] if key in logs}
        self.history.append({"epoch": self.epochs_done, **metrics, "learning_rate": learning_rate})
        write_history(self.history_path, self.history)
        if judged and self.patience and self.epochs_done - self.best_epoch >= self.patience:
            self.stopped_early = True
            self.model.stop_training = True
            logger.info("early stopping after epoch %d: no lower validation loss since epoch %d",
                        self.epochs_done, self.best_epoch)
        elif (judged and self.lr_patience and learning_rate > MIN_LEARNING_RATE
              and self.epochs_done - max(self.best_epoch, self.last_lr_change) >= self.lr_patience):
            lowered = max(learning_rate * LR_FACTOR, MIN_LEARNING_RATE)
            self.model.optimizer.learning_rate.assign(lowered)
            self.last_lr_change = self.epochs_done
            logger.info("learning rate %.3g after epoch %d: no lower validation loss since epoch %d",
                        lowered, self.epochs_done, self.best_epoch)
        write_atomically(self.last_model_path, self.model.save)
        write_atomically(os.path.join(self.staging, STATE_FILE), fs.json_text(self.state()).encode("utf-8"))

    def state(self) -> dict:
        """What train_state.json holds: the counts so far, the random generators' states (so a resumed run
        draws the dropout masks an uninterrupted one would) and the run's fingerprint."""
        return {"epochs_done": self.epochs_done, "best_epoch": self.best_epoch,
                "best_val_loss": self.best_val_loss, "stopped_early": self.stopped_early,
                "last_lr_change": self.last_lr_change,
                "random_states": random_states(self.model) if self.model is not None else [],
                "fingerprint": self.fingerprint}


class EpochSummaries(keras.callbacks.Callback):
    """TensorBoard logs: per-epoch loss and accuracy in `<log_dir>/train` and `<log_dir>/validation`, tagged
    `epoch_loss` and `epoch_accuracy` as Keras' TensorBoard callback does, at step = epoch (1-based).

    Written with TensorFlow's core `tf.summary.write`, so only viewing them needs the tensorboard package.
    """

    def __init__(self, log_dir: str):
        super().__init__()
        self.log_dir = log_dir
        self.writers = {}
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DATA_CLASS_SCALAR,
        )
        self.metadata = metadata.SerializeToString()

    def on_train_begin(self, logs=None):
        self.writers = {prefix: tf.summary.create_file_writer(os.path.join(self.log_dir, name))
                        for prefix, name in (("", "train"), ("val_", "validation"))}

    def on_epoch_end(self, epoch, logs=None):
        for prefix, writer in self.writers.items():
            with writer.as_default():
                for name in ("loss", "accuracy"):
                    if (value := (logs or {}).get(prefix + name)) is not None:
                        tf.summary.write(f"epoch_{name}", tf.constant(float(value), tf.float32),
                                         step=epoch + 1, metadata=self.metadata)
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()
