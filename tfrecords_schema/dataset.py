"""tf.data readers for sharded feature records, and the label vocabulary file.

    ds = make_dataset("out/features-*.tfrecord", vocabulary=read_vocabulary("out/labels.txt"),
                      batch_size=16, shuffle=True, seed=7)
    for (features, mask), label_ids in ds: ...   # [B, T, D] float32, [B, T] bool, [B] int32

Paths may be local or gs:// (TensorFlow reads GCS natively).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import tensorflow as tf

from tfrecords_schema.schema import RecordError, RecordSpec, parse_video_record, read_record_spec

VOCABULARY_FILE = "labels.txt"


def write_vocabulary(path: str, labels: Iterable[str]) -> list[str]:
    """Write the sorted, de-duplicated labels one per line; return them."""
    vocabulary = sorted({str(label) for label in labels if label})
    for label in vocabulary:
        if "\n" in label or "," in label:
            raise RecordError(f"label {label!r} must not contain a newline or a comma")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("".join(label + "\n" for label in vocabulary))
    return vocabulary


def read_vocabulary(path: str) -> list[str]:
    """The labels of a vocabulary file, in file order (their index is the label id)."""
    if not tf.io.gfile.exists(path):
        raise RecordError(f"vocabulary file {path} does not exist")
    with tf.io.gfile.GFile(path) as f:
        labels = [line.rstrip("\n") for line in f if line.strip()]
    if len(set(labels)) != len(labels):
        raise RecordError(f"vocabulary file {path} repeats a label")
    return labels


def match_record_files(file_patterns: str | Sequence[str]) -> list[str]:
    """Sorted files matching one or more patterns (a directory means its `*.tfrecord` files)."""
    patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)
    files: set[str] = set()
    for pattern in patterns:
        if tf.io.gfile.isdir(pattern):
            pattern = pattern.rstrip("/") + "/*.tfrecord"
        matched = tf.io.gfile.glob(pattern)
        if not matched:
            raise RecordError(f"no feature records match {pattern}")
        files.update(matched)
    return sorted(files)


def _first_record(path: str) -> bytes | None:
    for raw in tf.data.TFRecordDataset(path).take(1):
        return raw.numpy()
    return None


def dataset_spec(files: Sequence[str]) -> RecordSpec:
    """The spec shared by every shard in `files`; a shard that disagrees is refused with a clear error.

    Reads the first record of each shard (shards are written by one featurize run, so a shard agrees with
    itself; `parse_video_record` checks every record again in the graph).
    """
    spec, spec_file = None, None
    for path in files:
        try:
            first = _first_record(path)
        except tf.errors.DataLossError as exc:
            raise RecordError(f"{path} is not a readable TFRecord file: {exc.message}") from None
        if first is None:
            continue
        try:
            this = read_record_spec(first)
        except RecordError as exc:
            raise RecordError(f"{path}: {exc}") from None
        if spec is None:
            spec, spec_file = this, path
        elif problems := spec.mismatches(this):
            raise RecordError(f"{path} does not match {spec_file}: " + "; ".join(problems))
    if spec is None:
        raise RecordError(f"no records in {len(files)} file(s): {', '.join(files[:3])}")
    return spec


def make_decoded_dataset(
    file_patterns: str | Sequence[str],
    spec: RecordSpec | None = None,
    shuffle_files: bool = False,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Records decoded to dicts of tensors (see `parse_video_record`), read in parallel across shards."""
    files = match_record_files(file_patterns)
    found = dataset_spec(files)
    if spec is not None and (problems := spec.mismatches(found)):
        raise RecordError("records do not match what was expected: " + "; ".join(problems))
    spec = found
    file_ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        file_ds = file_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    records = file_ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle_files,
    )
    return records.map(lambda raw: parse_video_record(raw, spec), num_parallel_calls=tf.data.AUTOTUNE)


def label_lookup(vocabulary: Sequence[str]) -> tf.lookup.StaticHashTable:
    """label string -> id; an unknown label maps to -1 (caught in `to_model_inputs`)."""
    keys = tf.constant(list(vocabulary), tf.string)
    values = tf.range(len(vocabulary), dtype=tf.int32)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1)


def to_model_inputs(decoded: dict, table: tf.lookup.StaticHashTable | None = None):
    """Decoded record -> `(features, mask)` or, with a label table, `((features, mask), label_id)`."""
    inputs = (decoded["features"], decoded["mask"])
    if table is None:
        return inputs
    label_id = table.lookup(decoded["label"])
    check = tf.debugging.Assert(
        label_id >= 0,
        ["record label is not in the vocabulary; label and video id:", decoded["label"], decoded["video_id"]],
    )
    with tf.control_dependencies([check]):
        label_id = tf.identity(label_id)
    return inputs, label_id


def make_dataset(
    file_patterns: str | Sequence[str],
    vocabulary: Sequence[str] | None = None,
    batch_size: int | None = 32,
    shuffle: bool = False,
    shuffle_buffer: int = 2048,
    seed: int | None = None,
    spec: RecordSpec | None = None,
    repeat: bool = False,
    cache: bool = False,
) -> tf.data.Dataset:
    """Model-ready dataset of sharded feature records.

    Yields `(features [B, T, D] float32, mask [B, T] bool)`, or `((features, mask), label_ids [B] int32)`
    when `vocabulary` is given (a record whose label is not in it fails with an error naming it).
    `batch_size=None` yields unbatched elements. `spec`, if given, must match the records.
    """
    decoded = make_decoded_dataset(file_patterns, spec=spec, shuffle_files=shuffle, seed=seed)
    table = label_lookup(vocabulary) if vocabulary is not None else None
    ds = decoded.map(lambda d: to_model_inputs(d, table), num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if batch_size:
        ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)
