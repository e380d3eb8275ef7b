"""Embedded videos -> feature records (one SequenceExample per video, see tfrecords_schema), written as
sharded TFRecord files."""

from __future__ import annotations

import apache_beam as beam

from beam_jobs.decode import FrameOptions, Video
from common import fs

SHARD_PREFIX = "features"
SHARD_SUFFIX = ".tfrecord"
SHARD_PATTERN = f"{SHARD_PREFIX}-*-of-*{SHARD_SUFFIX}"


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
    """PCollection[serialized record] -> the shard files written under `folder` (their paths)."""

    def __init__(self, folder: str, num_shards: int = 0):
        super().__init__()
        self._folder = folder
        self._num_shards = num_shards

    def expand(self, records):
        return records | "WriteShards" >> beam.io.WriteToTFRecord(
            fs.join(self._folder, SHARD_PREFIX), file_name_suffix=SHARD_SUFFIX, num_shards=self._num_shards,
            shard_name_template="-SSSSS-of-NNNNN")


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
