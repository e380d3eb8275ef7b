"""Windows along a video (video.segments): where windows start and end, which frames each samples by the
stream's presentation times (a variable-frame-rate clip included), each frame decoded once however many
windows share it, the whole-video sample equal to video.frames', chunks in bounded memory, the untrusted-index
and fallback paths, and the isolated child's protocol for them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import video.segments
from h264_clips import decode_every_frame, write_h264
from video.frames import DecodeError, SampledFrames, decode_and_sample, sample_frame_indices
from video.isolated import IsolatedDecoder
from video.reader import PROGRESS_FRAMES, VideoReader
from video.segments import WindowFrames, chunk_windows, iter_segments, plan_windows, video_end_s

SIZE = 32


def windows_of(parts) -> list:
    return [window for part in parts if isinstance(part, WindowFrames) for window in part.windows]


def frames_by_position(parts) -> dict[int, np.ndarray]:
    """Every chunk's frames by presentation position (a frame two chunks share must be the same in both)."""
    found = {}
    for part in parts:
        if isinstance(part, WindowFrames):
            for frame, position in zip(part.frames, part.frame_indices):
                if position in found:
                    np.testing.assert_array_equal(found[position], frame)
                found[position] = frame
    return found


@pytest.fixture(scope="module")
def h264_clip(tmp_path_factory):
    """10 s at 25 fps, a keyframe every 25 frames, B-frames."""
    path = tmp_path_factory.mktemp("segments") / "clip.mp4"
    write_h264(path, 250, 25)
    return path


# --- Window maths --------------------------------------------------------------------------------------


def test_windows_start_every_stride_until_one_reaches_the_end():
    times = np.arange(35) / 10.0  # 3.5 s at 10 fps
    end = video_end_s(times, 10.0)
    assert end == pytest.approx(3.5)
    windows = plan_windows(times, end, 1.0, 1.0, 4)
    assert [(w.index, w.start_s, w.end_s) for w in windows] == [(0, 0.0, 1.0), (1, 1.0, 2.0), (2, 2.0, 3.0),
                                                                 (3, 3.0, 3.5)]
    assert [w.positions for w in windows] == [(0, 3, 6, 9), (10, 13, 16, 19), (20, 23, 26, 29), (30, 31, 33, 34)]
    overlapping = plan_windows(times, end, 1.0, 0.5, 4)
    assert [w.start_s for w in overlapping] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert overlapping[-1].end_s == 3.5 and overlapping[1].positions == (5, 8, 11, 14)


def test_a_video_shorter_than_one_window_has_one_window():
    times = np.arange(9) / 10.0
    (window,) = plan_windows(times, video_end_s(times, 10.0), 10.0, 10.0, 4)
    assert (window.start_s, window.end_s, window.positions) == (0.0, pytest.approx(0.9), (0, 3, 5, 8))
    (single,) = plan_windows([0.0], video_end_s(np.zeros(1), 25.0), 10.0, 10.0, 4)
    assert single.positions == (0,) and single.end_s == pytest.approx(0.04)


def test_a_window_where_no_frame_starts_takes_the_frame_on_screen():
    times = [0.0, 0.5, 3.0, 3.5]  # the frame at 0.5 s is shown until 3 s
    windows = plan_windows(times, 4.0, 1.0, 1.0, 4)
    assert [w.positions for w in windows] == [(0, 1), (1,), (1,), (2, 3)]


def test_windows_are_sampled_the_way_clips_are():
    times = np.arange(100) / 10.0
    first = plan_windows(times, 10.0, 5.0, 5.0, 3, "first")
    assert [w.positions for w in first] == [(0, 1, 2), (50, 51, 52)]
    keyframes = np.array([0, 20, 40, 60, 80])
    picked = plan_windows(times, 10.0, 5.0, 5.0, 3, "keyframes", keyframes)
    assert [w.positions for w in picked] == [(0, 20, 40), (60, 80, 81)]
    untrusted = plan_windows(times, 10.0, 5.0, 5.0, 3, "keyframes", None)
    assert [w.positions for w in untrusted] == [(0, 24, 49), (50, 74, 99)]
    with pytest.raises(ValueError, match="sampling"):
        plan_windows(times, 10.0, 5.0, 5.0, 3, "random")


def test_chunks_hold_whole_windows_within_their_frame_budget():
    times = np.arange(100) / 10.0
    windows = plan_windows(times, 10.0, 1.0, 0.5, 4)
    chunks = chunk_windows(windows, 10)
    assert [w for chunk in chunks for w in chunk] == windows
    assert all(len({p for w in chunk for p in w.positions}) <= 10 for chunk in chunks)
    assert [len(chunk) for chunk in chunk_windows(windows, 2)] == [1] * len(windows)  # one window at least


