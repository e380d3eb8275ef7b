"""Windows along a video: which frames each window of `window_s` seconds samples, by the stream's presentation
times, and reading every window's frames in one pass over the file, a chunk of windows at a time.

Window `k` covers [k * stride_s, k * stride_s + window_s) of the video's presentation time (seconds from its
first frame, from the container's timestamps, so variable frame rates come out right). Windows start every
`stride_s` until one reaches the end of the video (its last frame's time plus one frame's duration): a video
shorter than one window has one window, and the last window ends with the video. A window samples the frames
whose times fall in it the way `video.frames` samples a whole clip for training: `max_seq_length` of them
spread evenly (`uniform`), at keyframes (`keyframes`), or the first ones (`first`). A window in which no frame
starts (a frame shown for longer than the window) takes the frame on screen at its start.

`iter_segments` reads the union of every window's positions and of the whole-video sample with the reader
of video.reader, in increasing order, in one pass: each sampled frame is decoded and converted once, however
many windows share it, and each frame of the file is decoded at most once, whatever its keyframes: a chunk's
read goes on from where the previous chunk's left the decoder, unless seeking to a keyframe decodes fewer
frames (a file with one keyframe is decoded once from its start, not from its start for every chunk). The
reader tells `on_progress` how many frames it decoded, every `PROGRESS_FRAMES` frames. It yields the windows a chunk at a time
(`WindowFrames`: whole windows, at most `CHUNK_FRAMES` distinct frames), then the whole-video sample
(`SampledFrames`, the frames `decode_and_sample` takes). Memory holds one chunk, the frames later chunks share
with it and the whole-video sample, never all of a video's frames: a 10-hour video in 10 s windows of 20
frames samples 72,000 frames (3.5 GB at 128 px), read 256 at a time.

An index that cannot be trusted (video.index) gives no timestamps to plan by: the file is decoded through
once for every frame's timestamp, then once more for the frames (two passes, as rare as such files). When a
seek fails (the reader falls back to decoding through), the rest of the file is read in one pass from its
start.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Any, Callable, Iterator

import av
import numpy as np

from video.frames import (
    SAMPLINGS,
    SampledFrames,
    tolerated_frame_shortfall,
    keyframe_positions,
    sample_frame_indices,
    square_rgb,
)
from video.reader import PROGRESS_FRAMES, DecodeError, VideoReader, set_decoder_threads

CHUNK_FRAMES = 256  # distinct frames a chunk of windows holds at most (a window more when one alone is more)
_EPSILON_S = 1e-6  # timestamps are pts * time_base in floats: 9.9999999 s is a frame at 10 s


@dataclasses.dataclass(frozen=True)
class Window:
    """Window `index` of a video: [start_s, end_s) of its presentation time, and the presentation positions
    of the frames it samples (sorted, distinct)."""

    index: int
    start_s: float
    end_s: float
    positions: tuple[int, ...]


@dataclasses.dataclass
class WindowFrames:
    """Consecutive windows of one video and the frames they sample, each distinct frame once: `frames`
    `[n, S, S, 3]` uint8 RGB at presentation positions `frame_indices` (sorted), shown at `timestamps_s`.
    A frame that did not decode is missing; `rows(window)` gives the rows of a window's frames that did."""

    windows: list[Window]
    frames: np.ndarray | None
    frame_indices: list[int]
    timestamps_s: list[float]

    def rows(self, window: Window) -> list[int]:
        row_of = {position: row for row, position in enumerate(self.frame_indices)}
        return [row_of[p] for p in window.positions if p in row_of]


def video_end_s(times_s: np.ndarray, fps: float) -> float:
    """Where a video's presentation ends: its last frame's time plus one frame's duration (the median
    interval between its frames; 1 / fps for a single frame)."""
    if len(times_s) > 1:
        interval = float(np.median(np.diff(times_s)))
    else:
        interval = 1.0 / fps if fps > 0 else 0.0
    return float(times_s[-1]) + interval


