"""The model directory: what training writes and what the labelling job loads.

    <model dir>/
      model.keras          the Keras model (custom layers registered in model.classifier), no optimizer state
      labels.txt           the label vocabulary; line i is the label of output i
      preprocessing.json   the RecordSpec of the training records (frames, feature dim, backbone id, image
                           size, sampling, ...): what the labelling job must reproduce to make its inputs
      saved_model/         the same model as a TF Serving SavedModel (inputs `features`, `mask`)
      history.csv, training_curves.png, logs/, metrics.json    written by model.train (metrics.json last)

    loaded = load_model_dir("gs://bucket/models/run-7")
    probabilities = loaded.model.predict_on_batch({"features": f, "mask": m})   # [B, T, D], [B, T] bool
    labels = [loaded.labels[i] for i in probabilities.argmax(-1)]

Paths may be local or gs:// (through tf.io.gfile).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Mapping, Sequence

from model.cli import quiet_tensorflow

quiet_tensorflow()  # before Keras imports TensorFlow

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

# Importing model.classifier registers its custom layers, so model.keras files load.
from model.classifier import FEATURES_INPUT, MASK_INPUT
from model.cli import UserError
from tfrecords_schema import VOCABULARY_FILE, RecordError, RecordSpec, read_vocabulary, write_vocabulary

MODEL_FILE = "model.keras"
LABELS_FILE = VOCABULARY_FILE
PREPROCESSING_FILE = "preprocessing.json"
SAVED_MODEL_DIR = "saved_model"
HISTORY_FILE = "history.csv"
TRAINING_CURVES_FILE = "training_curves.png"
METRICS_FILE = "metrics.json"
LOGS_DIR = "logs"
REQUIRED_FILES = (MODEL_FILE, LABELS_FILE, PREPROCESSING_FILE)


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


def is_remote(path: str) -> bool:
    return "://" in path


def join(path: str, *names: str) -> str:
    return "/".join([path.rstrip("/"), *names]) if is_remote(path) else os.path.join(path, *names)


def write_file(path: str, data: bytes | str) -> None:
    """Write `data` to a local or gs:// path."""
    with tf.io.gfile.GFile(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def write_json(path: str, value: Any) -> None:
    write_file(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def copy_tree(source: str, destination: str, exclude: Sequence[str] = ()) -> None:
    """Copy a local directory tree to a local or gs:// directory, leaving out the top-level `exclude` names."""
    for directory, subdirectories, files in os.walk(source):
        if directory == source:
            subdirectories[:] = [name for name in subdirectories if name not in exclude]
            files = [name for name in files if name not in exclude]
            target = destination
        else:
            target = join(destination, *os.path.relpath(directory, source).split(os.sep))
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(directory, name), join(target, name), overwrite=True)


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
    extra_preprocessing: Mapping[str, Any] | None = None,
) -> None:
    """Write `model.keras`, `labels.txt`, `preprocessing.json` and (unless `saved_model=False`) the
    TF Serving SavedModel into the directory `path` (created if needed, files in it replaced).

    `labels` must be sorted and unique (the vocabulary file is sorted; output i is `labels[i]`).
    `preprocessing.json` is `dataclasses.asdict(spec)` plus `extra_preprocessing`.
    """
    labels = list(labels)
    if labels != sorted(set(labels)):
        raise ValueError(f"labels must be sorted and unique, got {labels}")
    if problems := _check_model_fits(model, labels, spec):
        raise ValueError("model and records do not fit: " + "; ".join(problems))
    preprocessing = dataclasses.asdict(spec)
    for key in extra_preprocessing or {}:
        if key in preprocessing:
            raise ValueError(f"extra_preprocessing must not override the record spec's {key!r}")
    preprocessing.update(extra_preprocessing or {})

    tf.io.gfile.makedirs(path)
    with tempfile.TemporaryDirectory(prefix="model-export-") as scratch:
        local_model = os.path.join(scratch, MODEL_FILE)
        model.save(local_model)
        tf.io.gfile.copy(local_model, join(path, MODEL_FILE), overwrite=True)
        write_vocabulary(join(path, LABELS_FILE), labels)
        write_json(join(path, PREPROCESSING_FILE), preprocessing)
        if saved_model:
            target = join(path, SAVED_MODEL_DIR)
            if tf.io.gfile.exists(target):
                tf.io.gfile.rmtree(target)
            local_saved = target if not is_remote(path) else os.path.join(scratch, SAVED_MODEL_DIR)
            model.export(local_saved, format="tf_saved_model", verbose=False)
            if is_remote(path):
                copy_tree(local_saved, target)


def model_id(path: str) -> str:
    """16 hex digits of the SHA-256 of `model.keras`, `labels.txt` and `preprocessing.json`: the same files
    give the same id wherever they are, and any change to the weights, labels or preprocessing changes it."""
    digest = hashlib.sha256()
    for name in REQUIRED_FILES:
        with tf.io.gfile.GFile(join(path, name), "rb") as f:
            content = f.read()
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:16]


def _spec_from_preprocessing(preprocessing: Any, source: str) -> RecordSpec:
    if not isinstance(preprocessing, dict):
        raise UserError(f"{source} must hold a JSON object, got {type(preprocessing).__name__}")
    fields = {f.name: f for f in dataclasses.fields(RecordSpec)}
    required = [name for name, f in fields.items() if f.default is dataclasses.MISSING]
    if missing := [name for name in required if name not in preprocessing]:
        raise UserError(f"{source} lacks {', '.join(missing)}")
    return RecordSpec(**{name: preprocessing[name] for name in fields if name in preprocessing})


def load_model_dir(path: str) -> LoadedModel:
    """Load a model directory written by `export_model_dir` (local or gs://).

    Raises UserError naming the missing file when `model.keras`, `labels.txt` or `preprocessing.json` is
    absent, or when they do not fit together.
    """
    if not tf.io.gfile.isdir(path):
        raise UserError(f"model directory {path} does not exist")
    if missing := [name for name in REQUIRED_FILES if not tf.io.gfile.exists(join(path, name))]:
        raise UserError(f"{path} is not a model directory: it has no {' and no '.join(missing)}")
    try:
        labels = read_vocabulary(join(path, LABELS_FILE))
    except RecordError as exc:
        raise UserError(str(exc)) from None
    source = join(path, PREPROCESSING_FILE)
    try:
        preprocessing = read_json(source)
    except json.JSONDecodeError as exc:
        raise UserError(f"{source} is not valid JSON: {exc}") from None
    spec = _spec_from_preprocessing(preprocessing, source)
    with tempfile.TemporaryDirectory(prefix="model-load-") as scratch:
        local_model = join(path, MODEL_FILE)
        if is_remote(path):
            local_model = os.path.join(scratch, MODEL_FILE)
            tf.io.gfile.copy(join(path, MODEL_FILE), local_model)
        try:
            model = keras.saving.load_model(local_model, compile=False)
        except (ValueError, OSError) as exc:
            raise UserError(f"cannot load {join(path, MODEL_FILE)}: {exc}") from None
    if problems := _check_model_fits(model, labels, spec):
        raise UserError(f"{path} does not hold together: " + "; ".join(problems))
    return LoadedModel(model=model, labels=labels, spec=spec, model_id=model_id(path), path=path)


def remove_tree(path: str) -> None:
    """Remove a local or gs:// directory tree if it exists."""
    if is_remote(path):
        if tf.io.gfile.exists(path):
            tf.io.gfile.rmtree(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
