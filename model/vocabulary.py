"""The label vocabulary of a training run: the records' labels.txt if there is one, else the labels found in
the training records; every set's labels must be in it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import tensorflow as tf

from common import fs
from common.errors import UserError
from tfrecords_schema import VOCABULARY_FILE, read_vocabulary

if TYPE_CHECKING:
    from model.data import RecordSet

logger = logging.getLogger(__name__)


def find_vocabulary(files: Sequence[str]) -> tuple[list[str], str] | None:
    """The vocabulary file next to the record files and its path, or None if there is none.

    Records from several directories must not come with different vocabularies.
    """
    found: dict[tuple[str, ...], str] = {}
    for directory in sorted({fs.dirname(f) for f in files}):
        path = fs.join(directory, VOCABULARY_FILE) if directory else VOCABULARY_FILE
        if tf.io.gfile.exists(path):  # beside the records, so through TensorFlow's filesystems as they are
            found.setdefault(tuple(read_vocabulary(path)), path)
    if len(found) > 1:
        raise UserError("the training records come with different vocabularies: " + ", ".join(found.values()))
    if not found:
        return None
    (labels, path), = found.items()
    return list(labels), path


def choose_vocabulary(train: RecordSet) -> list[str]:
    """Sorted label vocabulary: the records' labels.txt if present, else the labels in the records."""
    if unlabelled := train.label_counts.get("", 0):
        example = f", e.g. video {train.example_ids['']!r}" if "" in train.example_ids else ""
        raise UserError(f"{unlabelled} training record(s) have no label{example}")
    if (found := find_vocabulary(train.files)) is not None:
        labels, path = found
        logger.info("vocabulary: %d labels from %s", len(labels), path)
    else:
        labels = sorted(label for label, count in train.label_counts.items() if count)
        logger.info("vocabulary: %d labels found in the training records", len(labels))
    if len(set(labels)) < 2:
        raise UserError(f"a classifier needs at least two labels, got {sorted(set(labels))}")
    return sorted(set(labels))


def check_labels(records: RecordSet, vocabulary: Sequence[str]) -> None:
    """Refuse a set with a label that is not in `vocabulary`."""
    known = set(vocabulary)
    for label, count in sorted(records.label_counts.items()):
        if count and label not in known:
            which = (f"record {records.example_ids[label]!r} has" if label in records.example_ids else
                     f"{count} record(s) have")
            raise UserError(f"{records.name} {which} label {label!r}, which is not in the vocabulary "
                            f"({', '.join(vocabulary)})")
