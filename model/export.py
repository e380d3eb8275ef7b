"""The model directory: what training writes and what the labelling job loads.

    <model dir>/
      model.keras          the Keras model (custom layers registered in model.classifier), no optimizer state
      labels.txt           the label vocabulary; line i is the label of output i
      preprocessing.json   the RecordSpec of the training records (frames, feature dim, backbone id, image
                           size, sampling, ...): what the labelling job must reproduce to make its inputs
      saved_model/         the same model as a TF Serving SavedModel (inputs `features`, `mask`; output
                           `label_probabilities`)
      history.csv, training_curves.png, logs/, metrics.json    written by model.train (metrics.json last)

    loaded = load_model_dir("gs://bucket/models/run-7")
    probabilities = loaded.model.predict_on_batch({"features": f, "mask": m})   # [B, T, D], [B, T] bool
    labels = [loaded.labels[i] for i in probabilities.argmax(-1)]

Paths may be local or gs:// (through common.fs).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import zipfile
from typing import Sequence

import keras

from common import fs
from common.errors import UserError

# Importing model.classifier registers its custom layers, so model.keras files load.
from model.classifier import FEATURES_INPUT, MASK_INPUT, OUTPUT_NAME
from model.identity import (LABELS_FILE, MODEL_FILE, PREPROCESSING_FILE, REQUIRED_FILES, check_files,  # noqa: F401
                            corrupt as _corrupt, model_id, read_spec)
from tfrecords_schema import VOCABULARY_FILE, RecordError, RecordSpec, parse_vocabulary, vocabulary_text

assert LABELS_FILE == VOCABULARY_FILE  # model.identity names the files without importing TensorFlow
SAVED_MODEL_DIR = "saved_model"
HISTORY_FILE = "history.csv"
TRAINING_CURVES_FILE = "training_curves.png"
METRICS_FILE = "metrics.json"
LOGS_DIR = "logs"


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A loaded model directory. `model` maps `{"features": [B, T, D] float32, "mask": [B, T] bool}` to
    `[B, len(labels)]` probabilities; `spec` is what its input records must match; `model_id` names the
    exact model (see `model_id`)."""

    model: keras.Model
    labels: list[str]
    spec: RecordSpec
    model_id: str
    path: str


def _check_model_fits(model: keras.Model, labels: Sequence[str], spec: RecordSpec) -> list[str]:
    problems = []
    classes = model.output_shape[-1]
    if classes != len(labels):
        problems.append(f"the model has {classes} outputs but there are {len(labels)} labels")
    inputs = model.input if isinstance(model.input, dict) else {}
    if set(inputs) != {FEATURES_INPUT, MASK_INPUT}:
        problems.append(f"the model's inputs must be named {FEATURES_INPUT!r} and {MASK_INPUT!r}, got {sorted(inputs)}")
    else:
        shape = tuple(inputs[FEATURES_INPUT].shape[1:])
        if shape != (spec.max_seq_length, spec.feature_dim):
            problems.append(
                f"the model takes features of shape {shape} but the records hold "
                f"({spec.max_seq_length}, {spec.feature_dim})"
            )
    return problems


def export_model_dir(
    model: keras.Model,
    labels: Sequence[str],
    spec: RecordSpec,
    path: str,
    *,
    saved_model: bool = True,
) -> None:
    """Write `model.keras`, `labels.txt`, `preprocessing.json` and (unless `saved_model=False`) the
    TF Serving SavedModel into the directory `path` (created if needed, files in it replaced).

    `labels` must be sorted and unique (the vocabulary file is sorted; output i is `labels[i]`).
    `preprocessing.json` is `dataclasses.asdict(spec)`.
    """
    labels = list(labels)
    if labels != sorted(set(labels)):
        raise ValueError(f"labels must be sorted and unique, got {labels}")
    if problems := _check_model_fits(model, labels, spec):
        raise ValueError("model and records do not fit: " + "; ".join(problems))
    fs.makedirs(path)
    with tempfile.TemporaryDirectory(prefix="model-export-") as scratch:
        local_model = os.path.join(scratch, MODEL_FILE)
        model.save(local_model)
        fs.copy_file(local_model, fs.join(path, MODEL_FILE))
        fs.write_text(fs.join(path, LABELS_FILE), vocabulary_text(labels))
        fs.write_json(fs.join(path, PREPROCESSING_FILE), dataclasses.asdict(spec))
        if saved_model:
            target = fs.join(path, SAVED_MODEL_DIR)
            fs.remove_tree(target)
            local_saved = target if not fs.is_remote(path) else os.path.join(scratch, SAVED_MODEL_DIR)
            write_saved_model(model, local_saved)
            if fs.is_remote(path):
                for file in fs.files_under(local_saved):
                    fs.copy_file(file, fs.join(target, fs.relative(file, local_saved)))


def write_saved_model(model: keras.Model, path: str) -> None:
    """The TF Serving SavedModel of `model` in the local folder `path`: its `serving_default` signature takes
    `features` [batch, T, D] float32 and `mask` [batch, T] bool and returns `label_probabilities`
    [batch, classes] float32, the names model.keras and the model card use."""
    import tensorflow as tf

    _, frames, dim = model.input[FEATURES_INPUT].shape
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(features, mask):
        return {OUTPUT_NAME: model({FEATURES_INPUT: features, MASK_INPUT: mask}, training=False)}

    archive.add_endpoint("serve", serve, input_signature=[
        tf.TensorSpec([None, frames, dim], tf.float32, name=FEATURES_INPUT),
        tf.TensorSpec([None, frames], tf.bool, name=MASK_INPUT)])
    archive.write_out(path, verbose=False)


def load_model_dir(path: str) -> LoadedModel:
    """Load a model directory written by `export_model_dir` (local or gs://).

    Raises UserError naming the missing file when `model.keras`, `labels.txt` or `preprocessing.json` is
    absent, or when they do not fit together; OperationalError (exit 65) when one of them is corrupt or
    truncated.
    """
    check_files(path)
    source = fs.join(path, LABELS_FILE)
    try:
        labels = parse_vocabulary(fs.read_text(source), source)
    except RecordError as exc:
        raise UserError(str(exc)) from None
    except UnicodeDecodeError:
        raise _corrupt(source, "it is not text") from None
    spec = read_spec(path)
    source = fs.join(path, MODEL_FILE)
    with fs.local_copy(source) as local_model:
        try:
            model = keras.saving.load_model(local_model, compile=False)
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise _corrupt(source, f"Keras cannot load it ({type(exc).__name__}: {detail})") from None
    if problems := _check_model_fits(model, labels, spec):
        raise UserError(f"{path} does not hold together: " + "; ".join(problems))
    return LoadedModel(model=model, labels=labels, spec=spec, model_id=model_id(path), path=path)