def window_starts(end_s: float, window_s: float, stride_s: float) -> list[float]:
    """Every `stride_s` from 0 until a window reaches `end_s`: at least one."""
    count = 1 + max(0, math.ceil((end_s - window_s) / stride_s - _EPSILON_S))
    return [k * stride_s for k in range(count)]


def _window_positions(lo: int, hi: int, max_seq_length: int, sampling: str, keyframes: np.ndarray | None) -> list[int]:
    """The sample of frames lo..hi-1 (a window's), taken as video.frames takes a clip's."""
    count = hi - lo
    if sampling == "first":
        picks = range(min(count, max_seq_length))
    elif sampling == "keyframes" and keyframes is not None:
        inside = keyframes[(keyframes >= lo) & (keyframes < hi)] - lo
        picks = keyframe_positions(count, inside, max_seq_length)
    else:
        picks = sample_frame_indices(count, max_seq_length)
    return [lo + int(p) for p in picks]


def plan_windows(times_s, end_s: float, window_s: float, stride_s: float, max_seq_length: int,
                 sampling: str = "uniform", keyframes: np.ndarray | None = None) -> list[Window]:
    """The windows of a video whose frames are shown at `times_s` (sorted, seconds from the first frame) and
    whose presentation ends at `end_s`. `keyframes` are the presentation positions of its keyframes (None
    when the index cannot be trusted: `keyframes` sampling then samples uniformly, as video.frames does)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if window_s <= 0 or stride_s <= 0:
        raise ValueError(f"window and stride must be positive, got {window_s} and {stride_s}")
    times = np.asarray(times_s, np.float64)
    windows = []
    for index, start in enumerate(window_starts(end_s, window_s, stride_s)):
        lo, hi = (int(i) for i in np.searchsorted(times, [start - _EPSILON_S, start + window_s - _EPSILON_S]))
        if hi > lo:
            positions = _window_positions(lo, hi, max_seq_length, sampling, keyframes)
        else:  # no frame starts in it: the one still on screen
            positions = [max(int(np.searchsorted(times, start + _EPSILON_S, side="right")) - 1, 0)]
        windows.append(Window(index, start, min(start + window_s, end_s), tuple(positions)))
    return windows


def video_positions(count: int, max_seq_length: int, sampling: str, keyframes: np.ndarray | None) -> list[int]:
    """The whole-video sample's positions among `count` frames, as video.frames takes them."""
    if sampling == "first":
        return list(range(min(count, max_seq_length)))
    if sampling == "keyframes" and keyframes is not None:
        return keyframe_positions(count, keyframes, max_seq_length)
    return sample_frame_indices(count, max_seq_length)


def chunk_windows(windows: list[Window], chunk_frames: int = CHUNK_FRAMES) -> list[list[Window]]:
    """Consecutive windows, as many a chunk as keep its distinct frames within `chunk_frames` (one at least)."""
    chunks: list[list[Window]] = []
    current: list[Window] = []
    frames: set[int] = set()
    for window in windows:
        grown = frames | set(window.positions)
        if current and len(grown) > chunk_frames:
            chunks.append(current)
            current, grown = [], set(window.positions)
        current.append(window)
        frames = grown
    if current:
        chunks.append(current)
    return chunks


