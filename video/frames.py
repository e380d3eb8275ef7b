"""Sample a fixed number of frames from a video with PyAV, decoding only what the samples need.

Samplings (the `--sampling` flag; every record says which made it):
- `uniform` (the default): `max_seq_length` frames spread evenly from the first to the last frame (all of
  them when the clip is shorter), the same frames, bit for bit, as decoding every frame and picking those
  positions. The reader (video.reader) seeks to the keyframe before a wanted frame where that decodes
  fewer frames than going on, and decodes through where it does not.
- `keyframes`: for each uniform position, the nearest keyframe; where several positions share one keyframe,
  the frames after it (decoded forward from it), so the frames are distinct whenever the clip has enough.
  Only keyframes and those few frames are decoded. An untrusted index (video.index) gives the uniform
  positions, decoded through.
- `first`: the first `max_seq_length` frames, like the Keras reference.
Frames are RGB, centre-cropped to a square and resized to `image_size`; the scaler converts from the
decoder's own pixel format and resizes in one step, so there is no full-size RGB copy.

Container metadata is never trusted for correctness: the frame count is the packet index's (read by
demuxing), checked by every seek, and counted by decoding when decoding through; when decoding through
counts other frames than the index listed, the positions are taken again over the count it found.

Bad files get a reason that says what is wrong. One that FFmpeg cannot open is looked at
(`video.probe.describe_unopenable`): text, audio only, an unknown format, or a video container that is cut
off. The frame count the container states serves one purpose: when the frames found (by the index, or by
decoding through) fall well short of it (more than 2 frames or 2%) *and* FFmpeg reported errors on the way
(decoder exceptions, or messages in `decoder_log`), the file is damaged or truncated and is refused rather
than featurized from the part that survived. Damage FFmpeg passes over in silence cannot be told from a
container that overstates its count, and is accepted with the frames that decode; so is damage in frames
a seeking read never decodes (a read that meets an error falls back to decoding through, and is judged on
all of it).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable

import numpy as np

from video.index import PacketIndex
from video.reader import DecodeError, ReadResult, VideoReader

SAMPLINGS = ("uniform", "keyframes", "first")

# Every file FFmpeg opens is a candidate; these are the ones matched as videos by default.
DEFAULT_VIDEO_EXTENSIONS = (
    ".avi", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ogv",
    ".gif", ".ts", ".mts",
)

__all__ = ["DEFAULT_VIDEO_EXTENSIONS", "DecodeError", "SAMPLINGS", "SampledFrames", "decode_and_sample",
           "keyframe_positions", "sample_frame_indices", "square_rgb", "tolerated_frame_shortfall"]


def tolerated_frame_shortfall(stated_count: int) -> int:
    """Frames a sound file may decode short of its container's count (edit lists, decoder delay)."""
    return max(2, stated_count // 50)


@dataclasses.dataclass
class SampledFrames:
    """Frames sampled from one video.

    `frames` is `[n, image_size, image_size, 3]` uint8 RGB with `n <= max_seq_length` (no padding here);
    `frame_indices` are their positions among the video's frames in presentation order, and
    `decoded_frame_count` how many frames it has (counted by decoding through, or the packet index's count
    when the read seeked). `timestamps_s` are the frames' presentation times in seconds from the first
    frame. `read_method` is how they were read: "seek", "through" or "fallback" (seeking abandoned for
    `fallback_reason`). `display_frames`, when asked for, are the same frames at a display size.
    """

    frames: np.ndarray
    frame_indices: list[int]
    decoded_frame_count: int
    source_fps: float
    frame_height: int
    frame_width: int
    display_frames: np.ndarray | None = None
    timestamps_s: list[float] | None = None
    read_method: str = "through"
    fallback_reason: str = ""


def sample_frame_indices(num_frames: int, max_seq_length: int, sampling: str = "uniform") -> list[int]:
    """Indices of the frames to keep from a clip of `num_frames` frames.

    `uniform` (and `keyframes`, before it moves them): `max_seq_length` indices spread evenly from the
    first to the last frame (all frames when the clip is shorter). `first`: the first `max_seq_length`."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if num_frames <= max_seq_length:
        return list(range(num_frames))
    if sampling == "first":
        return list(range(max_seq_length))
    return [int(i) for i in np.round(np.linspace(0, num_frames - 1, max_seq_length)).astype(int)]


def keyframe_positions(num_frames: int, keyframes: np.ndarray, max_seq_length: int) -> list[int]:
    """`keyframes` sampling: for each uniform position the nearest of the `keyframes` (sorted presentation
    positions; the earlier one on a tie), or, where that was already taken, the frame after the previous
    pick (decoded forward from it); never so late that the remaining picks could not be distinct."""
    uniform = sample_frame_indices(num_frames, max_seq_length)
    if num_frames <= max_seq_length or not len(keyframes):
        return uniform
    picks: list[int] = []
    for j, position in enumerate(uniform):
        after = int(np.searchsorted(keyframes, position))
        nearby = [int(keyframes[k]) for k in (after - 1, after) if 0 <= k < len(keyframes)]
        nearest = min(nearby, key=lambda k: (abs(k - position), k))
        lowest = picks[-1] + 1 if picks else 0
        picks.append(min(max(nearest, lowest), num_frames - max_seq_length + j))
    return picks


_REFORMATTERS = threading.local()


def _reformatter(size: int):
    """This thread's scaler for output `size`: PyAV's `VideoFrame.reformat` builds a new one on every call,
    which costs 25 times the scaling itself; a kept one is rebuilt only when the source size or format
    changes."""
    from av.video.reformatter import VideoReformatter

    kept = getattr(_REFORMATTERS, "by_size", None)
    if kept is None:
        kept = _REFORMATTERS.by_size = {}
    return kept.setdefault(size, VideoReformatter())


def square_rgb(frame, size: int) -> np.ndarray:
    """A decoded PyAV frame of any size and pixel format -> RGB `[size, size, 3]` uint8: scaled (area
    averaging when shrinking) so that its shorter side is `size`, straight from the decoder's format, then
    centre-cropped to a square."""
    width, height = frame.width, frame.height
    side = min(width, height)
    scaled_w, scaled_h = max(size, round(width * size / side)), max(size, round(height * size / side))
    interpolation = "AREA" if side > size else "BILINEAR"
    rgb = _reformatter(size).reformat(frame, width=scaled_w, height=scaled_h, format="rgb24",
                                      interpolation=interpolation).to_ndarray()
    top, left = (scaled_h - size) // 2, (scaled_w - size) // 2
    return np.ascontiguousarray(rgb[top : top + size, left : left + size])


def _positions(reader: VideoReader, max_seq_length: int, sampling: str) -> list[int]:
    index: PacketIndex = reader.index
    if sampling == "first":
        return list(range(max_seq_length))
    if sampling == "keyframes" and index.trusted:
        return keyframe_positions(index.frame_count, index.positions_of_keyframes, max_seq_length)
    return sample_frame_indices(index.frame_count, max_seq_length)


def _read(reader: VideoReader, max_seq_length: int, sampling: str, convert) -> tuple[ReadResult, list[int], int]:
    """(what was read, the positions taken, the video's frame count)."""
    positions = _positions(reader, max_seq_length, sampling)
    if sampling == "first":
        result = reader.read(positions, convert)
        return result, sorted(result.frames), result.frame_count or reader.index.frame_count
    result = reader.read(positions, convert, to_end=True)
    count = result.frame_count if result.frame_count is not None else reader.index.frame_count
    return result, positions, count


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
    module docstring; `decoder_log` is a function returning what FFmpeg printed to stderr while this file
    was decoded) or decoding runs past `timeout_s` seconds. With `display_size`, the result also holds the
    same frames at that size in `display_frames`, for pictures.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    deadline = time.monotonic() + timeout_s if timeout_s else None

    def convert(frame):
        return square_rgb(frame, image_size), square_rgb(frame, display_size) if display_size else None

    with VideoReader(path, deadline, timeout_s, decoder_log) as reader:
        result, positions, count = _read(reader, max_seq_length, sampling, convert)
        messages = sorted(set(result.errors + reader.log_errors()))
        stated = reader.index.stated_count
        # Decoding threads print in no fixed order; the same file must give the same reason on every run.
        first_message = messages[0] if messages else ""
        if messages and stated - count > tolerated_frame_shortfall(stated) and sampling != "first":
            raise DecodeError(f"damaged or truncated video: decoding failed after {count} of the {stated} "
                              f"frames the container lists (FFmpeg: {first_message})")
        if result.frame_count is not None and count != reader.index.frame_count and count and sampling != "first":
            # Decoding through found another number of frames than the index lists: take the positions of
            # the frames it found (a second pass, as rare as such files).
            positions = sample_frame_indices(count, max_seq_length)
            result = reader.read_through(positions, convert, to_end=True, method=result.method)
        taken = [p for p in positions if p in result.frames]
        if not taken:
            detail = f" (FFmpeg: {first_message})" if messages else ""
            if count == 0:
                raise DecodeError(f"no decodable frames: the video stream is empty or unreadable{detail}")
            raise DecodeError(f"none of {count} frames could be decoded{detail}")
        pts = [result.frames[p][1] for p in taken]
        return SampledFrames(
            frames=np.stack([result.frames[p][0][0] for p in taken]),
            frame_indices=taken,
            decoded_frame_count=count,
            source_fps=reader.fps,
            frame_height=reader.height,
            frame_width=reader.width,
            display_frames=np.stack([result.frames[p][0][1] for p in taken]) if display_size else None,
            timestamps_s=reader.times_s(pts, taken),
            read_method=result.method,
            fallback_reason=result.reason,
        )
