"""Embedded videos -> feature records (one SequenceExample per video, see tfrecords_schema), written as
sharded TFRecord files."""

from __future__ import annotations

import uuid

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs.decode import FrameOptions, Video
from common import fs

SHARD_PREFIX = "features"
SHARD_SUFFIX = ".tfrecord"
SHARD_PATTERN = f"{SHARD_PREFIX}-*-of-*{SHARD_SUFFIX}"
BUNDLES_DIR = "_bundles"  # under the folder the shards are written to: each bundle's file, until named


def to_video_record(video: Video, options: FrameOptions, backbone_id: str, embedding: dict | None = None):
    """The video's features padded to `max_seq_length` rows; the record's mask marks the real ones.
    `embedding` says what made the features (model.engines.describe_options: engine, version, precision,
    calibration)."""
    from tfrecords_schema import VideoRecord, pad_features

    padded, _ = pad_features(video.features, options.max_seq_length)
    sampled = video.sampled
    return VideoRecord(
        video_id=video.ref.video_id,
        uri=video.ref.uri,
        label=video.ref.label,
        features=padded,
        num_valid_frames=len(video.features),
        frame_indices=list(sampled.frame_indices),
        source_fps=sampled.source_fps,
        decoded_frame_count=sampled.decoded_frame_count,
        frame_height=sampled.frame_height,
        frame_width=sampled.frame_width,
        backbone_id=backbone_id,
        image_size=options.image_size,
        sampling=options.sampling,
        fingerprint=video.fingerprint,
        **(embedding or {}),
    )


def encode_video(video: Video, options: FrameOptions, backbone_id: str, feature_encoding: str,
                 embedding: dict | None = None) -> bytes:
    from tfrecords_schema import encode_video_record

    return encode_video_record(to_video_record(video, options, backbone_id, embedding), feature_encoding)


class WriteFeatureRecords(beam.PTransform):
    """PCollection[serialized record] -> the shard files written under `folder` (their paths).

    Without a shard count each bundle writes a file of its own (a retried bundle writes another; only the
    files of bundles that completed are named), and one step then names them `features-SSSSS-of-NNNNN`. Beam's
    own writer does the same with a side input read while writing (its initialisation's result), so a runner
    fuses that read into the stage that produces the records, the decode-and-embed stage: Prism 2.77 then
    re-evaluates that stage in a loop for as long as its bundle runs, a whole core (300 short clips: Prism's
    process 45 CPU s of a 60 s job, the job at 0.5x the in-process runner; bench/runners.py). With a shard count
    Beam's writer groups the records first, so nothing is read beside them where they are produced."""

    def __init__(self, folder: str, num_shards: int = 0):
        super().__init__()
        self._folder = folder
        self._num_shards = num_shards

    def expand(self, records):
        if self._num_shards:
            return records | "WriteShards" >> beam.io.WriteToTFRecord(
                fs.join(self._folder, SHARD_PREFIX), file_name_suffix=SHARD_SUFFIX, num_shards=self._num_shards,
                shard_name_template="-SSSSS-of-NNNNN")
        written = records | "WriteBundles" >> beam.ParDo(_WriteBundleRecords(fs.join(self._folder, BUNDLES_DIR)))
        return (records.pipeline | "Once" >> beam.Create([None])
                | "NameShards" >> beam.FlatMap(_name_shards, self._folder, beam.pvalue.AsList(written)))


class _WriteBundleRecords(beam.DoFn):
    """Each bundle's records into a TFRecord file of its own under `folder`; emits its path when the bundle ends."""

    def __init__(self, folder: str):
        self._folder = folder
        self._file = self._path = None

    def start_bundle(self):
        self._file = self._path = None

    def process(self, record: bytes):
        from apache_beam.io.tfrecordio import _TFRecordUtil

        if self._file is None:
            self._path = fs.join(self._folder, f"{SHARD_PREFIX}-{uuid.uuid4().hex}{SHARD_SUFFIX}")
            self._file = fs.open_write(self._path)
        _TFRecordUtil.write_record(self._file, record)

    def finish_bundle(self):
        if self._file is not None:
            self._file.close()
            path, self._file, self._path = self._path, None, None
            yield WindowedValue(path, GlobalWindow().max_timestamp(), (GlobalWindow(),))


def _name_shards(_, folder: str, paths: list[str]) -> list[str]:
    """The bundles' files renamed `features-SSSSS-of-NNNNN` under `folder`; one empty shard when no bundle wrote
    (as Beam's writer). Run again after some were renamed (a retried step), it renames the rest."""
    paths = sorted(paths)
    count = max(len(paths), 1)
    names = [fs.join(folder, f"{SHARD_PREFIX}-{i:05d}-of-{count:05d}{SHARD_SUFFIX}") for i in range(count)]
    if not paths:
        fs.write_bytes(names[0], b"")
    for path, name in zip(paths, names):
        if fs.exists(path):
            fs.move([path], [name])
        elif not fs.exists(name):
            raise RuntimeError(f"written records lost: neither {path} nor {name} exists")
    return names


class CountSplits(beam.CombineFn):
    """(video id, label) of every record written -> the manifest's `split_counts` (tfrecords_schema.split_counts:
    records per label and per hundredth of the hash of the video id), so that training knows how many records
    of each label any split at a whole percent holds without reading one. Ids are hashed `BATCH` at a time."""

    BATCH = 4096

    def create_accumulator(self):
        return [], [], None  # ids and labels not hashed yet, the split counts of those that were

    def add_input(self, accumulator, element):
        ids, labels, counts = accumulator
        ids.append(element[0])
        labels.append(element[1])
        return self._flushed(accumulator) if len(ids) >= self.BATCH else accumulator

    def merge_accumulators(self, accumulators):
        merged = None
        for accumulator in accumulators:
            counts = self._flushed(accumulator)[2]
            merged = counts if merged is None else _add(merged, counts)
        return [], [], merged

    def extract_output(self, accumulator):
        from tfrecords_schema.dataset import SPLIT_COUNT_BUCKETS

        counts = self._flushed(accumulator)[2]
        return counts if counts is not None else {"buckets": SPLIT_COUNT_BUCKETS, "split_by": "", "counts": {}}

    @staticmethod
    def _flushed(accumulator):
        from tfrecords_schema.dataset import split_counts

        ids, labels, counts = accumulator
        if not ids:
            return accumulator
        part = split_counts(ids, labels)
        return [], [], part if counts is None else _add(counts, part)


def _add(first: dict | None, second: dict | None) -> dict | None:
    from tfrecords_schema.dataset import add_split_counts

    return second if first is None else first if second is None else add_split_counts(first, second)
