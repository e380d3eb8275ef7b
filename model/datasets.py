"""The tf.data pipelines of a training run: every epoch of the training share, shuffled by the seed and the
epoch alone, and the sets as they are scored.

    datasets = model_datasets(data, batch_size=32, seed=0, cache="auto", epochs=200)
    model.fit(datasets.fit, steps_per_epoch=datasets.steps_per_epoch, epochs=200,
              validation_data=datasets.validation_batches, validation_steps=datasets.validation_steps)

Streamed, records are read as they are needed, never all at once. Epoch e reads the shards in an order drawn
from (seed, e), each from a starting point drawn from (seed, e) on round to its start again (featurize
writes a shard's records in the order of their videos, so a class at a time: without it, the shards read side
by side would be at the same classes), `FIT_CYCLE` shards at a time in parallel, one record from each in
turn; it keeps the records of its share of the split (by a hash of the video id, read from the context
before any frame is decoded), permutes them in blocks of about `SHUFFLE_BLOCK_BYTES` (each block by its own
key), decodes them in parallel and batches them, and the next batches are prefetched while the model trains.
Memory holds a few blocks, whatever the number of records. `fit` runs from `initial_epoch` to `epochs` with
exactly `steps_per_epoch` batches an epoch (the last one short), so `--resume` reads the epochs an
uninterrupted run would have read.

`cache` says where the records come from:
- `none`: the shards every epoch.
- `disk`: the first epoch also writes each shard's share of the records to a local file (the serialized
  records, the frames still encoded), which later epochs read instead (for gs:// records: one download);
  the order is `none`'s, so is the model.
- `memory`: the decoded sets, read once before the first step into NumPy arrays held once (TensorFlow never
  copies them: each batch gathers its records from them); each epoch is a permutation of the training
  share's indices drawn from (seed, e), never a shuffle buffer.
- `auto`: memory when what it costs (`memory_cache_bytes`: the decoded sets, float32 features, and the
  batches in flight while they are read) fits `MEMORY_CACHE_BUDGET`, else disk when the records are on gs://
  and the local temp dir has room for twice their size, else none.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import tempfile
from typing import Iterator, NamedTuple

import numpy as np
import tensorflow as tf

from common import fs
from common.errors import EXIT_DATA_ERROR, OperationalError, UserError
from model.classifier import FEATURES_INPUT, MASK_INPUT
from model.config import CACHE_MODES, MEMORY_CACHE_BUDGET
from model.data import RecordSet, TrainingData, record_failure, tensorflow_cause
from model.splits import in_validation_split
from tfrecords_schema import RecordSpec, label_lookup, parse_video_record, to_model_inputs
from tfrecords_schema.dataset import READ_CYCLE, parse_video_ids

logger = logging.getLogger(__name__)

# Serialized records permuted together: the shuffle's memory (about two blocks at once), whatever the records.
SHUFFLE_BLOCK_BYTES = 16 * 1024**2
MIN_SHUFFLE_BLOCK = 256
# Shards an epoch reads side by side, each from its own starting point: a block holds runs of about
# block / FIT_CYCLE consecutive records from that many places.
FIT_CYCLE = 16
_ID_BATCH = 256  # records whose ids are parsed together to split them
# The memory cache is filled FILL_BATCH decoded records at a time, FILL_PREFETCH batches decoded ahead.
FILL_BATCH, FILL_PREFETCH = 256, 2


def decoded_bytes(spec: RecordSpec) -> int:
    """Memory one decoded record takes: float32 features, a bool mask, an int32 label id."""
    return spec.max_seq_length * (spec.feature_dim * 4 + 1) + 4


def serialized_bytes(spec: RecordSpec) -> int:
    """About the size of one serialized record (its frames in their encoding, and its context)."""
    per_value = 2 if spec.feature_encoding == "float16" else 4
    return spec.max_seq_length * (spec.feature_dim * per_value + 16) + 512


def shuffle_block(spec: RecordSpec) -> int:
    """Records permuted together: about SHUFFLE_BLOCK_BYTES of them, at least MIN_SHUFFLE_BLOCK."""
    return max(MIN_SHUFFLE_BLOCK, SHUFFLE_BLOCK_BYTES // serialized_bytes(spec))


def memory_cache_bytes(videos: int, spec: RecordSpec) -> int:
    """What `--cache memory` adds to a run's memory for `videos` records: their decoded arrays, held once,
    and the decoded batches in flight while they are read (`FILL_BATCH` records, `FILL_PREFETCH` batches
    ahead, one being copied and one being decoded)."""
    return (videos + FILL_BATCH * (FILL_PREFETCH + 2)) * decoded_bytes(spec)


def resolve_cache(mode: str, data: TrainingData) -> str:
    """The cache `mode` (`auto` resolved for this data: see the module docstring)."""
    if mode not in CACHE_MODES:
        raise UserError(f"--cache must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    videos = data.num_train + data.num_validation + data.num_test
    if memory_cache_bytes(videos, data.train.spec) <= MEMORY_CACHE_BUDGET:
        return "memory"
    remote = any(fs.is_remote(path) for records in data.record_sets for path in records.files)
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if remote and free > 2 * videos * serialized_bytes(data.train.spec):
        return "disk"
    return "none"


@dataclasses.dataclass(frozen=True)
class Share:
    """The records of one set that a dataset reads: all of them, the held-out share or the rest."""

    records: RecordSet
    held_out: bool | None  # None: every record of the set
    size: int
    name: str  # for cache files and messages: "train", "validation", "test"

    def of_file(self, path: tf.Tensor) -> tf.data.Dataset:
        """The serialized records of one shard in this share, in the shard's order."""
        raw = tf.data.TFRecordDataset(path)
        if self.held_out is None:
            return raw
        fraction = self.records.held_out
        split_by = self.records.split_by
        tagged = raw.batch(_ID_BATCH).map(
            lambda r: (r, in_validation_split(parse_video_ids(r), fraction, split_by))).unbatch()
        return tagged.filter(lambda _, held: tf.equal(held, self.held_out)).map(lambda r, _: r)


