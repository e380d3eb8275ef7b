"""What a training run reads: its record sets, how many videos of each label they hold, their label
vocabulary and the validation split. The tf.data pipelines that read them are model.datasets.

    data = load_training_data(["features/train"], test=["features/test"])
    data.num_train, data.num_validation, data.class_counts()

Nothing here decodes a frame. Where featurize's `manifest.json` beside the shards says how many records of
each label every split holds (its `split_counts`, see tfrecords_schema), the counts and the spec come from it
and no record is read before training (each is checked against the spec as training reads it): the time
before training does not grow with the records. Otherwise a counting pass reads the records' contexts (ids,
labels, shapes), skipping the frames, and checks each against the first record. A manifest that disagrees
with its shards (a shard missing or unlisted, another spec, labels or record count) is refused. Either way
every set's size is known before training, so Keras knows the epoch length.

Without validation records, a share of the training videos is held out, chosen by a hash of the video id or,
with `--split-by`, of the video's group (model.splits): the same videos are held out whatever the file
order, sharding or seed. Sets given apart (`--validation`, `--test`) must not share a video id (a group with
`--split-by`): their ids are read once to check it. Memory does not grow with the records: a set is its
files and its counts per label.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
import time
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from common import fs
from common.errors import UserError
from model.vocabulary import check_labels, choose_vocabulary, find_vocabulary  # noqa: F401 (re-exported)
from model.splits import (
    check_disjoint,
    check_split_rule,
    in_validation_split,
    unmatched,
    validation_threshold,
)
from tfrecords_schema import VOCABULARY_FILE, RecordSpec, dataset_spec, match_record_files, read_vocabulary
from tfrecords_schema.dataset import (
    MANIFEST_FILE,
    SPLIT_BUCKETS,
    SPLIT_COUNTS_KEY,
    dataset_embedding,
    read_record_contexts,
)

logger = logging.getLogger(__name__)

MANIFEST_KEYS = ("records_written", "labels", "shards", "record_spec")  # what a featurize manifest must have


# --- Records -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordSet:
    """One named set of records (training, validation or test): its files, spec and videos per label.

    `held_out` is the share of the set's videos held out for validation (0.0: none), and `held_out_counts`
    how many of each label that is. `example_ids` names one video of each label (from a counting pass; empty
    when the counts came from manifests), for messages."""

    name: str
    patterns: tuple[str, ...]
    files: tuple[str, ...]
    spec: RecordSpec
    label_counts: Mapping[str, int]  # every record of the set, by label ("" for records without one)
    held_out: float = 0.0
    held_out_counts: Mapping[str, int] = dataclasses.field(default_factory=dict)
    example_ids: Mapping[str, str] = dataclasses.field(default_factory=dict)
    counted_from: str = "a counting pass"  # or "manifest.json"
    split_by: str = ""  # the --split-by rule the held-out share was chosen by ("": the video id)
    # What made the features (engine, engine_version, precision), one entry per distinct answer of the set's
    # directories: from their manifest.json, else from a shard's first record.
    embeddings: tuple[Mapping[str, str], ...] = ()

    @property
    def num_records(self) -> int:
        return sum(self.label_counts.values())

    @property
    def kept_counts(self) -> dict[str, int]:
        """Videos per label outside the held-out share."""
        return {label: n - self.held_out_counts.get(label, 0) for label, n in self.label_counts.items()}


def record_failure(exc: tf.errors.OpError, spec: RecordSpec) -> str:
    """A readable line for a record that failed to parse or check inside tf.data (TensorFlow wraps the
    cause in iterator and function names)."""
    text = exc.message.strip().splitlines()[0] if exc.message.strip() else type(exc).__name__
    return (f"a record does not fit the others (feature_dim {spec.feature_dim}, {spec.max_seq_length} frames, "
            f"backbone {spec.backbone_id!r}): {tensorflow_cause(text)}")


def tensorflow_cause(text: str) -> str:
    """A TensorFlow error line without the iterator, function and op names it wraps the cause in."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"Error in user-defined function passed to .*? transformation with iterator: \S+: ", "", text)
    text = re.sub(r"\s*\[\[\{\{node [^}]*\}\}\]\]|\s*\[Op:\w+\]( name:\s*\S*)?", "", text)
    return text.strip()


