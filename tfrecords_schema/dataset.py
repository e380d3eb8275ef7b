"""tf.data readers for sharded feature records, and the label vocabulary file.

    ds = make_dataset("out/features-*.tfrecord", vocabulary=read_vocabulary("out/labels.txt"),
                      batch_size=16, shuffle=True, seed=7)
    for (features, mask), label_ids in ds: ...   # [B, T, D] float32, [B, T] bool, [B] int32

    contexts = read_record_contexts(files)   # batches of ids, labels and shapes: the frames are skipped

Paths may be local or gs:// (TensorFlow reads GCS natively).

A featurize run writes `MANIFEST_FILE` beside its shards (what they hold: `records_written`, `labels`,
`shards`, `record_spec`, `split_counts`); readers that trust it skip a pass over the records. A split of a
record set (training against validation) is by `split_buckets`, a hash of the video id alone, or of the
video's group (`split_keys` with a `--split-by` rule), so that no group is on both sides.
"""

from __future__ import annotations

import unicodedata
from typing import Iterable, Sequence

from tfrecords_schema.schema import (
    BACKBONE_ID_KEY,
    FEATURE_DIM_KEY,
    IMAGE_SIZE_KEY,
    MAX_SEQ_LENGTH_KEY,
    SAMPLING_KEY,
    VIDEO_ID_KEY,
    VIDEO_LABEL_KEY,
    RecordError,
    RecordSpec,
    parse_video_record,
    read_record_embedding,
    read_record_spec,
)

VOCABULARY_FILE = "labels.txt"
MANIFEST_FILE = "manifest.json"  # featurize's (beam_jobs.outputs.MANIFEST_FILE), written last, beside the shards
SPLIT_BUCKETS = 10_000
READ_CYCLE = 8  # shards read at once


def label_problem(label: str) -> str | None:
    """Why `label` cannot be a class of the vocabulary (one label a line, `p_<label>` CSV columns), or None."""
    if any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in label) or "," in label:
        return f"label {label!r} must not contain a control character, a line break or a comma"
    return None


def vocabulary_text(labels: Iterable[str]) -> str:
    """The vocabulary file's content: the sorted, de-duplicated labels, one per line."""
    vocabulary = sorted({str(label) for label in labels if label})
    for label in vocabulary:
        if problem := label_problem(label):
            raise RecordError(problem)
    return "".join(label + "\n" for label in vocabulary)


def parse_vocabulary(text: str, source: str) -> list[str]:
    """The labels of a vocabulary file's content, in file order (their index is the label id)."""
    labels = [line.rstrip("\n") for line in text.splitlines() if line.strip()]
    if len(set(labels)) != len(labels):
        raise RecordError(f"vocabulary file {source} repeats a label")
    return labels


def write_vocabulary(path: str, labels: Iterable[str]) -> list[str]:
    """Write the sorted, de-duplicated labels one per line; return them."""
    import tensorflow as tf

    text = vocabulary_text(labels)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)
    return text.splitlines()


def read_vocabulary(path: str) -> list[str]:
    """The labels of a vocabulary file, in file order (their index is the label id)."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise RecordError(f"vocabulary file {path} does not exist")
    with tf.io.gfile.GFile(path) as f:
        return parse_vocabulary(f.read(), path)


def match_record_files(file_patterns: str | Sequence[str]) -> list[str]:
    """Sorted files matching one or more patterns (a directory means its `*.tfrecord` files)."""
    import tensorflow as tf

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
    import tensorflow as tf

    for raw in tf.data.TFRecordDataset(path).take(1):
        return raw.numpy()
    return None


def dataset_spec(files: Sequence[str], every_shard: bool = True) -> RecordSpec:
    """The spec shared by every shard in `files`; a shard that disagrees is refused with a clear error.

    Reads the first record of each shard (shards are written by one featurize run, so a shard agrees with
    itself; `parse_video_record` checks every record again in the graph); with `every_shard=False` only the
    first shard's that has one (one read instead of one per shard, for shards a manifest describes).
    """
    import tensorflow as tf

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
            if not every_shard:
                break
        elif problems := spec.mismatches(this):
            raise RecordError(f"{path} does not match {spec_file}: " + "; ".join(problems))
    if spec is None:
        raise RecordError(f"no records in {len(files)} file(s): {', '.join(files[:3])}")
    return spec


def dataset_embedding(files: Sequence[str]) -> dict[str, str] | None:
    """What made the features of the first record in `files` (`read_record_embedding`); None without one."""
    for path in files:
        if (first := _first_record(path)) is not None:
            return read_record_embedding(first)
    return None


def make_decoded_dataset(
    file_patterns: str | Sequence[str],
    spec: RecordSpec | None = None,
    shuffle_files: bool = False,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Records decoded to dicts of tensors (see `parse_video_record`), read in parallel across shards."""
    import tensorflow as tf

    files = match_record_files(file_patterns)
    found = dataset_spec(files)
    if spec is not None and (problems := spec.mismatches(found)):
        raise RecordError("records do not match what was expected: " + "; ".join(problems))
    spec = found
    file_ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        file_ds = file_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    records = interleave_records(file_ds, len(files), deterministic=not shuffle_files)
    return records.map(lambda raw: parse_video_record(raw, spec), num_parallel_calls=tf.data.AUTOTUNE)