def _decoder(spec: RecordSpec, table: tf.lookup.StaticHashTable):
    def decode(raw):
        (features, mask), label = to_model_inputs(parse_video_record(raw, spec), table)
        return {FEATURES_INPUT: features, MASK_INPUT: mask}, label

    return decode


def _interleave(files: tf.data.Dataset, num_files: int, per_file, cycle: int = READ_CYCLE) -> tf.data.Dataset:
    return files.interleave(per_file, cycle_length=max(1, min(num_files, cycle)),
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _epoch_key(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), epoch)


def _file_order(num_files: int, key: tf.Tensor) -> tf.Tensor:
    """A permutation of the files drawn from `key`."""
    fold = tf.random.experimental.stateless_fold_in(key, 0)
    return tf.argsort(tf.random.stateless_uniform([num_files], seed=fold))


def _shuffled_blocks(ds: tf.data.Dataset, block: int, key: tf.Tensor) -> tf.data.Dataset:
    """`ds` (scalar elements) with each run of `block` elements permuted by its own key drawn from `key`."""
    fold = tf.random.experimental.stateless_fold_in(key, 1)
    shuffle = tf.random.experimental.stateless_shuffle
    return ds.batch(block).enumerate().map(
        lambda i, b: shuffle(b, seed=tf.random.experimental.stateless_fold_in(fold, i))).unbatch()


class ModelDatasets(NamedTuple):
    """The datasets of one run. `fit` is every epoch from `initial_epoch` on, `steps_per_epoch` batches each;
    `validation_batches` repeats the validation set, `validation_steps` batches a pass; `train`, `validation`
    and `test` are unbatched, in a fixed order, for scoring. `cache` is the cache mode used."""

    fit: tf.data.Dataset
    steps_per_epoch: int
    validation_batches: tf.data.Dataset
    validation_steps: int
    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset | None
    cache: str