# --- Decoding the windows ------------------------------------------------------------------------------


def test_windows_of_a_variable_frame_rate_clip_follow_its_presentation_times(tmp_path):
    # 2 s at 25 fps, 2 s at 5 fps, 2 s at 25 fps: a nominal rate would put frame 60 at 2.4 s, it is shown at 4 s.
    times = [i * 0.04 for i in range(50)] + [2.0 + i * 0.2 for i in range(10)] + [4.0 + i * 0.04 for i in range(50)]
    path = tmp_path / "vfr.mp4"
    write_h264(path, len(times), 10, frame_times_s=times)
    parts = list(iter_segments(str(path), 4, SIZE, "uniform", 1.0, 1.0))
    windows = windows_of(parts)
    assert [(w.start_s, w.end_s) for w in windows] == [(float(k), float(k + 1)) for k in range(6)]
    for window in windows:
        inside = [p for p, t in enumerate(times) if window.start_s - 1e-6 <= t < window.end_s - 1e-6]
        assert window.positions == tuple(inside[i] for i in sample_frame_indices(len(inside), 4))
    assert windows[2].positions == (50, 51, 53, 54) and windows[4].positions == (60, 68, 76, 84)
    chunk_times = {p: t for part in parts[:-1] for p, t in zip(part.frame_indices, part.timestamps_s)}
    assert chunk_times == pytest.approx({p: times[p] for p in chunk_times}, abs=1e-3)
    _, reference = decode_every_frame(path, SIZE, lambda count: range(count))
    for position, frame in frames_by_position(parts).items():
        np.testing.assert_array_equal(frame, reference[position])


@pytest.mark.parametrize("sampling", ["uniform", "keyframes", "first"])
def test_the_whole_video_sample_is_the_one_decode_and_sample_takes(h264_clip, sampling):
    *chunks, whole = iter_segments(str(h264_clip), 8, SIZE, sampling, 2.0, 1.0)
    expected = decode_and_sample(str(h264_clip), 8, SIZE, sampling)
    assert isinstance(whole, SampledFrames) and all(isinstance(c, WindowFrames) for c in chunks)
    assert whole.frame_indices == expected.frame_indices and whole.decoded_frame_count == 250
    np.testing.assert_array_equal(whole.frames, expected.frames)
    assert whole.timestamps_s == pytest.approx(expected.timestamps_s)


def test_frames_shared_by_overlapping_windows_are_decoded_once(h264_clip, monkeypatch):
    converted, asked = [], []
    square_rgb, read = video.segments.square_rgb, VideoReader.read
    monkeypatch.setattr(video.segments, "square_rgb", lambda frame, size: converted.append(frame.pts) or
                        square_rgb(frame, size))
    monkeypatch.setattr(VideoReader, "read", lambda self, positions, convert, to_end=False, resume=False:
                        asked.append(list(positions)) or read(self, positions, convert, to_end, resume))
    # 2 s windows (50 frames, sampled every 7th) every 0.56 s (14 frames): a window's samples are its
    # predecessor's moved by two, six of eight shared; chunks of at most 12 frames.
    parts = list(iter_segments(str(h264_clip), 8, SIZE, "uniform", 2.0, 0.56, chunk_frames=12))
    windows = windows_of(parts)
    union = {p for w in windows for p in w.positions} | set(parts[-1].frame_indices)
    assert sum(len(w.positions) for w in windows) > 2 * len(union)  # the windows do share frames
    assert len(parts) - 1 > 3 and all(len(part.frame_indices) <= 12 for part in parts[:-1])
    read_positions = [p for positions in asked for p in positions]
    assert sorted(read_positions) == sorted(union) and len(converted) == len(union)
    _, reference = decode_every_frame(h264_clip, SIZE, lambda count: range(count))
    for part in parts[:-1]:
        for window in part.windows:
            rows = part.rows(window)
            assert [part.frame_indices[r] for r in rows] == list(window.positions)
            for row in rows:
                np.testing.assert_array_equal(part.frames[row], reference[part.frame_indices[row]])