class _ReadThrough:
    """One pass that decodes the file from its start: `read(positions)`, with positions past those of the
    previous call, takes the frames at them as the pass reaches them (converted with `convert`)."""

    def __init__(self, path: str, convert: Callable | None, on_progress: Callable[[int], None] | None = None):
        self._convert, self._on_progress = convert, on_progress
        self._frames = self._decode(path)
        self.position = 0  # the next frame's presentation position
        self._unreported = 0  # frames decoded and not yet told to `on_progress`
        self.errors: list[str] = []
        self.method, self.reason = "through", ""

    def _decode(self, path: str) -> Iterator[av.VideoFrame]:
        container = av.open(path, metadata_errors="ignore")
        try:
            stream = container.streams.video[0]
            stream.codec_context.thread_type = "AUTO"
            set_decoder_threads(stream.codec_context, seeking=False)  # the reader's rule for decoding through
            for packet in container.demux(stream):
                try:
                    frames = stream.codec_context.decode(packet if packet.size else None)
                except av.error.FFmpegError as exc:  # a damaged packet: decoding goes on from the next one
                    self.errors.append((str(exc).strip().splitlines() or [type(exc).__name__])[0])
                    continue
                yield from frames
        finally:
            container.close()

    def _next(self) -> av.VideoFrame | None:
        frame = next(self._frames, None)
        if frame is not None:
            self.position += 1
            self._unreported += 1
            if self._unreported >= PROGRESS_FRAMES:
                self.report_progress()
        return frame

    def report_progress(self) -> None:
        """Call `on_progress` with the frames decoded since its last call, if any."""
        if self._on_progress is not None and self._unreported:
            self._on_progress(self._unreported)
        self._unreported = 0

    def read(self, positions: list[int]) -> dict[int, tuple[Any, int | None]]:
        wanted, taken = set(positions), {}
        while self.position <= positions[-1]:
            position = self.position
            frame = self._next()
            if frame is None:
                break
            if position in wanted:
                taken[position] = (self._convert(frame), frame.pts)
        self.report_progress()
        return taken

    def every_pts(self) -> list[int | None]:
        """The timestamps of every frame from here to the end."""
        found = []
        while (frame := self._next()) is not None:
            found.append(frame.pts)
        self.report_progress()
        return found

    def count_to_end(self) -> int:
        """The frames of the whole stream, decoding the rest of it."""
        while self._next() is not None:
            pass
        self.report_progress()
        return self.position

    def frame_count(self, counted: int) -> int:
        """The stream's frames: `counted` by the pass that read every frame's timestamp."""
        return counted

    def close(self) -> None:
        self._frames.close()


class _ReadSeeking:
    """Reads of increasing positions with `VideoReader.read`, seeking where that decodes fewer frames; after a
    read that had to fall back to decoding through, the rest in one pass from the start (`_ReadThrough`)."""

    def __init__(self, reader: VideoReader, convert: Callable, on_progress: Callable[[int], None] | None = None):
        self._reader, self._convert, self._on_progress = reader, convert, on_progress
        self._through: _ReadThrough | None = None
        self._errors: list[str] = []
        self.method, self.reason = "through", ""

    @property
    def errors(self) -> list[str]:
        return self._errors + (self._through.errors if self._through is not None else [])

    def read(self, positions: list[int]) -> dict[int, tuple[Any, int | None]]:
        if self._through is not None:
            return self._through.read(positions)
        result = self._reader.read(positions, self._convert, resume=True)  # the reader reports progress
        self._errors += result.errors
        if result.method == "fallback":
            self.method, self.reason = "fallback", result.reason
            self._through = _ReadThrough(self._reader.path, self._convert, self._on_progress)
        elif result.method == "seek":
            self.method = "seek"
        return result.frames

    def frame_count(self, listed: int) -> int:
        """The stream's frames: the index's count of `listed`, or, once reads decode through, their count."""
        return self._through.count_to_end() if self._through is not None else listed

    def close(self) -> None:
        if self._through is not None:
            self._through.close()


