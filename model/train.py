"""Train the video classifier on feature records and write a model directory (see model.export).

    python -m model.train --train 'features/train-*.tfrecord' --test 'features/test-*.tfrecord' \\
        --output models/run-1
    python -m model.train --train a/ --train b/ --validation val/ --output models/run-2 --seed 3
    python -m model.train --train features/ --output models/reference --epochs 5 --patience 0 --lr-patience 0 \\
        --ema-momentum 0 --start-from-epoch 0 --num-heads 1

Defaults are the recipe that gave the best held-out accuracy: Adam starting at 1e-3, halved whenever the
validation loss has not improved for 10 epochs (`--lr-patience`, down to 1e-5), batch 32, up to 200 epochs
with early stopping once the validation loss has not improved for 30 epochs, and the weights of the best
epoch (lowest validation loss) kept. The first 60 epochs are a warm-up (`--start-from-epoch`, as in Keras's
EarlyStopping): validated and logged but not judged, so the rate stays at its start, the run goes on, and
the best epoch is one after them. The weights validated, kept and exported are an exponential moving
average of the training weights (`--ema-momentum 0.99`, warmed up so that short runs average only their
recent steps; `--ema-momentum 0` uses the raw weights). The attention has 8 heads (`--num-heads`), each of key_dim
feature_dim / 8: the same weights as the reference's one head of key_dim feature_dim, but it reads frame order
from far fewer clips (bench/ANALYSIS.md section 7h). `--patience 0` turns early stopping off: all `--epochs` run
and the best epoch's weights are still kept; `--epochs 5 --patience 0 --lr-patience 0 --ema-momentum 0
--start-from-epoch 0 --num-heads 1` is the keras-io reference recipe.

Without `--validation`, a `--validation-split` share (0.15) of the training videos is held out, chosen by a
hash of the video id: the same videos are held out whatever the file order, sharding or seed.

The vocabulary is the `labels.txt` next to the training records (featurize writes one), else the sorted
labels found in them; records of a label outside it, or whose feature dim, frame count, backbone, image
size or sampling differ from the first training record's, are refused.

The run is staged in `<output>.partial` (a local temp dir for gs:// outputs; TensorBoard logs under
`logs/` there while it runs) and renamed to `<output>` only when finished, `metrics.json` written last.
`--resume` continues an interrupted run from its last finished epoch (same data and settings; the shuffle
order and feature noise after the restart differ from an uninterrupted run's). A finished model in `<output>`
is replaced only with `--overwrite`. The same `--seed` gives the same weights and metrics on the same machine and
thread settings (XLA-compiled steps on a CPU; TensorFlow's op determinism, without XLA, on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import re
import shutil
import sys
import tempfile
import time
from typing import Sequence

from model.cli import UserError, main, quiet_tensorflow

quiet_tensorflow()  # before TensorFlow is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import summary_pb2  # noqa: E402

from model import export  # noqa: E402
from model.classifier import (  # noqa: E402
    FEATURES_INPUT,
    MASK_INPUT,
    ClassifierConfig,
    build_classifier,
    compile_classifier,
)
from model.plots import training_curves_png  # noqa: E402
from tfrecords_schema import (  # noqa: E402
    VOCABULARY_FILE,
    RecordSpec,
    dataset_spec,
    label_lookup,
    make_decoded_dataset,
    match_record_files,
    read_vocabulary,
    to_model_inputs,
)

logger = logging.getLogger(__name__)

VALIDATION_BUCKETS = 10_000
MAX_SHUFFLE_BUFFER = 50_000
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "train_state.json"
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
LR_FACTOR = 0.5  # the learning rate is halved when the validation loss stalls
MIN_LEARNING_RATE = 1e-5


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run, as given on the command line."""

    train: tuple[str, ...]
    output: str
    validation: tuple[str, ...] = ()
    validation_split: float = 0.15
    test: tuple[str, ...] = ()
    epochs: int = 200
    patience: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_patience: int = 10
    ema_momentum: float = 0.99
    start_from_epoch: int = 60
    feature_noise: float = 0.0
    num_heads: int = 8
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    cache: bool = True

    def __post_init__(self):
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.epochs}")
        if self.patience < 0:
            raise UserError(f"--patience must be 0 (no early stopping) or more, got {self.patience}")
        if self.lr_patience < 0:
            raise UserError(f"--lr-patience must be 0 (constant learning rate) or more, got {self.lr_patience}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise UserError(f"--ema-momentum must be 0 (no averaging) or more and below 1, got {self.ema_momentum}")
        if self.start_from_epoch < 0:
            raise UserError(f"--start-from-epoch must be 0 (judge every epoch) or more, got {self.start_from_epoch}")
        if not 0.0 <= self.feature_noise <= 2.0:
            raise UserError(f"--feature-noise must be 0 (off) to 2, got {self.feature_noise}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.num_heads < 1:
            raise UserError(f"--num-heads must be at least 1, got {self.num_heads}")
        if not self.learning_rate > 0:
            raise UserError(f"--learning-rate must be positive, got {self.learning_rate}")
        if not self.validation and not 0.0 < self.validation_split < 1.0:
            raise UserError(f"--validation-split must be between 0 and 1, got {self.validation_split}")


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(
        prog="python -m model.train",
        description="Train the video classifier on feature records and write a model directory.",
        epilog="""examples:
  # defaults: 60 warm-up epochs, then the learning rate halved after 10 epochs without a lower validation
  # loss and early stopping after 30 (up to 200 epochs), moving average of the weights kept, 15% held out
  # by video id
  python -m model.train --train features/train --test features/test --output models/run1

  # the Keras reference recipe: 5 epochs at a constant learning rate, no early stopping, raw weights, one
  # attention head
  python -m model.train --train 'features/train/features-*.tfrecord' --epochs 5 --patience 0 --lr-patience 0 \\
      --ema-momentum 0 --start-from-epoch 0 --num-heads 1 --output models/ref
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--train", action="append", required=True, metavar="PATTERN",
                        help="training feature records: a file pattern or a directory (repeatable)")
    held_out = parser.add_mutually_exclusive_group()
    held_out.add_argument("--validation", action="append", default=[], metavar="PATTERN",
                          help="validation records (repeatable); default: a share of the training videos")
    held_out.add_argument("--validation-split", type=float, default=0.15, metavar="FRACTION",
                          help="share of training videos held out for validation, by video id hash "
                               "(default: %(default)s)")
    parser.add_argument("--test", action="append", default=[], metavar="PATTERN",
                        help="test records, evaluated once with the final weights (repeatable, optional)")
    parser.add_argument("--output", required=True, help="model directory to write (local or gs://)")
    parser.add_argument("--epochs", type=int, default=200,
                        help="most epochs to train (default: %(default)s)")
    parser.add_argument("--patience", type=int, default=30,
                        help="stop after this many epochs without a lower validation loss; 0 trains all "
                             "--epochs (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="videos per training step (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="Adam's learning rate at the start (default: %(default)s)")
    parser.add_argument("--lr-patience", type=int, default=10,
                        help=f"halve the learning rate after this many epochs without a lower validation loss "
                             f"(not below {MIN_LEARNING_RATE:g}); 0 keeps it constant (default: %(default)s)")
    parser.add_argument("--ema-momentum", type=float, default=0.99,
                        help="validate, keep and export an exponential moving average of the weights, updated "
                             "every step with this momentum, at most (1 + t) / (10 + t) at step t (so 0.99 binds "
                             "only after 890 steps; before, the average spans about the last tenth of the steps); "
                             "0 uses the raw weights (default: %(default)s)")
    parser.add_argument("--start-from-epoch", type=int, default=60, metavar="N",
                        help="warm-up: the first N epochs are validated but not judged (no checkpoint kept, no "
                             "halving, no early stopping), like Keras's EarlyStopping(start_from_epoch=N); 0 judges "
                             "every epoch (default: %(default)s)")
    parser.add_argument("--feature-noise", type=float, default=0.0, metavar="SIGMA",
                        help="augment the training videos: every epoch, multiply each feature value by a fresh "
                             "log-normal factor exp(SIGMA * N(0, 1) - SIGMA**2 / 2) (mean 1); validation and test "
                             "features are left as they are; 0 turns it off (default: %(default)s)")
    parser.add_argument("--num-heads", type=int, default=8,
                        help="attention heads, each of key_dim feature_dim / N, so the weight count does not "
                             "change; 1 is the reference model (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds weights, dropout and shuffling; same seed, same model (default: %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run staged in <output>.partial")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished model in --output")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="re-read the records every epoch instead of keeping them in memory")
    args = parser.parse_args(argv)
    return TrainConfig(
        train=tuple(args.train),
        output=args.output,
        validation=tuple(args.validation),
        validation_split=args.validation_split,
        test=tuple(args.test),
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_patience=args.lr_patience,
        ema_momentum=args.ema_momentum,
        start_from_epoch=args.start_from_epoch,
        feature_noise=args.feature_noise,
        num_heads=args.num_heads,
        seed=args.seed,
        resume=args.resume,
        overwrite=args.overwrite,
        cache=args.cache,
    )


# --- Records -------------------------------------------------------------------------------------------


def in_validation_split(video_ids: tf.Tensor, fraction: float) -> tf.Tensor:
    """Whether each video id falls in the held-out share `fraction`; depends on the id alone (FarmHash)."""
    buckets = tf.strings.to_hash_bucket_fast(video_ids, VALIDATION_BUCKETS)
    return buckets < int(round(fraction * VALIDATION_BUCKETS))


@dataclasses.dataclass(frozen=True)
class RecordSet:
    """One named set of records (training, validation or test) and what a first pass found in it."""

    name: str
    patterns: tuple[str, ...]
    files: tuple[str, ...]
    spec: RecordSpec
    video_ids: np.ndarray  # str, one per record, in file order
    labels: np.ndarray  # str, one per record


def record_failure(exc: tf.errors.OpError, spec: RecordSpec) -> str:
    """A readable line for a record that failed to parse or check inside tf.data (TensorFlow wraps the
    cause in iterator and function names)."""
    text = exc.message.strip().splitlines()[0] if exc.message.strip() else type(exc).__name__
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"Error in user-defined function passed to .*? transformation with iterator: \S+: ", "", text)
    return (f"a record does not fit the others (feature_dim {spec.feature_dim}, {spec.max_seq_length} frames, "
            f"backbone {spec.backbone_id!r}): {text.strip()}")


def _scan(name: str, patterns: Sequence[str], spec: RecordSpec | None = None) -> RecordSet:
    """Match, check and read the ids and labels of one set of records (every record is parsed and checked)."""
    files = match_record_files(list(patterns))
    found = dataset_spec(files)
    if spec is not None and (problems := spec.mismatches(found)):
        raise UserError(f"{name} records ({', '.join(patterns)}) do not match the training records: "
                        + "; ".join(problems))
    pairs = make_decoded_dataset(files, spec=found).map(
        lambda d: (d["video_id"], d["label"]), num_parallel_calls=tf.data.AUTOTUNE
    ).batch(4096)
    ids, labels = [], []
    try:
        for batch_ids, batch_labels in pairs:
            ids.extend(v.decode() for v in batch_ids.numpy())
            labels.extend(v.decode() for v in batch_labels.numpy())
    except tf.errors.InvalidArgumentError as exc:
        raise UserError(f"{name} records: {record_failure(exc, found)}") from None
    return RecordSet(name, tuple(patterns), tuple(files), found, np.array(ids, dtype=object),
                     np.array(labels, dtype=object))


def _dirname(path: str) -> str:
    return posixpath.dirname(path) if export.is_remote(path) else os.path.dirname(path)


def find_vocabulary(files: Sequence[str]) -> tuple[list[str], str] | None:
    """The vocabulary file next to the record files and its path, or None if there is none.

    Records from several directories must not come with different vocabularies.
    """
    found: dict[tuple[str, ...], str] = {}
    for directory in sorted({_dirname(f) for f in files}):
        path = export.join(directory, VOCABULARY_FILE) if directory else VOCABULARY_FILE
        if tf.io.gfile.exists(path):
            found.setdefault(tuple(read_vocabulary(path)), path)
    if len(found) > 1:
        raise UserError("the training records come with different vocabularies: " + ", ".join(found.values()))
    if not found:
        return None
    (labels, path), = found.items()
    return list(labels), path


def choose_vocabulary(train: RecordSet) -> list[str]:
    """Sorted label vocabulary: the records' labels.txt if present, else the labels in the records."""
    if unlabelled := [vid for vid, label in zip(train.video_ids, train.labels) if not label]:
        raise UserError(f"{len(unlabelled)} training record(s) have no label, e.g. video {unlabelled[0]!r}")
    if (found := find_vocabulary(train.files)) is not None:
        labels, path = found
        logger.info("vocabulary: %d labels from %s", len(labels), path)
    else:
        labels = sorted(set(train.labels))
        logger.info("vocabulary: %d labels found in the training records", len(labels))
    if len(set(labels)) < 2:
        raise UserError(f"a classifier needs at least two labels, got {sorted(set(labels))}")
    return sorted(set(labels))


def check_labels(records: RecordSet, vocabulary: Sequence[str]) -> None:
    known = set(vocabulary)
    for video_id, label in zip(records.video_ids, records.labels):
        if label not in known:
            raise UserError(
                f"{records.name} record {video_id!r} has label {label!r}, which is not in the vocabulary "
                f"({', '.join(vocabulary)})"
            )


def _model_dataset(
    records: RecordSet,
    table: tf.lookup.StaticHashTable,
    size: int,
    keep_validation: bool | None = None,
    fraction: float = 0.0,
    cache: bool = True,
) -> tf.data.Dataset:
    """Unbatched `({"features": [T, D] float32, "mask": [T] bool}, label_id int32)` in file order.

    `keep_validation` True/False keeps only the held-out/the remaining share of a split set, None keeps all;
    `size` is how many records that leaves (known from the first pass, so Keras knows the epoch length).
    """
    ds = make_decoded_dataset(list(records.files), spec=records.spec)
    if keep_validation is not None:
        ds = ds.filter(lambda d: tf.equal(in_validation_split(d["video_id"], fraction), keep_validation))
    ds = ds.map(lambda d: to_model_inputs(d, table), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda inputs, label: ({FEATURES_INPUT: inputs[0], MASK_INPUT: inputs[1]}, label))
    ds = ds.apply(tf.data.experimental.assert_cardinality(size))
    return ds.cache() if cache else ds


def with_feature_noise(ds: tf.data.Dataset, sigma: float, seed: int) -> tf.data.Dataset:
    """Multiplies every feature value by exp(sigma * N(0, 1) - sigma**2 / 2): mean 1, never negative (pooled CNN
    features are not), fresh for every video in every epoch. The draws are stateless, keyed by a seeded stream
    that restarts differently each epoch, so the same seed gives the same noise."""
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def noisy(example, key):
        inputs, label = example
        features = inputs[FEATURES_INPUT]
        draw = tf.random.stateless_normal(tf.shape(features), seed=tf.stack([key, tf.constant(seed, tf.int64)]),
                                          dtype=features.dtype)
        factor = tf.exp(sigma * draw - sigma * sigma / 2.0)
        return {**inputs, FEATURES_INPUT: features * factor}, label

    return tf.data.Dataset.zip((ds, keys)).map(noisy, num_parallel_calls=tf.data.AUTOTUNE)


# --- Training state: best weights, early stopping, history, resumption ---------------------------------


class TrainingState(keras.callbacks.Callback):
    """After every epoch: keeps the best weights by validation loss (the moving average of the weights when
    the optimizer keeps one: those are the weights validated), halves the learning rate after
    `lr_patience` epochs without improvement (0: never; not below MIN_LEARNING_RATE), stops early after
    `patience` epochs without improvement (0: never), writes `history.csv`, and saves what `--resume` needs
    (the last model with its optimizer, learning rate included, and this state) so an interrupted run can
    go on.

    The first `start_from_epoch` epochs are a warm-up, as in Keras's `EarlyStopping(start_from_epoch=...)`:
    they are validated and logged but not judged, so none of them is kept as the best and none lowers the
    learning rate or stops the run. (On small validation sets the loss often has an early low while the
    validation accuracy is still rising; judged from epoch 1, that low halved the rate and stopped runs
    before the model had learnt the order of the frames: bench/ANALYSIS.md section 7c.)"""

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
        self.history = read_history(os.path.join(staging, export.HISTORY_FILE))[: self.epochs_done]

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
        os.makedirs(os.path.join(self.staging, CHECKPOINTS_DIR), exist_ok=True)
        judged = self.epochs_done > self.start_from_epoch
        if judged and val_loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch = val_loss, self.epochs_done
            with averaged_weights(self.model):  # the weights that were validated
                _replace_atomically(self.best_weights_path, self.model.save_weights)
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        metrics = {key: float(logs[key]) for key in HISTORY_COLUMNS[1:] if key in logs}
        self.history.append({"epoch": self.epochs_done, **metrics, "learning_rate": learning_rate})
        write_history(os.path.join(self.staging, export.HISTORY_FILE), self.history)
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
        _replace_atomically(self.last_model_path, self.model.save)
        _replace_atomically(os.path.join(self.staging, STATE_FILE), self._write_state)

    def _write_state(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({"epochs_done": self.epochs_done, "best_epoch": self.best_epoch,
                       "best_val_loss": self.best_val_loss, "stopped_early": self.stopped_early,
                       "last_lr_change": self.last_lr_change,
                       "fingerprint": self.fingerprint}, f, indent=2)


@contextlib.contextmanager
def averaged_weights(model: keras.Model):
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
            value = keras.ops.convert_to_numpy(variable)
            variable.assign(average)
            average.assign(value)

    swap()
    try:
        yield
    finally:
        swap()


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


def _replace_atomically(path: str, write) -> None:
    """`write(tmp)` then rename onto `path`, so a crash never leaves a half-written checkpoint."""
    stem, ext = os.path.basename(path).split(".", 1)
    tmp = os.path.join(os.path.dirname(path), f"{stem}-next.{ext}")
    write(tmp)
    os.replace(tmp, path)


def write_history(path: str, rows: Sequence[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_history(path: str) -> list[dict]:
    """Rows of a `history.csv` (epoch as int, metrics as float); [] if there is none."""
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(io.StringIO(f.read()))]


# --- Output directory ----------------------------------------------------------------------------------


def staging_dir(output: str) -> str:
    """Where a run is built before it becomes `output`: beside it, or in the local temp dir for gs://."""
    if export.is_remote(output):
        key = hashlib.sha256(output.rstrip("/").encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), "video-annotation-train", f"{key}.partial")
    return os.path.normpath(output) + ".partial"


def _check_output(output: str, overwrite: bool, resume: bool = False) -> None:
    """Refuse to replace a finished model, or a directory of something else, unless told to. With `resume`,
    an unfinished output (an interrupted copy to gs://) may be replaced."""
    if not tf.io.gfile.exists(output):
        return
    if not tf.io.gfile.isdir(output):
        raise UserError(f"--output {output} exists and is not a directory")
    if tf.io.gfile.exists(export.join(output, export.METRICS_FILE)):
        if not overwrite:
            raise UserError(f"{output} already holds a trained model; pass --overwrite to replace it")
    elif tf.io.gfile.listdir(output) and not (overwrite or resume):
        raise UserError(f"--output {output} exists and is not empty; pass --overwrite to replace it")


def _promote(staging: str, output: str) -> None:
    """Make the finished `staging` directory `output`, without its checkpoints and resumption state.

    Locally a rename. To gs:// a copy with metrics.json last; the staging directory, checkpoints included,
    is removed only after it, so if the copy fails `--resume` copies again instead of training again.
    """
    resumption = (CHECKPOINTS_DIR, STATE_FILE)
    if export.is_remote(output):
        export.remove_tree(output)
        export.copy_tree(staging, output, exclude=(*resumption, export.METRICS_FILE))
        tf.io.gfile.copy(os.path.join(staging, export.METRICS_FILE), export.join(output, export.METRICS_FILE),
                         overwrite=True)
        shutil.rmtree(staging)
        return
    shutil.rmtree(os.path.join(staging, CHECKPOINTS_DIR), ignore_errors=True)
    os.remove(os.path.join(staging, STATE_FILE))
    output = os.path.normpath(output)
    old = None
    if os.path.isdir(output):
        old = f"{output}.old-{os.getpid()}"
        os.replace(output, old)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    os.replace(staging, output)
    if old:
        shutil.rmtree(old)


# --- The run -------------------------------------------------------------------------------------------


def _fingerprint(config: TrainConfig, train: RecordSet, validation: RecordSet | None, vocabulary) -> dict:
    """What a resumed run must share with the interrupted one."""
    return {
        "train_files": list(train.files),
        "validation_files": list(validation.files) if validation else [],
        "validation_split": None if validation else config.validation_split,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "lr_patience": config.lr_patience,
        "ema_momentum": config.ema_momentum,
        "start_from_epoch": config.start_from_epoch,
        "feature_noise": config.feature_noise,
        "num_heads": config.num_heads,
        "seed": config.seed,
        "labels": list(vocabulary),
        "record_spec": dataclasses.asdict(train.spec),
    }


def _load_resume_state(staging: str, fingerprint: dict) -> dict:
    state_path = os.path.join(staging, STATE_FILE)
    if not os.path.exists(state_path) or not os.path.exists(os.path.join(staging, CHECKPOINTS_DIR, "last.keras")):
        raise UserError(f"--resume: there is no interrupted run to continue in {staging}")
    with open(state_path) as f:
        state = json.load(f)
    before = state.get("fingerprint", {})
    if differences := [key for key in fingerprint if before.get(key) != fingerprint[key]]:
        raise UserError(f"--resume: the interrupted run in {staging} used different {', '.join(differences)}")
    return state


def _evaluate(model: keras.Model, dataset: tf.data.Dataset | None, batch_size: int) -> dict:
    if dataset is None:
        return {"loss": None, "accuracy": None}
    result = model.evaluate(dataset.batch(batch_size), verbose=0, return_dict=True)
    return {"loss": float(result["loss"]), "accuracy": float(result["accuracy"])}


def run(argv: Sequence[str] | None = None) -> dict:
    """Train as the command line says and write the model directory; returns the metrics (metrics.json)."""
    config = parse_args(argv)
    _check_output(config.output, config.overwrite, config.resume)

    train = _scan("training", config.train)
    validation = _scan("validation", config.validation, train.spec) if config.validation else None
    test = _scan("test", config.test, train.spec) if config.test else None
    for other in (validation, test):
        if other and (shared := sorted(set(train.files) & set(other.files))):
            raise UserError(f"{shared[0]} is both a training and a {other.name} file")
    if train.spec.feature_dim % config.num_heads:
        raise UserError(f"--num-heads must divide the records' feature dim ({train.spec.feature_dim}), "
                        f"got {config.num_heads}")
    vocabulary = choose_vocabulary(train)
    for records in (train, validation, test):
        if records is not None:
            check_labels(records, vocabulary)

    if validation is None:
        held_out = in_validation_split(tf.constant(train.video_ids.astype(str)), config.validation_split).numpy()
        num_train, num_validation = int((~held_out).sum()), int(held_out.sum())
        if num_validation == 0 or num_train == 0:
            raise UserError(
                f"--validation-split {config.validation_split} of {len(held_out)} training videos leaves "
                f"{num_train} to train on and {num_validation} to validate on; pass --validation records"
            )
        train_labels = train.labels[~held_out]
    else:
        num_train, num_validation = len(train.labels), len(validation.labels)
        train_labels = train.labels
    if test is not None and (leaked := set(test.video_ids) & set(train.video_ids)):
        logger.warning("%d test video id(s) are also training videos, e.g. %r", len(leaked), sorted(leaked)[0])
    counts = {label: int((train_labels == label).sum()) for label in vocabulary}
    logger.info("training on %d videos %s, validating on %d%s", num_train, counts, num_validation,
                f", testing on {len(test.labels)}" if test else "")
    if missing := [label for label, count in counts.items() if count == 0]:
        logger.warning("no training videos for label(s) %s", ", ".join(missing))

    staging = staging_dir(config.output)
    fingerprint = _fingerprint(config, train, validation, vocabulary)
    state = _load_resume_state(staging, fingerprint) if config.resume else None
    if not config.resume and os.path.exists(staging):
        logger.info("discarding the unfinished run in %s (--resume continues it)", staging)
        shutil.rmtree(staging)
    os.makedirs(staging, exist_ok=True)

    keras.utils.set_random_seed(config.seed)
    if tf.config.list_physical_devices("GPU"):
        # Bit-for-bit repeatable runs on a GPU need TensorFlow's op determinism (Keras then skips XLA). On a CPU
        # the XLA-compiled steps repeat exactly as they are, and about 3x faster than with it on.
        tf.config.experimental.enable_op_determinism()

    table = label_lookup(vocabulary)
    split = config.validation_split if validation is None else 0.0
    if validation is None:
        train_ds = _model_dataset(train, table, num_train, False, split, config.cache)
        validation_ds = _model_dataset(train, table, num_validation, True, split, config.cache)
    else:
        train_ds = _model_dataset(train, table, num_train, cache=config.cache)
        validation_ds = _model_dataset(validation, table, num_validation, cache=config.cache)
    test_ds = _model_dataset(test, table, len(test.labels), cache=config.cache) if test else None
    fit_ds = train_ds.shuffle(min(num_train, MAX_SHUFFLE_BUFFER), seed=config.seed, reshuffle_each_iteration=True)
    if config.feature_noise:
        fit_ds = with_feature_noise(fit_ds, config.feature_noise, config.seed)
    fit_ds = fit_ds.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)

    classifier_config = ClassifierConfig(
        num_classes=len(vocabulary), max_seq_length=train.spec.max_seq_length, feature_dim=train.spec.feature_dim,
        num_heads=config.num_heads,
    )
    tracker = TrainingState(staging, config.patience, fingerprint, state, lr_patience=config.lr_patience,
                            start_from_epoch=config.start_from_epoch)
    if state is not None:
        model = keras.saving.load_model(tracker.last_model_path)
        logger.info("resuming after epoch %d (best so far: epoch %d)", tracker.epochs_done, tracker.best_epoch)
    else:
        model = compile_classifier(build_classifier(classifier_config), config.learning_rate, config.ema_momentum)

    started = time.monotonic()  # train_seconds: this session's model.fit only
    if tracker.epochs_done < config.epochs and not tracker.stopped_early:
        model.fit(
            fit_ds,
            validation_data=validation_ds.batch(config.batch_size),
            epochs=config.epochs,
            initial_epoch=tracker.epochs_done,
            callbacks=[
                # Validates the averaged weights: swaps them in around each validation pass.
                *([keras.callbacks.SwapEMAWeights()] if config.ema_momentum else []),
                EpochSummaries(os.path.join(staging, export.LOGS_DIR)),
                tracker,
            ],
            shuffle=False,  # fit_ds is shuffled by tf.data, seeded
            verbose=2,
        )
    train_seconds = round(time.monotonic() - started, 1)
    if tracker.best_epoch:
        model.load_weights(tracker.best_weights_path)
    else:
        if tracker.epochs_done <= config.start_from_epoch:
            logger.warning("all %d epochs were warm-up (--start-from-epoch %d), none was judged; keeping the last "
                           "epoch's weights", tracker.epochs_done, config.start_from_epoch)
        else:
            logger.warning("the validation loss was never finite; keeping the last epoch's weights")

    final = build_classifier(classifier_config)
    final.set_weights(model.get_weights())
    compile_classifier(final, config.learning_rate)
    scores = {
        "train": _evaluate(final, train_ds, config.batch_size),
        "val": _evaluate(final, validation_ds, config.batch_size),
        "test": _evaluate(final, test_ds, config.batch_size),
    }

    export.export_model_dir(final, vocabulary, train.spec, staging)
    history = read_history(os.path.join(staging, export.HISTORY_FILE))
    columns = {key: [row.get(key, math.nan) for row in history] for key in HISTORY_COLUMNS}
    curves = training_curves_png(columns, tracker.best_epoch)
    export.write_file(os.path.join(staging, export.TRAINING_CURVES_FILE), curves)
    metrics = {
        "model_id": export.model_id(staging),
        **{f"{split_name}_{key}": value for split_name, result in scores.items() for key, value in result.items()},
        "num_train_examples": num_train,
        "num_val_examples": num_validation,
        "num_test_examples": len(test.labels) if test else 0,
        "epochs_run": tracker.epochs_done,
        "best_epoch": tracker.best_epoch,
        "best_val_loss": tracker.best_val_loss if tracker.best_epoch else None,
        "stopped_early": tracker.stopped_early,
        "seed": config.seed,
        "labels": list(vocabulary),
        "train_seconds": train_seconds,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()},
        "classifier": dataclasses.asdict(classifier_config),
    }
    export.write_json(os.path.join(staging, export.METRICS_FILE), metrics)
    _check_output(config.output, config.overwrite, config.resume)
    _promote(staging, config.output)
    logger.info("wrote %s: val accuracy %.3f%s (best epoch %d of %d)", config.output, metrics["val_accuracy"],
                f", test accuracy {metrics['test_accuracy']:.3f}" if test else "", tracker.best_epoch,
                tracker.epochs_done)
    return metrics


if __name__ == "__main__":
    sys.exit(main(run))