def interleave_records(files: tf.data.Dataset, num_files: int, deterministic: bool = True) -> tf.data.Dataset:
    """The serialized records of a dataset of file paths, `READ_CYCLE` shards read at once in parallel, one
    record from each in turn; `deterministic` keeps that order whatever the reads' timing."""
    import tensorflow as tf

    return files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=max(1, min(num_files, READ_CYCLE)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )


def split_keys(video_ids: tf.Tensor, split_by: str = "") -> tf.Tensor:
    """What a split hashes for each video id: the id itself, or with `split_by` (a regular expression, RE2
    syntax, whose first group names a video's group, e.g. `_g(\\d+)_` for UCF101's ids) the text of that group
    where the id matches it (an id that does not match is a group of its own)."""
    import tensorflow as tf

    if not split_by:
        return video_ids
    return tf.strings.regex_replace(video_ids, f"(?s)^.*?(?:{split_by}).*$", r"\1")


def split_matches(video_ids: tf.Tensor, split_by: str) -> tf.Tensor:
    """Whether each video id matches `split_by` (bool, the shape of `video_ids`)."""
    import tensorflow as tf

    return tf.strings.regex_full_match(video_ids, f"(?s).*?(?:{split_by}).*")


def split_buckets(video_ids: tf.Tensor) -> tf.Tensor:
    """The bucket in 0..SPLIT_BUCKETS-1 of each video id (int64, the shape of `video_ids`): FarmHash64 of the
    id alone, so a split by bucket is the same whatever the file order, sharding or seed."""
    import tensorflow as tf

    return tf.strings.to_hash_bucket_fast(video_ids, SPLIT_BUCKETS)


# A SequenceExample's context is its field 1, laid out as an Example's features: parsed as an Example, a
# record gives its context and the parser skips the frames without decoding them.
def _context_features():
    import tensorflow as tf

    return {
        VIDEO_ID_KEY: tf.io.FixedLenFeature([], tf.string),
        VIDEO_LABEL_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        FEATURE_DIM_KEY: tf.io.FixedLenFeature([], tf.int64),
        MAX_SEQ_LENGTH_KEY: tf.io.FixedLenFeature([], tf.int64),
        BACKBONE_ID_KEY: tf.io.FixedLenFeature([], tf.string),
        IMAGE_SIZE_KEY: tf.io.FixedLenFeature([], tf.int64),
        SAMPLING_KEY: tf.io.FixedLenFeature([], tf.string),
    }


def parse_video_ids(serialized: tf.Tensor) -> tf.Tensor:
    """The video id of each serialized record (any shape), read from the context alone."""
    import tensorflow as tf

    return tf.io.parse_example(serialized, {VIDEO_ID_KEY: tf.io.FixedLenFeature([], tf.string)})[VIDEO_ID_KEY]


