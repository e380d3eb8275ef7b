"""Every clip of ../shared/real_videos (many codecs and containers; skipped when the folder is absent):
`uniform` gives exactly the frames of decoding every frame, and `keyframes` gives distinct frames within
one keyframe interval of the uniform positions."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import REAL_VIDEOS
from h264_clips import decode_every_frame
from video.frames import decode_and_sample, sample_frame_indices
from video.reader import VideoReader

FRAMES, SIZE = 20, 32
CLIPS = sorted(p for p in REAL_VIDEOS.rglob("*") if p.is_file() and p.suffix.lower() != ".md") \
    if REAL_VIDEOS.is_dir() else []
pytestmark = pytest.mark.skipif(not CLIPS, reason="../shared/real_videos is absent")


def clip_id(path) -> str:
    return path.name


@pytest.mark.parametrize("path", CLIPS, ids=clip_id)
def test_uniform_equals_decoding_every_frame(path):
    count, expected = decode_every_frame(path, SIZE, lambda n: sample_frame_indices(n, FRAMES))
    sampled = decode_and_sample(str(path), FRAMES, SIZE)
    assert sampled.read_method in ("seek", "through"), sampled.fallback_reason
    assert sampled.decoded_frame_count == count
    assert sampled.frame_indices == sorted(expected)
    np.testing.assert_array_equal(sampled.frames, np.stack([expected[i] for i in sampled.frame_indices]))


@pytest.mark.parametrize("path", CLIPS, ids=clip_id)
def test_keyframes_are_distinct_and_near_the_uniform_positions(path):
    sampled = decode_and_sample(str(path), FRAMES, SIZE, "keyframes")
    with VideoReader(str(path)) as reader:
        count, keyframes = reader.index.frame_count, reader.index.positions_of_keyframes.tolist()
    indices = sampled.frame_indices
    assert len(indices) == min(FRAMES, count) and len(set(indices)) == len(indices)
    bounds = keyframes + [count]
    for index, uniform in zip(indices, sample_frame_indices(count, FRAMES)):
        k = max(i for i, key in enumerate(keyframes) if key <= uniform)
        assert abs(index - uniform) <= bounds[k + 1] - bounds[k]  # within the keyframe interval it falls in
    _, expected = decode_every_frame(path, SIZE, lambda n: indices)
    np.testing.assert_array_equal(sampled.frames, np.stack([expected[i] for i in indices]))