def model_datasets(data: TrainingData, batch_size: int, seed: int, cache: str = "auto", initial_epoch: int = 0,
                   epochs: int = 1, cache_dir: str | None = None) -> ModelDatasets:
    """The model's inputs and label ids for every set of `data` (`cache`: see the module docstring; `disk`
    writes under `cache_dir`, which the caller removes)."""
    mode = resolve_cache(cache, data)
    if mode == "disk" and cache_dir is None:
        raise ValueError("cache 'disk' needs a cache_dir")
    spec, table = data.train.spec, label_lookup(list(data.vocabulary))
    decode = _decoder(spec, table)
    if data.validation is None:
        train = Share(data.train, False, data.num_train, "train")
        validation = Share(data.train, True, data.num_validation, "validation")
    else:
        train = Share(data.train, None, data.num_train, "train")
        validation = Share(data.validation, None, data.num_validation, "validation")
    test = Share(data.test, None, data.num_test, "test") if data.test is not None else None
    logger.info("reading the records %s", {
        "memory": "once into memory (--cache memory)", "disk": f"once, then from local copies in {cache_dir} "
        "(--cache disk)", "none": "from the shards every epoch (--cache none)"}[mode])

    epoch_range = tf.data.Dataset.range(initial_epoch, max(epochs, initial_epoch))
    if mode == "memory":
        arrays = InMemory.read(train, decode)
        fit = epoch_range.flat_map(lambda e: arrays.epoch(seed, e, batch_size))
        scored_train = arrays.in_order(batch_size)
        held = {share.name: InMemory.read(share, decode) for share in (validation, test) if share is not None}
    else:
        caches = _cache_paths(train, cache_dir) if mode == "disk" else None
        block = shuffle_block(spec)
        fit = epoch_range.flat_map(lambda e: _streamed_epoch(train, seed, e, block, caches).map(
            decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size))
        scored_train = _in_order(train, decode)

    def scored(share: Share) -> tf.data.Dataset:
        if mode == "memory":
            return held[share.name].in_order(batch_size)
        cache_path = os.path.join(cache_dir, share.name) if mode == "disk" else None
        return _in_order(share, decode, cache_path)

    validation_set = scored(validation)
    return ModelDatasets(
        fit=fit.prefetch(tf.data.AUTOTUNE),
        steps_per_epoch=math.ceil(data.num_train / batch_size),
        validation_batches=validation_set.batch(batch_size).repeat().prefetch(tf.data.AUTOTUNE),
        validation_steps=math.ceil(data.num_validation / batch_size),
        train=scored_train, validation=validation_set, test=scored(test) if test is not None else None,
        cache=mode,
    )


def _cache_paths(share: Share, cache_dir: str) -> list[str]:
    return [os.path.join(cache_dir, f"{share.name}-{i:05d}") for i in range(len(share.records.files))]