def read_record_contexts(files: Sequence[str], batch_size: int = 1024) -> tf.data.Dataset:
    """Batches of what the records' contexts say, in file order, without decoding any frame: dicts of `[B]`
    tensors `video_id`, `label` (string), `feature_dim`, `max_seq_length`, `image_size` (int64), `backbone_id`
    and `sampling`."""
    import tensorflow as tf

    names = {VIDEO_ID_KEY: "video_id", VIDEO_LABEL_KEY: "label", FEATURE_DIM_KEY: "feature_dim",
             MAX_SEQ_LENGTH_KEY: "max_seq_length", BACKBONE_ID_KEY: "backbone_id", IMAGE_SIZE_KEY: "image_size",
             SAMPLING_KEY: "sampling"}
    features = _context_features()
    records = interleave_records(tf.data.Dataset.from_tensor_slices(list(files)), len(files))
    return records.batch(batch_size).map(
        lambda raw: {names[key]: value for key, value in tf.io.parse_example(raw, features).items()},
        num_parallel_calls=tf.data.AUTOTUNE,
    ).prefetch(2)


def label_lookup(vocabulary: Sequence[str]) -> tf.lookup.StaticHashTable:
    """label string -> id; an unknown label maps to -1 (caught in `to_model_inputs`)."""
    import tensorflow as tf

    keys = tf.constant(list(vocabulary), tf.string)
    values = tf.range(len(vocabulary), dtype=tf.int32)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1)


def to_model_inputs(decoded: dict, table: tf.lookup.StaticHashTable | None = None):
    """Decoded record -> `(features, mask)` or, with a label table, `((features, mask), label_id)`."""
    import tensorflow as tf

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
    import tensorflow as tf

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


# --- What a manifest says of the split ------------------------------------------------------------------

SPLIT_COUNTS_KEY = "split_counts"  # in MANIFEST_FILE, optional: records per label and coarse split bucket
SPLIT_COUNT_BUCKETS = 100  # so any split at a whole percent is known exactly


def split_counts(video_ids: Sequence[str], labels: Sequence[str], buckets: int = SPLIT_COUNT_BUCKETS,
                 split_by: str = "") -> dict:
    """A manifest's `split_counts` for records of these ids and labels: `{"buckets": N, "split_by": RULE,
    "counts": {label: [N ints]}}`, where `counts[label][b]` is how many records of that label have
    `split_buckets(split_keys(id, RULE)) // (SPLIT_BUCKETS // N) == b` (RULE "": the id itself). A reader that
    splits by the same rule then knows how many records of each label any split at a multiple of 1 / N holds
    without reading one. Counts of disjoint record sets add up (`add_split_counts`)."""
    import numpy as np

    if SPLIT_BUCKETS % buckets:
        raise ValueError(f"buckets must divide {SPLIT_BUCKETS}, got {buckets}")
    if split_by:
        import tensorflow as tf

        keys = split_keys(tf.constant(list(video_ids), tf.string), split_by)
        fine = split_buckets(keys).numpy()
    else:  # the ids themselves, hashed as split_buckets does, without TensorFlow (the featurize job's workers)
        from tfrecords_schema.farmhash import hash_bucket

        fine = np.array([hash_bucket(video_id, SPLIT_BUCKETS) for video_id in video_ids], dtype=np.int64)
    coarse = fine // (SPLIT_BUCKETS // buckets)
    labels = np.asarray(list(labels), dtype=object)
    return {"buckets": buckets, "split_by": split_by, "counts": {
        str(label): np.bincount(coarse[labels == label], minlength=buckets).tolist() for label in sorted(set(labels))}}


def add_split_counts(first: dict, second: dict) -> dict:
    """The `split_counts` of two disjoint record sets together (the same `buckets` and rule)."""
    if first["buckets"] != second["buckets"] or first.get("split_by", "") != second.get("split_by", ""):
        raise ValueError(f"split counts of {first['buckets']} and {second['buckets']} buckets (split by "
                         f"{first.get('split_by')!r} and {second.get('split_by')!r}) do not add up")
    counts = {label: list(values) for label, values in first["counts"].items()}
    for label, values in second["counts"].items():
        counts[label] = [a + b for a, b in zip(counts.get(label, [0] * len(values)), values)]
    return {"buckets": first["buckets"], "split_by": first.get("split_by", ""), "counts": dict(sorted(counts.items()))}
