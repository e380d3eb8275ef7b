"""Shared fixtures: small generated clip sets and one featurize run reused by several test modules.

Tests never download: clips are generated with OpenCV, DenseNet121 uses `--weights random`, and frames are
small (`TEST_IMAGE_SIZE`) so the suite stays fast on 2 cores.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

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


@pytest.fixture(scope="session")
def clip_set(tmp_path_factory) -> Path:
    """Six order-only classes, 3 clips each, small frames."""
    from beam_jobs.sample_videos import write_sample_set

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