def test_an_untrusted_index_is_decoded_through_for_its_timestamps_first(h264_clip, monkeypatch):
    trusted = list(iter_segments(str(h264_clip), 8, SIZE, "uniform", 2.0, 1.0))

    class UntrustedReader(VideoReader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.index = dataclasses.replace(self.index, untrusted="said so by the test")

    monkeypatch.setattr(video.segments, "VideoReader", UntrustedReader)
    untrusted = list(iter_segments(str(h264_clip), 8, SIZE, "uniform", 2.0, 1.0))
    assert windows_of(untrusted) == windows_of(trusted) and untrusted[-1].read_method == "through"
    assert untrusted[-1].frame_indices == trusted[-1].frame_indices
    for position, frame in frames_by_position(trusted).items():
        np.testing.assert_array_equal(frames_by_position(untrusted)[position], frame)


def test_after_a_read_that_fell_back_the_rest_is_read_in_one_pass(h264_clip, monkeypatch):
    expected = list(iter_segments(str(h264_clip), 8, SIZE, "uniform", 1.0, 1.0, chunk_frames=16))
    read, calls = VideoReader.read, []

    def falls_back_once(self, positions, convert, to_end=False, resume=False):
        calls.append(positions)
        if len(calls) == 2:
            result = self.read_through(positions, convert, to_end, "fallback")
            result.reason = "the test's seek failed"
            return result
        return read(self, positions, convert, to_end, resume)

    monkeypatch.setattr(VideoReader, "read", falls_back_once)
    parts = list(iter_segments(str(h264_clip), 8, SIZE, "uniform", 1.0, 1.0, chunk_frames=16))
    assert len(calls) == 2 and len(parts) == len(expected) > 3  # later chunks came from the one pass
    assert (parts[-1].read_method, parts[-1].fallback_reason) == ("fallback", "the test's seek failed")
    assert windows_of(parts) == windows_of(expected)
    for position, frame in frames_by_position(expected).items():
        np.testing.assert_array_equal(frames_by_position(parts)[position], frame)


def test_the_isolated_child_sends_the_chunks_and_stays_in_step(h264_clip, tmp_path):
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video\n" * 20)
    decoder = IsolatedDecoder(timeout_s=60)
    try:
        parts = list(decoder.decode_segments(str(h264_clip), 8, SIZE, "uniform", 2.0, 1.0))
        direct = list(iter_segments(str(h264_clip), 8, SIZE, "uniform", 2.0, 1.0))
        assert windows_of(parts) == windows_of(direct)
        np.testing.assert_array_equal(parts[-1].frames, direct[-1].frames)
        with pytest.raises(DecodeError, match="cannot open as a video"):
            list(decoder.decode_segments(str(not_a_video), 8, SIZE, "uniform", 2.0, 1.0))
        unfinished = decoder.decode_segments(str(h264_clip), 8, SIZE, "uniform", 0.2, 0.2)
        assert isinstance(next(unfinished), WindowFrames)
        unfinished.close()  # the child was still sending: it is replaced, and the next file is answered right
        assert decoder.decode(str(h264_clip), 8, SIZE, "uniform").frame_indices == direct[-1].frame_indices
    finally:
        decoder.close()


def test_a_file_with_one_keyframe_is_decoded_once_and_reports_progress_as_it_goes(tmp_path):
    """An intra-refresh or infinite-GOP file: every chunk's frames lie after its only keyframe. Each chunk goes
    on from where the previous one left the decoder, so no frame is decoded twice (12 chunks decoded from the
    start each would be ~3,900 frames), and `on_progress` hears of the decoding at least every PROGRESS_FRAMES
    frames, also while one read decodes most of the file."""
    path = tmp_path / "one_keyframe.mp4"
    write_h264(path, 600, 1000)
    with VideoReader(str(path)) as reader:
        assert len(reader.index.keyframe_pts) == 1 and reader.index.frame_count == 600
    _, reference = decode_every_frame(path, SIZE, lambda count: range(count))
    for chunk_frames in (16, video.segments.CHUNK_FRAMES):  # 12 chunks; one chunk for the whole file
        reports = []
        parts = list(iter_segments(str(path), 8, SIZE, "uniform", 1.0, 1.0, chunk_frames=chunk_frames,
                                   on_progress=reports.append))
        assert len(parts) - 1 == (12 if chunk_frames == 16 else 1)
        assert sum(reports) <= 600  # frames that came out of the decoder (unwanted B-frames are skipped)
        assert 0 < max(reports) <= PROGRESS_FRAMES and len(reports) >= 600 // 2 // PROGRESS_FRAMES
        assert parts[-1].read_method == "seek" and len(windows_of(parts)) == 24
        for position, frame in frames_by_position(parts).items():
            np.testing.assert_array_equal(frame, reference[position])
