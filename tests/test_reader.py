"""The seeking reader: its plan, its checks against the index, and its fallback to decoding through."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from h264_clips import write_h264
from video.frames import sample_frame_indices, square_rgb
from video.reader import SEEK_COST, VideoReader, plan_reads


def small(frame):
    return square_rgb(frame, 16)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("reader") / "k10.mp4"
    write_h264(path, 200, 10)
    return str(path)


def test_the_plan_seeks_only_where_that_decodes_fewer_frames(clip):
    with VideoReader(clip) as reader:
        dense = plan_reads(reader.index, list(range(0, 200, 3)))
        sparse = plan_reads(reader.index, [0, 55, 199])
    assert not any(seek for _, seek, _ in dense[1:])  # 3 frames apart: going on is cheaper
    assert [seek for _, seek, _ in sparse] == [False, True, True]
    assert [cost for _, _, cost in sparse] == [1, 55 - 50 + 1 + SEEK_COST, 199 - 190 + 1 + SEEK_COST]


def test_seeking_and_decoding_through_give_the_same_frames(clip):
    positions = sample_frame_indices(200, 12)
    with VideoReader(clip) as reader:
        seeking = reader.read(positions, small)
        through = reader.read_through(positions, small, to_end=True)
    assert seeking.method == "seek" and through.method == "through" and through.frame_count == 200
    assert seeking.decoded < 200 / 2  # keyframes every 10 frames, 12 targets: most frames are never decoded
    assert sorted(seeking.frames) == sorted(through.frames) == positions
    for p in positions:
        np.testing.assert_array_equal(seeking.frames[p][0], through.frames[p][0])
        assert seeking.frames[p][1] == through.frames[p][1]


def test_an_index_that_misplaces_frames_falls_back_to_decoding_through(clip):
    positions = [0, 55, 120, 199]
    with VideoReader(clip) as reader:
        expected = reader.read_through(positions, small, to_end=True)
        # As if the container's timestamps were off by one frame's duration from the second frame on.
        step = int(reader.index.pts[1] - reader.index.pts[0])
        pts = reader.index.pts.copy()
        pts[1:] += step // 2
        reader.index = dataclasses.replace(reader.index, pts=pts)
        result = reader.read(positions, small, to_end=True)
    assert result.method == "fallback" and "not where the index put it" in result.reason
    assert result.frame_count == 200
    for p in positions:
        np.testing.assert_array_equal(result.frames[p][0], expected.frames[p][0])


def test_ffmpeg_errors_while_seeking_fall_back_to_decoding_through(clip):
    log = {"text": ""}

    def decoder_log():
        text = log["text"]
        log["text"] = "[h264 @ 0x55d0c1a2b3c0] error while decoding MB 3 4\n"  # from the second look on
        return text

    with VideoReader(clip, decoder_log=decoder_log) as reader:
        result = reader.read([0, 55, 199], small)
    assert result.method == "fallback" and result.reason == "FFmpeg reported errors while seeking"
    assert sorted(result.frames) == [0, 55, 199]


def test_an_untrusted_index_decodes_through(clip):
    with VideoReader(clip) as reader:
        reader.index = dataclasses.replace(reader.index, untrusted="repeated presentation timestamps")
        result = reader.read([0, 55, 199], small)
    assert result.method == "through" and sorted(result.frames) == [0, 55, 199] and result.decoded == 200


def test_presentation_times_are_seconds_from_the_first_frame(clip):
    with VideoReader(clip) as reader:
        result = reader.read([0, 50, 199], small)
        times = reader.times_s([result.frames[p][1] for p in (0, 50, 199)], [0, 50, 199])
    np.testing.assert_allclose(times, [0.0, 2.0, 7.96], atol=1e-6)