def iter_segments(path: str, max_seq_length: int, image_size: int, sampling: str, window_s: float, stride_s: float,
                  decoder_log: Callable[[], str] | None = None, chunk_frames: int = CHUNK_FRAMES,
                  on_progress: Callable[[int], None] | None = None) -> Iterator[WindowFrames | SampledFrames]:
    """Decode the local video `path` once for all its windows: yield the windows a chunk at a time
    (`WindowFrames`, frames at `image_size`), then, last, the whole-video sample (`SampledFrames`).

    Raises DecodeError with the reason, as `decode_and_sample` does, when the file is not a decodable video or
    is damaged (judged after the last chunk: a caller must drop the chunks of a video that then fails).
    `on_progress(frames)` is told the frames decoded since its previous call, at least every `PROGRESS_FRAMES`
    of them, for a caller that watches for a decoder that hangs (their sum is every frame decoded)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")

    def convert(frame):
        return square_rgb(frame, image_size)

    with VideoReader(path, decoder_log=decoder_log, on_progress=on_progress) as reader:
        index = reader.index
        if index.trusted:
            pts, keyframes = [int(p) for p in index.pts], index.positions_of_keyframes
            source: _ReadSeeking | _ReadThrough = _ReadSeeking(reader, convert, on_progress)
        else:
            timestamps = _ReadThrough(path, None, on_progress)
            pts, keyframes = timestamps.every_pts(), None
            timestamps.close()
            source = _ReadThrough(path, convert, on_progress)
            source.errors += timestamps.errors  # the same damage shows in both passes; messages are deduplicated
        try:
            yield from _read_windows(reader, source, pts, keyframes, max_seq_length, sampling, window_s, stride_s,
                                     chunk_frames)
        finally:
            source.close()


def _read_windows(reader, source, pts, keyframes, max_seq_length, sampling, window_s, stride_s, chunk_frames):
    count = len(pts)
    if count == 0:
        raise DecodeError("no decodable frames: the video stream is empty or unreadable")
    # Presentation order: decoding through gives the frames in it, so these increase but for broken files.
    times = np.maximum.accumulate(np.asarray(reader.times_s(pts, list(range(count))), np.float64))
    windows = plan_windows(times, video_end_s(times, reader.fps), window_s, stride_s, max_seq_length, sampling,
                           keyframes)
    head = video_positions(count, max_seq_length, sampling, keyframes)
    chunks = chunk_windows(windows, chunk_frames)
    last_use = {p: c for c, chunk in enumerate(chunks) for window in chunk for p in window.positions}
    wanted = sorted(set(last_use) | set(head))
    head_set, head_frames, kept = set(head), {}, {}
    done, reach, windows_with_frames = 0, -1, 0
    for c, chunk in enumerate(chunks):
        # Positions are read in increasing order, each once; those a later chunk needs too are kept.
        reach = max([reach, *(p for window in chunk for p in window.positions)])
        upto = bisect.bisect_right(wanted, reach)
        if upto > done:
            for position, taken in source.read(wanted[done:upto]).items():
                if position in head_set:
                    head_frames[position] = taken
                if position in last_use:
                    kept[position] = taken
            done = upto
        positions = sorted({p for window in chunk for p in window.positions if p in kept})
        windows_with_frames += sum(any(p in kept for p in window.positions) for window in chunk)
        if positions:
            yield WindowFrames(chunk, np.stack([kept[p][0] for p in positions]), positions,
                               [float(times[p]) for p in positions])
        kept = {p: taken for p, taken in kept.items() if last_use[p] > c}
    if done < len(wanted):
        head_frames.update(source.read(wanted[done:]))
    counted = source.frame_count(count)
    _check_decoded(reader, source.errors, counted, sampling)
    taken = [p for p in head if p in head_frames]
    if not taken or not windows_with_frames:
        messages = sorted(set(source.errors + reader.log_errors()))
        detail = f" (FFmpeg: {messages[0]})" if messages else ""
        raise DecodeError(f"none of {counted} frames could be decoded{detail}")
    yield SampledFrames(
        frames=np.stack([head_frames[p][0] for p in taken]),
        frame_indices=taken,
        decoded_frame_count=counted,
        source_fps=reader.fps,
        frame_height=reader.height,
        frame_width=reader.width,
        timestamps_s=[float(times[p]) for p in taken],
        read_method=source.method,
        fallback_reason=source.reason,
    )


def _check_decoded(reader: VideoReader, errors: list[str], count: int, sampling: str) -> None:
    """Refuse a damaged or truncated file, by the rule of video.frames."""
    messages = sorted(set(errors + reader.log_errors()))
    stated = reader.index.stated_count
    if messages and stated - count > tolerated_frame_shortfall(stated) and sampling != "first":
        raise DecodeError(f"damaged or truncated video: decoding failed after {count} of the {stated} frames "
                          f"the container lists (FFmpeg: {messages[0]})")
