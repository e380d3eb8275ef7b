"""Frame sampling and decoding: short and long clips, odd frame sizes, lying metadata, bounded memory."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from video.isolated import IsolatedDecoder
from video.frames import DecodeError, decode_and_sample, sample_frame_indices, square_crop_resize


def write_numbered_clip(path, num_frames, width=64, height=48, fourcc="MJPG"):
    """A clip whose frame i has brightness i (mod 256), so sampled indices can be read back from pixels."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25.0, (width, height))
    for i in range(num_frames):
        writer.write(np.full((height, width, 3), (i * 3) % 256, np.uint8))
    writer.release()
    return path


def test_uniform_indices_span_the_clip():
    assert sample_frame_indices(100, 5) == [0, 25, 50, 74, 99]
    assert sample_frame_indices(3, 5) == [0, 1, 2]
    assert sample_frame_indices(100, 5, "first") == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="sampling"):
        sample_frame_indices(10, 5, "random")


def test_square_crop_keeps_the_centre_and_converts_to_rgb():
    frame = np.zeros((40, 100, 3), np.uint8)
    frame[:, 30:70] = (255, 0, 0)  # blue in BGR, a 40x40 centre square
    out = square_crop_resize(frame, 20)
    assert out.shape == (20, 20, 3)
    assert (out[..., 2] > 250).all() and (out[..., :2] < 5).all()  # RGB: blue is the last channel


def test_short_clip_keeps_every_frame(tmp_path):
    path = write_numbered_clip(tmp_path / "short.avi", 5)
    sampled = decode_and_sample(str(path), 8, 32)
    assert sampled.frames.shape == (5, 32, 32, 3)
    assert sampled.frame_indices == [0, 1, 2, 3, 4] and sampled.decoded_frame_count == 5


def test_long_clip_is_sampled_evenly_in_bounded_memory(tmp_path):
    path = write_numbered_clip(tmp_path / "long.avi", 400)
    sampled = decode_and_sample(str(path), 8, 32)
    assert sampled.frames.shape == (8, 32, 32, 3) and sampled.decoded_frame_count == 400
    indices = np.array(sampled.frame_indices)
    assert indices[0] == 0 and indices[-1] >= 400 - 400 // 8  # reaches the end of the clip
    gaps = np.diff(indices)
    assert (gaps > 0).all() and gaps.max() <= 2 * gaps.min()  # evenly spread
    brightness = sampled.frames.mean(axis=(1, 2, 3))
    np.testing.assert_allclose(brightness, (indices * 3) % 256, atol=4)  # the frames are the ones named


def test_first_sampling_stops_after_the_first_frames(tmp_path):
    path = write_numbered_clip(tmp_path / "long.avi", 60)
    sampled = decode_and_sample(str(path), 8, 32, "first")
    assert sampled.frame_indices == list(range(8)) and sampled.decoded_frame_count == 8


@pytest.mark.parametrize("width, height", [(97, 31), (31, 97), (1, 64), (64, 1)])
def test_odd_frame_sizes(tmp_path, width, height):
    path = write_numbered_clip(tmp_path / f"odd_{width}x{height}.avi", 10, width, height)
    sampled = decode_and_sample(str(path), 8, 32)
    assert sampled.frames.shape == (8, 32, 32, 3)
    assert sampled.frame_width > 0 and sampled.frame_height > 0


def test_not_a_video_is_a_decode_error(tmp_path):
    path = tmp_path / "text.avi"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(DecodeError, match="cannot open as a video"):
        decode_and_sample(str(path), 8, 32)


def test_isolated_decoder_matches_in_process_decoding_and_times_out(tmp_path):
    path = str(write_numbered_clip(tmp_path / "clip.avi", 30))
    decoder = IsolatedDecoder(timeout_s=60)
    try:
        isolated = decoder.decode(path, 8, 32, "uniform")
        direct = decode_and_sample(path, 8, 32)
        np.testing.assert_array_equal(isolated.frames, direct.frames)
        assert isolated.frame_indices == direct.frame_indices
        with pytest.raises(DecodeError, match="cannot open"):
            decoder.decode(str(tmp_path / "missing.avi"), 8, 32, "uniform")
        decoder.timeout_s = 0.001
        with pytest.raises(DecodeError, match="timed out"):
            decoder.decode(path, 8, 32, "uniform")
        decoder.timeout_s = 60
        assert decoder.decode(path, 8, 32, "uniform").frame_indices == direct.frame_indices  # a fresh child
    finally:
        decoder.close()