def _streamed_epoch(share: Share, seed: int, epoch: tf.Tensor, block: int,
                    cache_paths: list[str] | None) -> tf.data.Dataset:
    """One epoch of `share`'s serialized records, in the order drawn from (seed, epoch)."""
    files = list(share.records.files)
    key = _epoch_key(seed, epoch)
    order = _file_order(len(files), key)
    # Where each shard starts: drawn over the records an average shard of the share holds (a longer shard's
    # start falls in its first part; one past its end reads it from its start), every record read once.
    average = max(1, share.size // len(files))
    starts = tf.cast(tf.random.stateless_uniform([len(files)], seed=tf.random.experimental.stateless_fold_in(
        key, 2)) * average, tf.int64)
    columns = [tf.gather(tf.constant(files), order), tf.gather(starts, order)]
    if cache_paths is None:
        read = lambda path, start: _from(share.of_file(path), start)
    else:
        columns.append(tf.gather(tf.constant(cache_paths), order))
        read = lambda path, start, cache: _from(share.of_file(path).cache(cache), start)
    records = _interleave(tf.data.Dataset.from_tensor_slices(tuple(columns)), len(files), read, FIT_CYCLE)
    records = records.apply(tf.data.experimental.assert_cardinality(share.size))
    return _shuffled_blocks(records, block, key)


def _from(records: tf.data.Dataset, start: tf.Tensor) -> tf.data.Dataset:
    """`records` from the one numbered `start` to the end, then from the first up to it."""
    return records.skip(start).concatenate(records.take(start))


def _in_order(share: Share, decode, cache_path: str | None = None) -> tf.data.Dataset:
    """`share` decoded, in a fixed order; with `cache_path`, its serialized records kept in that local file."""
    files = list(share.records.files)
    records = _interleave(tf.data.Dataset.from_tensor_slices(files), len(files), share.of_file)
    records = records.apply(tf.data.experimental.assert_cardinality(share.size))
    if cache_path is not None:
        records = records.cache(cache_path)
    return records.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class InMemory:
    """A share decoded into memory once, in the order `_in_order` reads it: NumPy arrays that every epoch's
    batches gather from (a `tf.numpy_function`, so TensorFlow never holds a second copy of them)."""

    features: np.ndarray  # [N, T, D] float32
    mask: np.ndarray  # [N, T] bool
    labels: np.ndarray  # [N] int32

    @classmethod
    def read(cls, share: Share, decode) -> "InMemory":
        spec = share.records.spec
        features = np.empty((share.size, spec.max_seq_length, spec.feature_dim), np.float32)
        mask = np.empty((share.size, spec.max_seq_length), bool)
        labels = np.empty((share.size,), np.int32)
        filled = 0
        records = _interleave(tf.data.Dataset.from_tensor_slices(list(share.records.files)),
                              len(share.records.files), share.of_file)
        decoded = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        for inputs, label in decoded.batch(FILL_BATCH).prefetch(FILL_PREFETCH).as_numpy_iterator():
            end = filled + len(label)
            if end > share.size:
                raise _changed(share, f"more than {share.size}")
            features[filled:end], mask[filled:end], labels[filled:end] = (
                inputs[FEATURES_INPUT], inputs[MASK_INPUT], label)
            filled = end
        if filled != share.size:
            raise _changed(share, str(filled))
        logger.info("%d %s records in memory (%.0f MB)", share.size, share.name, features.nbytes / 1e6)
        return cls(features, mask, labels)

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def _gather(self, indices: tf.Tensor):
        """The records at `indices` ([B] int64): a copy of B records, never of the set."""
        features, mask, labels = tf.numpy_function(
            lambda i: (self.features[i], self.mask[i], self.labels[i]), [indices],
            (tf.float32, tf.bool, tf.int32), stateful=False)
        _, frames, dim = self.features.shape
        return ({FEATURES_INPUT: tf.ensure_shape(features, [None, frames, dim]),
                 MASK_INPUT: tf.ensure_shape(mask, [None, frames])}, tf.ensure_shape(labels, [None]))

    def epoch(self, seed: int, epoch: tf.Tensor, batch_size: int) -> tf.data.Dataset:
        """One epoch's batches: a permutation of the indices of every record, drawn from (seed, epoch)."""
        fold = tf.random.experimental.stateless_fold_in(_epoch_key(seed, epoch), 3)
        order = tf.argsort(tf.random.stateless_uniform([self.size], seed=fold))
        return tf.data.Dataset.from_tensor_slices(tf.cast(order, tf.int64)).batch(batch_size).map(self._gather)

    def in_order(self, batch_size: int) -> tf.data.Dataset:
        """The records unbatched, in the order `_in_order` reads the shards in."""
        batches = tf.data.Dataset.range(self.size).batch(batch_size).map(self._gather)
        return batches.unbatch().apply(tf.data.experimental.assert_cardinality(self.size))


def _changed(share: Share, found: str) -> UserError:
    return UserError(f"{share.records.name} records: the {share.name} share holds {found} records, "
                     f"{share.size} were counted before training ({share.records.counted_from}): the shards "
                     f"changed, or their manifest.json does not describe them")


@contextlib.contextmanager
def cache_directory(mode: str) -> Iterator[str | None]:
    """A local folder for `--cache disk`'s files (None for the other modes), removed afterwards."""
    if mode != "disk":
        yield None
        return
    path = tempfile.mkdtemp(prefix="train-cache-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def record_errors(spec: RecordSpec) -> Iterator[None]:
    """Turn a record that fails inside tf.data while training (a bad record, a count that changed, a corrupt
    shard) into one line: a UserError, or an OperationalError (exit 65) for a corrupt file."""
    try:
        yield
    except tf.errors.FailedPreconditionError as exc:
        if "Input dataset was expected to contain" not in exc.message:
            raise
        cause = _cause(exc.message).rstrip(".")
        raise UserError("the records do not hold what was counted before training (manifest.json or the counting "
                        f"pass): {cause}; the shards changed, or their manifest.json does not describe them") from None
    except tf.errors.InvalidArgumentError as exc:
        if "IteratorGetNext" not in exc.message and "record" not in exc.message:
            raise
        raise UserError(f"training records: {record_failure(_with_cause(exc), spec)}") from None
    except tf.errors.DataLossError as exc:
        raise OperationalError(f"a record file is corrupt or truncated: {_cause(exc.message)}",
                               EXIT_DATA_ERROR) from None


def _cause(message: str) -> str:
    """The line of a TensorFlow error message that says what went wrong (not where, in which graph)."""
    lines = [tensorflow_cause(line) for line in message.splitlines() if line.strip()]
    for line in lines:
        if any(word in line for word in ("record", "Input dataset was expected", "truncated", "corrupted",
                                         "Key:", "Name:", "Shape of tensor", "assertion failed", "Could not parse")):
            return line
    return lines[0] if lines else ""


def _with_cause(exc: tf.errors.OpError) -> tf.errors.OpError:
    return type(exc)(exc.node_def, exc.op, _cause(exc.message))