def scan_records(name: str, patterns: Sequence[str], spec: RecordSpec | None = None,
                 held_out: float = 0.0, split_by: str = "") -> RecordSet:
    """Match one set of records and count its videos per label (and, with `held_out`, per label in the
    held-out share chosen by `split_by`), from the manifests beside the shards where they say it (then no
    record is read: the spec is the manifest's, and every record is checked against it as training reads
    it), else by a counting pass over the records' contexts. With `spec`, the set must match it."""
    files = match_record_files(list(patterns))
    started = time.monotonic()
    groups = []  # (directory, shards, manifest, spec of its first record)
    embeddings = []
    for directory, shards in _by_directory(files).items():
        manifest = read_manifest(directory)
        described = manifest is not None and _describes(manifest, shards)
        counts = manifest_counts(manifest, held_out, split_by) if described else None
        if counts is not None:
            found = _manifest_spec(manifest)
            check_manifest(manifest, directory, shards, None)
        else:
            found = dataset_spec(shards, every_shard=manifest is None)
            if manifest is not None:
                check_manifest(manifest, directory, shards, found)
        said = (manifest or {}).get("embedding")
        embedding = said if isinstance(said, dict) else dataset_embedding(shards) or {}
        embedding = {key: str(embedding.get(key) or "") for key in ("engine", "engine_version", "precision")}
        if embedding not in embeddings:
            embeddings.append(embedding)
        groups.append((directory, shards, manifest, found, counts))
    found = groups[0][3]
    for _, shards, _, other, _ in groups[1:]:
        if problems := found.mismatches(other):
            raise UserError(f"{name} records: {shards[0]} does not match {groups[0][1][0]}: " + "; ".join(problems))
    if spec is not None and (problems := spec.mismatches(found)):
        raise UserError(f"{name} records ({', '.join(patterns)}) do not match the training records: "
                        + "; ".join(problems))
    counted, manifested = _Counts(), []
    for directory, shards, manifest, this, counts in groups:
        if counts is None:
            counts = count_records(name, shards, this, held_out, split_by)
            if manifest is not None and _describes(manifest, shards):
                check_manifest_total(manifest, directory, counts)
        else:
            manifested.append(directory)
        counted.add(counts)
    source = {len(groups): MANIFEST_FILE, 0: "a counting pass"}.get(len(manifested), "manifests and a counting pass")
    logger.debug("%s records: %d in %d file(s), counted from %s in %.1f s", name, sum(counted.labels.values()),
                 len(files), source, time.monotonic() - started)
    return RecordSet(name, tuple(patterns), tuple(files), found, dict(counted.labels), held_out,
                     dict(counted.held_out) if held_out else {}, dict(counted.examples), source, split_by,
                     tuple(embeddings))


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _by_directory(files: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for path in files:
        groups[fs.dirname(path)].append(path)
    return dict(groups)


@dataclasses.dataclass
class _Counts:
    """Videos per label, per label in the held-out share, and one video id per label."""

    labels: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    held_out: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict = dataclasses.field(default_factory=dict)

    def add(self, other: "_Counts") -> None:
        self.labels.update(other.labels)
        self.held_out.update(other.held_out)
        for label, video_id in other.examples.items():
            self.examples.setdefault(label, video_id)


def count_records(name: str, files: Sequence[str], spec: RecordSpec, held_out: float = 0.0,
                  split_by: str = "") -> _Counts:
    """Count the records of `files` per label (and per label in the `held_out` share chosen by `split_by`)
    from their contexts, refusing a record whose feature dim, frame count, backbone, image size or sampling
    differ from `spec` (records of one sampling teach nothing about another's frames), and a `split_by` that
    matches none of the ids."""
    counts = _Counts()
    lone, example = 0, ""  # ids `split_by` does not match: each a group of its own
    try:
        for batch in read_record_contexts(files):
            ids, labels = batch["video_id"].numpy(), batch["label"].numpy()
            for key, expected, what in (("feature_dim", spec.feature_dim, "feature_dim"),
                                        ("max_seq_length", spec.max_seq_length, "frame count"),
                                        ("backbone_id", spec.backbone_id.encode(), "backbone"),
                                        ("image_size", spec.image_size, "image size"),
                                        ("sampling", spec.sampling.encode(), "sampling")):
                if len(bad := np.flatnonzero(batch[key].numpy() != expected)):
                    value = batch[key].numpy()[bad[0]]
                    value = repr(value.decode()) if isinstance(value, bytes) else int(value)
                    raise UserError(
                        f"{name} records: a record does not fit the others (feature_dim {spec.feature_dim}, "
                        f"{spec.max_seq_length} frames, backbone {spec.backbone_id!r}, image size "
                        f"{spec.image_size}, {spec.sampling} sampling): video "
                        f"{ids[bad[0]].decode()!r} has {what} {value}")
            held = in_validation_split(batch["video_id"], held_out, split_by).numpy()
            if split_by and held_out and len(missed := unmatched(batch["video_id"], split_by)):
                lone, example = lone + len(missed), example or ids[missed[0]].decode()
            for label, video_id in zip(*np.unique(labels, return_index=True)):
                counts.examples.setdefault(label.decode(), ids[video_id].decode())
            counts.labels.update(_tally(labels))
            counts.held_out.update(_tally(labels[held]))
    except tf.errors.InvalidArgumentError as exc:
        raise UserError(f"{name} records: {record_failure(exc, spec)}") from None
    except tf.errors.DataLossError as exc:
        raise UserError(f"{name} records: a file is not a readable TFRecord file: {exc.message}") from None
    if lone:
        total = sum(counts.labels.values())
        if lone == total:
            raise UserError(f"--split-by {split_by!r} matches none of the {total} {name} video ids, e.g. {example!r}")
        logger.warning("--split-by %r does not match %d of %d %s video ids (e.g. %r): each of them is a group of "
                       "its own", split_by, lone, total, name, example)
    return counts


def _tally(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {value.decode(): int(count) for value, count in zip(values, counts)}


# --- Manifests -----------------------------------------------------------------------------------------


def read_manifest(directory: str) -> dict | None:
    """Featurize's manifest.json in `directory`, or None if there is none (or it is some other job's)."""
    path = fs.join(directory, MANIFEST_FILE) if directory else MANIFEST_FILE
    if not tf.io.gfile.exists(path):  # beside the records, so through TensorFlow's filesystems as they are
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            manifest = json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a readable manifest: {exc}") from None
    if not isinstance(manifest, dict) or any(key not in manifest for key in MANIFEST_KEYS):
        logger.info("%s is not a featurize manifest (it lacks %s); counting the records instead", path,
                    ", ".join(MANIFEST_KEYS))
        return None
    return dict(manifest, path=path)


def _describes(manifest: dict, shards: Sequence[str]) -> bool:
    """Whether the manifest is of exactly these shards (not of more, of which a pattern chose some)."""
    return {_basename(path) for path in shards} == set(manifest["shards"])


def check_manifest(manifest: dict, directory: str, shards: Sequence[str], found: RecordSpec | None) -> None:
    """Refuse a manifest that disagrees with the shards beside it: a shard it lists is missing, a matched shard
    is not listed, or the first record's spec (`found`; None: not read, every record is checked against the
    manifest's as it is read), the vocabulary or its own counts say otherwise."""
    path = manifest["path"]
    listed, names = set(manifest["shards"]), {_basename(shard) for shard in shards}
    if unlisted := sorted(names - listed):
        raise UserError(f"{path} does not describe its shards: it does not list {unlisted[0]}")
    if names != listed:  # a pattern chose some shards: are the others there?
        present = {_basename(p) for p in tf.io.gfile.glob(fs.join(directory, "*"))}
        if missing := sorted(listed - present):
            raise UserError(f"{path} does not describe its shards: {missing[0]} is listed but missing "
                            f"({len(missing)} of {len(listed)} shards missing)")
    said = _manifest_spec(manifest) if found is not None else None
    if said is not None and (problems := [f"{key} {getattr(found, key)!r} in the records, {getattr(said, key)!r} in the manifest"
                    for key in ("feature_dim", "max_seq_length", "backbone_id", "image_size", "sampling")
                    if getattr(found, key) != getattr(said, key)]):
        raise UserError(f"{path} does not describe its shards: " + "; ".join(problems))
    vocabulary = fs.join(directory, VOCABULARY_FILE)
    if tf.io.gfile.exists(vocabulary) and sorted(read_vocabulary(vocabulary)) != sorted(manifest["labels"]):
        raise UserError(f"{path} does not describe its shards: its labels differ from {vocabulary}'s")
    if (split := manifest.get(SPLIT_COUNTS_KEY)) is not None:
        total = sum(sum(values) for values in split["counts"].values())
        if total != manifest["records_written"]:
            raise UserError(f"{path} does not add up: its {SPLIT_COUNTS_KEY} count {total} records, its "
                            f"records_written {manifest['records_written']}")
        if unknown := sorted(set(split["counts"]) - set(manifest["labels"]) - {""}):
            raise UserError(f"{path} does not add up: its {SPLIT_COUNTS_KEY} have label {unknown[0]!r}, which "
                            f"its labels do not")


def _manifest_spec(manifest: dict) -> RecordSpec:
    fields = {f.name for f in dataclasses.fields(RecordSpec)}
    return RecordSpec(**{k: v for k, v in manifest["record_spec"].items() if k in fields})


def manifest_counts(manifest: dict, held_out: float, split_by: str = "") -> _Counts | None:
    """Videos per label, and per label in the `held_out` share chosen by `split_by`, from a manifest's
    `split_counts`; None when it has none, they were made by another rule (featurize counts by the video id:
    a `--split-by` share is counted from the records' contexts) or the share does not fall on its buckets'
    bounds (then the records are counted)."""
    split = manifest.get(SPLIT_COUNTS_KEY)
    if split is None:
        return None
    if held_out and (split.get("split_by") or "") != split_by:
        logger.info("%s: its %s are by %s, the split is by --split-by %r; counting the records", manifest["path"],
                    SPLIT_COUNTS_KEY, f"--split-by {split['split_by']!r}" if split.get("split_by") else "video id",
                    split_by)
        return None
    width, threshold = SPLIT_BUCKETS // int(split["buckets"]), validation_threshold(held_out)
    if threshold % width:
        logger.info("%s: --validation-split %s does not fall on its %s buckets; counting the records",
                    manifest["path"], held_out, split["buckets"])
        return None
    counts = _Counts()
    for label, values in split["counts"].items():
        counts.labels[label] = sum(values)
        counts.held_out[label] = sum(values[: threshold // width])
    return counts


def check_manifest_total(manifest: dict, directory: str, counted: _Counts) -> None:
    """Refuse a manifest whose record count or labels differ from what a counting pass found."""
    total = sum(counted.labels.values())
    if total != manifest["records_written"]:
        raise UserError(f"{manifest['path']} does not describe its shards: it says {manifest['records_written']} "
                        f"records, the shards hold {total}")
    if unknown := sorted(set(counted.labels) - set(manifest["labels"]) - {""}):
        raise UserError(f"{manifest['path']} does not describe its shards: a record in {directory} has label "
                        f"{unknown[0]!r}, which the manifest does not list")


# --- The sets of one run -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The record sets of one run, checked against each other, and how many videos each split has."""

    train: RecordSet
    validation: RecordSet | None  # None: `validation_split` of the training videos is held out instead
    test: RecordSet | None
    vocabulary: tuple[str, ...]
    validation_split: float  # 0.0 when there are validation records
    num_train: int
    num_validation: int
    split_by: str = ""  # the --split-by rule of the held-out share and of the sets' disjointness ("": video id)

    @property
    def num_test(self) -> int:
        return self.test.num_records if self.test is not None else 0

    @property
    def record_sets(self) -> tuple[RecordSet, ...]:
        return tuple(s for s in (self.train, self.validation, self.test) if s is not None)

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Videos per label of the vocabulary in each set: `{"train": {...}, "validation": {...}}`, and
        `"test"` with test records."""
        if self.validation is None:
            sets = {"train": self.train.kept_counts, "validation": self.train.held_out_counts}
        else:
            sets = {"train": self.train.label_counts, "validation": self.validation.label_counts}
        if self.test is not None:
            sets["test"] = self.test.label_counts
        return {name: {label: int(counts.get(label, 0)) for label in self.vocabulary} for name, counts in sets.items()}


def load_training_data(train: Sequence[str], validation: Sequence[str] = (), test: Sequence[str] = (),
                       validation_split: float = 0.15, split_by: str = "") -> TrainingData:
    """Scan and check the record sets of a run (file patterns or directories) and choose the vocabulary.

    Refuses records that do not match the first training record, a file or a video id (with `split_by`, a
    group) in two sets, labels outside the vocabulary and a split that leaves a set empty. With validation or
    test records, every set's ids are read (the records' contexts, model.splits.check_disjoint).
    """
    check_split_rule(split_by)
    fraction = 0.0 if validation else validation_split
    started = time.monotonic()
    train_set = scan_records("training", train, held_out=fraction, split_by=split_by if fraction else "")
    validation_set = scan_records("validation", validation, train_set.spec) if validation else None
    test_set = scan_records("test", test, train_set.spec) if test else None
    for other in (validation_set, test_set):
        if other and (shared := sorted(set(train_set.files) & set(other.files))):
            raise UserError(f"{shared[0]} is both a training and a {other.name} file")
    sets = {records.name: records.files for records in (train_set, validation_set, test_set) if records}
    if len(sets) > 1:
        check_disjoint(sets, split_by)
    vocabulary = choose_vocabulary(train_set)
    for records in (train_set, validation_set, test_set):
        if records is not None:
            check_labels(records, vocabulary)
    if validation_set is None:
        num_validation = sum(train_set.held_out_counts.values())
        num_train = train_set.num_records - num_validation
        if num_validation == 0 or num_train == 0:
            raise UserError(
                f"--validation-split {validation_split} of {train_set.num_records} training videos leaves "
                f"{num_train} to train on and {num_validation} to validate on; pass --validation records"
            )
    else:
        num_train, num_validation = train_set.num_records, validation_set.num_records
    data = TrainingData(train_set, validation_set, test_set, tuple(vocabulary), fraction, num_train,
                        num_validation, split_by)
    _log_sizes(data, time.monotonic() - started)
    return data


def _log_sizes(data: TrainingData, seconds: float) -> None:
    counts = data.class_counts()["train"]
    sources = sorted({records.counted_from for records in data.record_sets})
    logger.info("training on %d videos %s, validating on %d%s (counted from %s in %.1f s)", data.num_train, counts,
                data.num_validation, f", testing on {data.num_test}" if data.test is not None else "",
                " and ".join(sources), seconds)
    if missing := [label for label, count in counts.items() if count == 0]:
        logger.warning("no training videos for label(s) %s", ", ".join(missing))
