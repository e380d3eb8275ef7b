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
