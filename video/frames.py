"""Decode a video with OpenCV and sample a fixed number of frames from it, in bounded memory.

Container metadata (frame count, fps, duration) is often missing or wrong, so sampling never relies on it:
frames are counted as they are decoded. `uniform` sampling keeps every `stride`-th frame, doubling the
stride whenever `2 * max_seq_length` frames are held, then picks `max_seq_length` of them evenly; memory is
bounded by the sampled frames, not the clip length. `first` keeps the first frames only, like the Keras
reference. Frames are RGB, centre-cropped to a square and resized to `image_size`.

Bad files get a reason that says what is wrong. One that FFmpeg cannot open is looked at
(`video.probe.describe_unopenable`): text, audio only, an unknown format, or a video container that is cut
off. The frame count the container states serves one purpose: when decoding stops well short of it (more than 2
frames or 2%) *and* FFmpeg reported errors on the way (`decoder_log`), the file is damaged or truncated and
is refused rather than featurized from the part that survived. Damage FFmpeg passes over in silence (the
stream just ends early) cannot be told from a container that overstates its count, and is accepted with the
frames that decode.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import cv2
import numpy as np

from video.probe import describe_unopenable, ffmpeg_messages

SAMPLINGS = ("uniform", "first")

# Every file OpenCV's FFmpeg backend opens is a candidate; these are the ones matched as videos by default.
DEFAULT_VIDEO_EXTENSIONS = (
    ".avi", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ogv",
    ".gif", ".ts", ".mts",
)


class DecodeError(Exception):
    """A video that cannot be used; the message is the reason written to failures.csv."""


def _tolerated_frame_shortfall(stated_count: int) -> int:
    """Frames a sound file may decode short of its container's count (edit lists, decoder delay)."""
    return max(2, stated_count // 50)


@dataclasses.dataclass
class SampledFrames:
    """Frames sampled from one video.

    `frames` is `[n, image_size, image_size, 3]` uint8 RGB with `n <= max_seq_length` (no padding here);
    `frame_indices` are their positions among the decoded frames. `display_frames`, when asked for, are
    the same frames at a display size.
    """

    frames: np.ndarray
    frame_indices: list[int]
    decoded_frame_count: int
    source_fps: float
    frame_height: int
    frame_width: int
    display_frames: np.ndarray | None = None


def sample_frame_indices(num_frames: int, max_seq_length: int, sampling: str = "uniform") -> list[int]:
    """Indices of the frames to keep from a clip of `num_frames` decoded frames.

    `uniform`: `max_seq_length` indices spread evenly from the first to the last frame (all frames when
    the clip is shorter). `first`: the first `max_seq_length` frames.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if num_frames <= max_seq_length:
        return list(range(num_frames))
    if sampling == "first":
        return list(range(max_seq_length))
    return [int(i) for i in np.round(np.linspace(0, num_frames - 1, max_seq_length)).astype(int)]


def square_crop_resize(frame_bgr: np.ndarray, image_size: int) -> np.ndarray:
    """BGR frame of any size -> RGB `[image_size, image_size, 3]`: centre square crop, then resize."""
    height, width = frame_bgr.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = frame_bgr[top : top + side, left : left + side]
    interpolation = cv2.INTER_AREA if side > image_size else cv2.INTER_LINEAR
    resized = cv2.resize(square, (image_size, image_size), interpolation=interpolation)
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


def _to_rgb_frame(frame: np.ndarray, image_size: int) -> np.ndarray:
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.dtype != np.uint8:  # 16-bit sources
        frame = cv2.convertScaleAbs(frame, alpha=255.0 / max(float(frame.max()), 1.0))
    return square_crop_resize(frame, image_size)


def decode_and_sample(
    path: str,
    max_seq_length: int,
    image_size: int,
    sampling: str = "uniform",
    timeout_s: float | None = None,
    decoder_log: Callable[[], str] | None = None,
    display_size: int | None = None,
) -> SampledFrames:
    """Decode the local video file `path` and sample up to `max_seq_length` frames.

    Raises DecodeError with a readable reason when the file is not a decodable video, is damaged (see the
    module docstring; needs `decoder_log`, a function returning what FFmpeg printed to stderr while this
    file was decoded) or decoding runs past `timeout_s` seconds. With `display_size`, the result also holds
    the same frames at that size in `display_frames`, for pictures.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    deadline = time.monotonic() + timeout_s if timeout_s else None
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise DecodeError(f"cannot open as a video: {describe_unopenable(path)}")
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if not np.isfinite(fps) or fps < 0:
            fps = 0.0
        stated_count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        stated_count = int(stated_count) if np.isfinite(stated_count) and stated_count > 0 else 0
        kept: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        stride, count, height, width = 1, 0, 0, 0
        while True:
            if sampling == "first" and count >= max_seq_length:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise DecodeError(f"decoding timed out after {timeout_s:g}s ({count} frames decoded)")
            if not capture.grab():
                break
            if count % stride == 0:
                ok, frame = capture.retrieve()
                if ok and frame is not None and frame.size:
                    height, width = frame.shape[:2]
                    display = _to_rgb_frame(frame, display_size) if display_size else None
                    kept.append((count, _to_rgb_frame(frame, image_size), display))
                    if sampling == "uniform" and len(kept) >= 2 * max_seq_length:
                        kept = kept[::2]
                        stride *= 2
            count += 1
    finally:
        capture.release()
    read_to_end = sampling == "uniform" or count < max_seq_length
    messages = ffmpeg_messages(decoder_log()) if decoder_log is not None else []
    # Decoding threads print in no fixed order; the same file must give the same reason on every run.
    first_message = min(messages, default="")
    if read_to_end and messages and stated_count - count > _tolerated_frame_shortfall(stated_count):
        raise DecodeError(f"damaged or truncated video: decoding failed after {count} of the {stated_count} "
                          f"frames the container lists (FFmpeg: {first_message})")
    if not kept:
        detail = f" (FFmpeg: {first_message})" if messages else ""
        if count == 0:
            raise DecodeError(f"no decodable frames: the video stream is empty or unreadable{detail}")
        raise DecodeError(f"none of {count} frames could be decoded{detail}")
    positions = sample_frame_indices(len(kept), max_seq_length, sampling)
    chosen = [kept[p] for p in positions]
    return SampledFrames(
        frames=np.stack([frame for _, frame, _ in chosen]),
        frame_indices=[index for index, _, _ in chosen],
        decoded_frame_count=count,
        source_fps=fps,
        frame_height=height,
        frame_width=width,
        display_frames=np.stack([display for _, _, display in chosen]) if display_size else None,
    )
