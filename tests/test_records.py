"""beam_jobs.records: embedded videos -> padded, masked feature records in sharded TFRecord files."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.decode import FrameOptions, Video
from beam_jobs.matching import VideoRef
from beam_jobs.records import (BUNDLES_DIR, SHARD_PATTERN, WriteFeatureRecords, _name_shards, encode_video,
                               to_video_record)
from tfrecords_schema import RecordError, dataset_spec, decode_video_record, make_decoded_dataset, match_record_files
from video.frames import SampledFrames

TestPipeline.__test__ = False  # a Beam class, not a test class for pytest to collect

OPTIONS = FrameOptions(max_seq_length=5, image_size=32, sampling="uniform")
BACKBONE = "densenet121/random-seed7"
DIM = 8


def embedded(video_id: str, num_frames: int, seed: int = 0) -> Video:
    features = np.random.default_rng(seed).normal(size=(num_frames, DIM)).astype(np.float32) + 1.0
    sampled = SampledFrames(frames=None, frame_indices=[3 * i for i in range(num_frames)],
                            decoded_frame_count=3 * num_frames + 1, source_fps=25.0, frame_height=72, frame_width=96)
    return Video(ref=VideoRef(video_id, f"/videos/{video_id}", f"label-{video_id[0]}", 1234, 5.0),
                 fingerprint="ab" * 32, sampled=sampled, features=features)


def test_to_video_record_pads_and_masks():
    video = embedded("a.avi", 3)
    record = to_video_record(video, OPTIONS, BACKBONE)
    assert record.features.shape == (5, DIM) and record.features.dtype == np.float32
    np.testing.assert_array_equal(record.features[:3], video.features)
    np.testing.assert_array_equal(record.features[3:], np.zeros((2, DIM), np.float32))
    assert record.num_valid_frames == 3 and record.mask.tolist() == [True, True, True, False, False]
    assert (record.video_id, record.uri, record.label, record.fingerprint) == (
        "a.avi", "/videos/a.avi", "label-a", "ab" * 32)
    assert record.frame_indices == [0, 3, 6] and record.decoded_frame_count == 10
    assert (record.source_fps, record.frame_height, record.frame_width) == (25.0, 72, 96)
    assert (record.backbone_id, record.image_size, record.sampling) == (BACKBONE, 32, "uniform")


def test_a_full_video_has_no_padding_and_too_many_frames_are_refused():
    full = to_video_record(embedded("b.avi", 5), OPTIONS, BACKBONE)
    assert full.mask.all() and full.num_valid_frames == 5
    with pytest.raises(RecordError, match=r"1 <= n <= 5, got \(6, 8\)"):
        to_video_record(embedded("c.avi", 6), OPTIONS, BACKBONE)


@pytest.mark.parametrize("encoding, tolerance", [("float32", 0.0), ("float16", 1e-2)])
def test_encode_video_round_trips(encoding, tolerance):
    video = embedded("dir/a.avi", 2, seed=1)
    record = decode_video_record(encode_video(video, OPTIONS, BACKBONE, encoding))
    assert record.video_id == "dir/a.avi" and record.num_valid_frames == 2
    assert record.mask.tolist() == [True, True, False, False, False]
    np.testing.assert_allclose(record.features[:2], video.features, atol=tolerance)
    assert not record.features[2:].any()
    assert record.spec.feature_dim == DIM and record.spec.max_seq_length == 5 and record.spec.backbone_id == BACKBONE


def test_write_feature_records_writes_shards_that_the_schema_reads_back(tmp_path):
    counts = [("a", 1), ("b", 5), ("c", 3), ("d", 2)]
    videos = [embedded(f"{name}.avi", n, seed=i) for i, (name, n) in enumerate(counts)]
    folder = str(tmp_path / "staging")
    with TestPipeline() as pipeline:
        written = (pipeline
                   | beam.Create([encode_video(v, OPTIONS, BACKBONE, "float32") for v in videos])
                   | WriteFeatureRecords(folder, num_shards=2))
        # Read as the jobs read it, a side input: Beam stamps the written paths at MAX_TIMESTAMP, past the end
        # of the global window; Prism drops such elements at a GroupByKey (assert_that's saw []) or panics.
        names = (pipeline | "Once" >> beam.Create([None])
                 | "Names" >> beam.FlatMap(lambda _, paths: [os.path.basename(p) for p in paths],
                                           beam.pvalue.AsList(written)))
        assert_that(names, equal_to(["features-00000-of-00002.tfrecord", "features-00001-of-00002.tfrecord"]))
    assert sorted(os.listdir(folder)) == ["features-00000-of-00002.tfrecord", "features-00001-of-00002.tfrecord"]
    assert all(fnmatch.fnmatch(name, SHARD_PATTERN) for name in os.listdir(folder))
    files = match_record_files(os.path.join(folder, SHARD_PATTERN))
    spec = dataset_spec(files)
    assert (spec.feature_dim, spec.max_seq_length, spec.backbone_id, spec.image_size, spec.sampling) == (
        DIM, 5, BACKBONE, 32, "uniform")
    decoded = {d["video_id"].numpy().decode(): d for d in make_decoded_dataset(files)}
    assert sorted(decoded) == ["a.avi", "b.avi", "c.avi", "d.avi"]
    for video in videos:
        d = decoded[video.ref.video_id]
        n = len(video.features)
        assert d["features"].shape == (5, DIM) and int(d["num_valid_frames"]) == n
        assert d["mask"].numpy().tolist() == [True] * n + [False] * (5 - n)
        np.testing.assert_array_equal(d["features"].numpy()[:n], video.features)
        assert d["label"].numpy().decode() == video.ref.label


def test_write_feature_records_without_a_shard_count(tmp_path):
    folder = str(tmp_path / "out")
    with TestPipeline() as pipeline:
        _ = (pipeline | beam.Create([encode_video(embedded("a.avi", 2), OPTIONS, BACKBONE, "float16")])
             | WriteFeatureRecords(folder))
    files = match_record_files(os.path.join(folder, SHARD_PATTERN))
    assert files and all(fnmatch.fnmatch(os.path.basename(f), "features-*-of-*.tfrecord") for f in files)
    assert dataset_spec(files).feature_encoding == "float16"
    assert [d["video_id"].numpy() for d in make_decoded_dataset(files)] == [b"a.avi"]
    assert os.listdir(os.path.join(folder, BUNDLES_DIR)) == []  # each bundle's file became a shard


def test_bundle_files_are_named_as_shards_by_a_step_that_may_run_again(tmp_path):
    bundles = tmp_path / BUNDLES_DIR
    bundles.mkdir()
    paths = [str(bundles / f"features-{name}.tfrecord") for name in ("b", "a", "c")]
    for path in paths:
        Path(path).write_bytes(path.encode())
    names = [str(tmp_path / f"features-0000{i}-of-00003.tfrecord") for i in range(3)]
    os.rename(sorted(paths)[0], names[0])  # a first attempt renamed one, then failed
    assert _name_shards(None, str(tmp_path), paths) == names
    assert [Path(name).read_bytes() for name in names] == [p.encode() for p in sorted(paths)]
    assert os.listdir(bundles) == []
    with pytest.raises(RuntimeError, match="written records lost"):
        _name_shards(None, str(tmp_path), [str(bundles / "features-gone.tfrecord")])


def test_no_records_make_one_empty_shard(tmp_path):
    assert _name_shards(None, str(tmp_path), []) == [str(tmp_path / "features-00000-of-00001.tfrecord")]
    assert (tmp_path / "features-00000-of-00001.tfrecord").read_bytes() == b""
