"""Shared fixtures: small generated clip sets and one featurize run reused by several test modules.

Tests never download: clips are generated with OpenCV, DenseNet121 uses `--weights random`, and frames are
small (`TEST_IMAGE_SIZE`) so the suite stays fast on 2 cores.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logging.getLogger("apache_beam.typehints").setLevel(logging.WARNING)

TEST_IMAGE_SIZE = 64
TEST_FRAMES = 8
REAL_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "real_videos"


def featurize_args(inputs, output, *extra) -> list[str]:
    """Arguments for a small, offline featurize run."""
    args = []
    for path in [inputs] if isinstance(inputs, (str, Path)) else inputs:
        args += ["--input", str(path)]
    return args + ["--output", str(output), "--weights", "random", "--image-size", str(TEST_IMAGE_SIZE),
                   "--max-seq-length", str(TEST_FRAMES), "--runner", "DirectRunner", *map(str, extra)]


def read_records(output) -> dict:
    """{video id: VideoRecord} of every features-*.tfrecord shard under `output`."""
    import tensorflow as tf

    from tfrecords_schema import decode_video_record

    files = sorted(tf.io.gfile.glob(str(Path(output) / "features-*.tfrecord")))
    return {r.video_id: r for r in (decode_video_record(raw) for f in files
                                    for raw in tf.data.TFRecordDataset(f).as_numpy_iterator())}


def read_csv(path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


RECORD_FRAMES, RECORD_DIM = 8, 16  # the synthetic feature records of make_records


def make_records(directory, per_class, seed, shards=2, dim=RECORD_DIM, backbone="test-net", order=1):
    """Order-dependent clips: "up" features ramp up along one direction over the valid frames, "down" is the
    same ramp reversed, so only frame order tells them apart. 3..8 valid frames, the rest padding.
    Returns the records written (in write order)."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(0).normal(size=dim).astype("float32")
    from tfrecords_schema import VideoRecord

    records = []
    for label in ("down", "up"):
        for i in range(per_class):
            valid = int(rng.integers(3, RECORD_FRAMES + 1))
            ramp = np.linspace(0.0, 1.0, valid, dtype="float32")
            features = np.zeros((RECORD_FRAMES, dim), "float32")
            features[:valid] = (ramp if label == "up" else ramp[::-1])[:, None] * direction
            features[:valid] += 0.3 * rng.normal(size=(valid, dim))
            records.append(VideoRecord(
                video_id=f"{label}-{seed}-{i}", uri=f"file:///clips/{label}/{seed}-{i}.mp4", label=label,
                features=features, num_valid_frames=valid, frame_indices=list(range(valid)), source_fps=25.0,
                decoded_frame_count=valid, frame_height=64, frame_width=64, backbone_id=backbone, image_size=224))
    write_records(directory, records[::order], shards)
    return records


def write_records(directory, records, shards):
    """Write `records` round-robin into `shards` TFRecord files under `directory`."""
    import tensorflow as tf

    from tfrecords_schema import encode_video_record

    os.makedirs(directory, exist_ok=True)
    writers = [tf.io.TFRecordWriter(os.path.join(directory, f"features-{i:05d}-of-{shards:05d}.tfrecord"))
               for i in range(shards)]
    for i, record in enumerate(records):
        writers[i % shards].write(encode_video_record(record))
    for writer in writers:
        writer.close()


@pytest.fixture
def bucket():
    """A fresh mem:// prefix (an in-memory object store standing in for gs://, see memfs.py); its objects are
    dropped afterwards."""
    import uuid

    import memfs

    prefix = f"mem://bucket-{uuid.uuid4().hex[:8]}"
    yield prefix
    for name in [n for n in memfs.OBJECTS if n.startswith(prefix + "/")]:
        del memfs.OBJECTS[name]


@pytest.fixture(scope="session")
def clip_set(tmp_path_factory) -> Path:
    """Six order-only classes, 3 clips each, small frames."""
    from tools.sample_videos import write_sample_set

    root = tmp_path_factory.mktemp("clips")
    write_sample_set(str(root), per_class=3, seed=11, min_frames=12, max_frames=40,
                     sizes=[(96, 72), (64, 64), (80, 60)])
    return root


@pytest.fixture(scope="session")
def featurized(clip_set, tmp_path_factory) -> Path:
    """One featurize run over `clip_set` (labels from folder names), 2 shards."""
    from beam_jobs import featurize

    output = tmp_path_factory.mktemp("featurized") / "out"
    featurize.run(featurize_args(clip_set, output, "--num-shards", "2"))
    return output
