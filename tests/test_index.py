"""The packet index: frames and keyframes read by demuxing alone, and when it cannot be trusted."""

from __future__ import annotations

import av
import numpy as np
import pytest

from h264_clips import write_h264
from video.index import _why_untrusted, read_index


def index_of(path):
    with av.open(str(path)) as container:
        index, packets = read_index(container, container.streams.video[0])
    assert packets is None  # kept only when asked to
    return index


def test_an_h264_clip_lists_its_frames_and_keyframes_in_presentation_order(tmp_path):
    write_h264(tmp_path / "clip.mp4", 100, 30, fps=25)
    index = index_of(tmp_path / "clip.mp4")
    assert index.trusted and index.frame_count == 100 and index.stated_count == 100
    assert (np.diff(index.pts) > 0).all()  # sorted, though B-frames are stored out of presentation order
    assert index.positions_of_keyframes.tolist() == [0, 30, 60, 90]
    assert index.keyframe_before(59) == (int(index.pts[30]), 30)
    assert index.keyframe_before(60) == (int(index.pts[60]), 60)
    np.testing.assert_allclose(index.times_s()[:3], [0.0, 0.04, 0.08], atol=1e-6)


@pytest.mark.parametrize("pts, dts, key, reason", [
    ([0, 1, 2], [0, 1, 2], [True, False, False], ""),
    ([0, 2, 1], [-1, 0, 1], [True, False, False], ""),  # B-frames: pts out of order, dts increasing
    ([0, None, 2], [0, 1, 2], [True, False, False], "packets without presentation timestamps"),
    ([0, 1, 1], [0, 1, 2], [True, False, False], "repeated presentation timestamps"),
    ([0, 1, 2], [0, 2, 1], [True, False, False], "decode timestamps out of order"),
    ([0, 1, 2], [0, 1, 2], [False, True, False], "the stream does not start with a keyframe"),
    ([], [], [], "no packets"),
])
def test_why_an_index_is_not_trusted(pts, dts, key, reason):
    assert _why_untrusted(pts, dts, key) == reason


def test_small_streams_keep_their_packets_for_decoding_through(tmp_path):
    write_h264(tmp_path / "clip.mp4", 40, 10)
    with av.open(str(tmp_path / "clip.mp4")) as container:
        index, packets = read_index(container, container.streams.video[0], keep_bytes=1 << 20)
        assert len(packets) == index.frame_count == 40
    with av.open(str(tmp_path / "clip.mp4")) as container:
        assert read_index(container, container.streams.video[0], keep_bytes=100)[1] is None  # too big to keep
