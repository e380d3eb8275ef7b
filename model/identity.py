"""Which model a model directory holds, told without loading it (no TensorFlow, no Keras): `model_id`.

A scheduled labelling run asks this first: when nothing changed since the last run of the same model, it
need not load the model at all (beam_jobs.plan).
"""

from __future__ import annotations

import hashlib

from common import fs
from common.errors import UserError

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
