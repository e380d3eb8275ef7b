"""Which model a model directory holds, told without loading it (no TensorFlow, no Keras): `model_id`, and the
records it was trained on, `read_spec`.

A scheduled labelling run asks this first: when nothing changed since the last run of the same model, it
need not load the model at all (beam_jobs.plan).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from common import fs
from common.errors import EXIT_DATA_ERROR, OperationalError, UserError
from tfrecords_schema import RecordSpec

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"  # tfrecords_schema.VOCABULARY_FILE (model.export checks they agree)
PREPROCESSING_FILE = "preprocessing.json"
REQUIRED_FILES = (MODEL_FILE, LABELS_FILE, PREPROCESSING_FILE)


def model_id(path: str) -> str:
    """16 hex digits of the SHA-256 of `model.keras`, `labels.txt` and `preprocessing.json`: the same files
    give the same id wherever they are, and any change to the weights, labels or preprocessing changes it."""
    digest = hashlib.sha256()
    for name in REQUIRED_FILES:
        content = fs.read_bytes(fs.join(path, name))
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:16]


def check_files(path: str) -> None:
    """A UserError naming what is missing when `path` is not a model directory (its files are not read)."""
    if not fs.is_dir(path):
        raise UserError(f"model directory {path} does not exist")
    if missing := [name for name in REQUIRED_FILES if not fs.exists(fs.join(path, name))]:
        raise UserError(f"{path} is not a model directory: it has no {' and no '.join(missing)}")


def corrupt(path: str, why: str) -> OperationalError:
    return OperationalError(f"{path} is corrupt or truncated: {why}", EXIT_DATA_ERROR)


def spec_from_preprocessing(preprocessing: Any, source: str) -> RecordSpec:
    if not isinstance(preprocessing, dict):
        raise UserError(f"{source} must hold a JSON object, got {type(preprocessing).__name__}")
    fields = {f.name: f for f in dataclasses.fields(RecordSpec)}
    required = [name for name, f in fields.items() if f.default is dataclasses.MISSING]
    if missing := [name for name in required if name not in preprocessing]:
        raise UserError(f"{source} lacks {', '.join(missing)}")
    return RecordSpec(**{name: preprocessing[name] for name in fields if name in preprocessing})


def read_spec(path: str) -> RecordSpec:
    """The records a model directory was trained on (its `preprocessing.json`): what a labelling run checks its
    options against before it touches the output."""
    source = fs.join(path, PREPROCESSING_FILE)
    try:
        preprocessing = fs.read_json(source)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise corrupt(source, f"it is not valid JSON ({exc})") from None
    return spec_from_preprocessing(preprocessing, source)
