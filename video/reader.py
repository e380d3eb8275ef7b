"""Read chosen frames of a video with PyAV: seek where that is cheaper than decoding through, never trusting
the container blindly.

`VideoReader.read(positions, convert)` returns the frames at the given presentation positions (0-based,
among the frames decoding every frame would give). With a trusted packet index (video.index) it plans,
frame by frame, whether to seek to the keyframe before the next wanted frame or to decode forward from
where it is, whichever decodes fewer frames (a seek also costs `SEEK_COST` frames: the decoder is flushed
and its threads refilled). Decoding forward from a keyframe gives the same pixels as decoding from the
start, so the frames are those of decoding through, bit for bit.

Every frame taken after a seek is checked against the index by its timestamp. When a seek lands past the
wanted frame, a frame has no timestamp, the stream ends early, or the decoder reports an error (an
exception, or an FFmpeg message in `decoder_log`), seeking is abandoned and the file is decoded through
from the start: `ReadResult.method` is then "fallback" with the `reason`. An untrusted index decodes
through at once ("through"), as does a plan that would decode as many frames as decoding through.

Decoding through counts frames as they come out and takes the wanted positions by count; only those are
converted, so memory holds the wanted frames, never the clip.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import Any, Callable

import av
from video.index import IndexTimeout, PacketIndex, read_index
from video.probe import describe_unopenable, ffmpeg_messages

PROGRESS_FRAMES = 256  # frames decoded between two calls of a reader's `on_progress` (at most)
SEEK_COST = 4  # frames' worth of decoding that one seek costs (flush, thread refill, the keyframe itself)
# A stream whose packets come to no more than this is kept in memory by the index pass, so that decoding it
# through reads the file once, as decoding every frame without an index does (short clips, where opening
# and demuxing the file again would cost a third of decoding it). Longer ones are read again.
KEEP_PACKET_BYTES = 4 << 20
SMALL_FRAME_PIXELS = 640 * 480
DECODER_THREADS = min(len(os.sched_getaffinity(0)), 16) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class DecodeError(Exception):
    """A video that cannot be used; the message is the reason written to failures.csv."""


class _SeekFailed(Exception):
    """Seeking cannot be trusted for this file; the message says why."""


@dataclasses.dataclass
class ReadResult:
    """What `read` took: `frames[p]` is `(convert(frame), pts)` for each wanted position `p` that exists."""

    frames: dict[int, tuple[Any, int | None]]
    method: str  # "seek", "through" or "fallback"
    decoded: int  # frames the decoder gave out
    frame_count: int | None  # frames decoding through counted to the end; None when it did not read to the end
    reason: str = ""  # why it fell back, for "fallback"
    errors: list[str] = dataclasses.field(default_factory=list)  # decoder errors seen while decoding through


def _open(path: str):
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError):
        raise DecodeError(f"cannot open as a video: {describe_unopenable(path)}") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        reason = describe_unopenable(path)
        if not reason.startswith("no video stream"):
            reason = f"no video stream ({' and '.join(kinds)} streams only)" if kinds else "no streams at all"
        raise DecodeError(f"cannot open as a video: {reason}")
    stream = container.streams.video[0]
    stream.codec_context.thread_type = "AUTO"  # FFmpeg's frame threads, or slice threads where it has none
    return container, stream


def set_decoder_threads(codec, seeking: bool) -> None:
    """Decoder threads for what comes, set before the codec opens (it cannot change after): one for small
    frames, where starting threads costs more than they give (4.0 ms against 5.1 ms a 40-frame 320x240 clip
    with two); one per core to decode through; one more to seek, which drains the threads at every wanted
    frame and refills them after (measured on 60 s 720p: 0.58-0.65 s with three against 0.64-0.71 with two)."""
    if codec.is_open:
        return
    if codec.width * codec.height < SMALL_FRAME_PIXELS:
        codec.thread_count = 1
    else:
        codec.thread_count = DECODER_THREADS + 1 if seeking else DECODER_THREADS


class VideoReader:
    """One open video file: its first video stream, its packet index, and `read`. Use as a context manager.

    Raises DecodeError when the file cannot be opened or indexed, or runs past `deadline`
    (time.monotonic()). `decoder_log`, when given, returns what FFmpeg has printed so far for this file."""

    def __init__(self, path: str, deadline: float | None = None, timeout_s: float | None = None,
                 decoder_log: Callable[[], str] | None = None, on_progress: Callable[[int], None] | None = None):
        self.path = path
        self._deadline, self._timeout_s = deadline, timeout_s
        self._decoder_log = decoder_log
        self._on_progress, self._unreported = on_progress, 0
        self._cursor: _Cursor | None = None  # where a resumable read left the decoder
        self._container, self._stream = _open(path)
        self.fps = float(self._stream.average_rate or self._stream.guessed_rate or 0.0)
        self.width, self.height = self._stream.codec_context.width, self._stream.codec_context.height
        try:
            self.index, self._packets = read_index(self._container, self._stream, deadline, KEEP_PACKET_BYTES)
        except IndexTimeout as exc:
            self.close()
            raise DecodeError(f"decoding timed out after {timeout_s:g}s (reading the packet index: {exc})") from None
        except av.error.FFmpegError as exc:
            self.close()
            raise DecodeError(f"cannot read the video stream: {_first_line(exc)}") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def log_errors(self) -> list[str]:
        """FFmpeg's messages for this file so far (from `decoder_log`; none without one)."""
        return ffmpeg_messages(self._decoder_log()) if self._decoder_log is not None else []

    def times_s(self, pts: list[int | None], positions: list[int]) -> list[float]:
        """Seconds from the stream's first frame for the frames at `positions` with timestamps `pts`; where
        a frame has no timestamp (or the index none to start from), its position over the stream's rate."""
        if self.index.trusted and self.index.frame_count:
            start = int(self.index.pts[0])
        else:
            start = pts[0] if positions and positions[0] == 0 else None
        base = float(self._stream.time_base or 0)
        return [float((p - start) * base) if p is not None and start is not None and base
                else (position / self.fps if self.fps else float("nan")) for p, position in zip(pts, positions)]

    def _check_deadline(self, decoded: int) -> None:
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise DecodeError(f"decoding timed out after {self._timeout_s:g}s ({decoded} frames decoded)")

    def _count_decoded(self, frames: int = 1) -> None:
        """Tell `on_progress` about decoded frames, every PROGRESS_FRAMES of them (see `report_progress`)."""
        self._unreported += frames
        if self._unreported >= PROGRESS_FRAMES:
            self.report_progress()

    def report_progress(self) -> None:
        """Call `on_progress` with the frames decoded since its last call, if any."""
        if self._on_progress is not None and self._unreported:
            self._on_progress(self._unreported)
        self._unreported = 0

    def read(self, positions: list[int], convert: Callable[[av.VideoFrame], Any], to_end: bool = False,
             resume: bool = False) -> ReadResult:
        """The frames at `positions` (sorted, distinct). `to_end` decodes through to the end of the stream
        (to count its frames) when it decodes through at all. `resume`: the decoder is left where this read
        ends, and a read of later positions goes on from there where that decodes fewer frames than seeking
        (reads of consecutive stretches of a file with few keyframes then decode it once)."""
        seekable = self.index.trusted and positions and positions[-1] < self.index.frame_count
        cursor = self._cursor if resume else None
        plan = plan_reads(self.index, positions, cursor.position if cursor else -1) if seekable else None
        if plan is None or (not resume and sum(cost for _, _, cost in plan) >= positions[-1] + 1):
            return self.read_through(positions, convert, to_end, "through")
        try:
            return self._read_seeking(plan, convert, resume)
        except _SeekFailed as exc:
            result = self.read_through(positions, convert, to_end, "fallback")
            result.reason = str(exc)
            return result

    def _read_seeking(self, plan: list[tuple[int, bool, int]], convert, resume: bool = False) -> ReadResult:
        container, stream, codec = self._container, self._stream, self._stream.codec_context
        set_decoder_threads(codec, seeking=True)
        taken: dict[int, tuple[Any, int | None]] = {}
        cursor, self._cursor = self._cursor if resume else None, None
        if cursor is not None:
            pending, packets, drained = cursor.pending, cursor.packets, cursor.drained
        else:
            pending, packets, drained = collections.deque(), None, False
        decoded = 0
        errors_before = len(self.log_errors())
        wanted = {int(self.index.pts[position]) for position, _, _ in plan}
        final_pts = int(self.index.pts[plan[-1][0]])
        for step, (position, seek, _) in enumerate(plan):
            target = int(self.index.pts[position])
            if seek or packets is None:  # the index was read to the end: the first step seeks in any case
                key_pts = self.index.keyframe_before(position)[0] if seek else int(self.index.keyframe_pts[0])
                container.seek(key_pts, stream=stream, backward=True, any_frame=False)
                codec.flush_buffers()
                pending.clear()
                packets, drained = container.demux(stream), False
            # Drain the decoder once the wanted frame's packet is in when the next step seeks anyway: the
            # frames the decoder holds back for reordering come out without decoding more packets. A
            # resumable read does not drain after its last frame: the next read may go on decoding.
            last = step + 1 == len(plan)
            drain = plan[step + 1][1] if not last else not resume
            while True:
                frame = pending.popleft() if pending else None
                if frame is not None:
                    decoded += 1
                    self._count_decoded()
                    if frame.pts is None:
                        raise _SeekFailed("a decoded frame has no timestamp")
                    if frame.pts == target:
                        taken[position] = (convert(frame), frame.pts)
                        break
                    if frame.pts > target:
                        raise _SeekFailed(f"the frame at pts {target} was not where the index put it")
                    continue
                if drained:
                    raise _SeekFailed(f"the stream ended before the frame at pts {target}")
                self._check_deadline(decoded)
                packet = next(packets, None)
                try:
                    if packet is None or not packet.size:
                        pending.extend(codec.decode(None))
                        drained = True
                        continue
                    # Frames no other frame refers to are needed only when wanted: the decoder skips the
                    # others on the way (their pixels cannot change those of the frames wanted). Past the last
                    # wanted frame of a resumable read (in presentation order), the next read may want any of them.
                    later = resume and packet.pts is not None and packet.pts > final_pts
                    codec.skip_frame = "DEFAULT" if packet.pts in wanted or later else "NONREF"
                    pending.extend(codec.decode(packet))
                    if drain and packet.pts == target:
                        pending.extend(codec.decode(None))
                        drained = True
                except av.error.FFmpegError as exc:
                    raise _SeekFailed(f"decoder error while seeking: {_first_line(exc)}") from None
            if len(self.log_errors()) > errors_before:
                raise _SeekFailed("FFmpeg reported errors while seeking")
        codec.skip_frame = "DEFAULT"
        if resume and not drained:
            self._cursor = _Cursor(plan[-1][0], packets, pending, drained)
        self.report_progress()
        return ReadResult(taken, "seek", decoded, None)

    def read_through(self, positions: list[int], convert, to_end: bool, method: str = "through") -> ReadResult:
        """Decode from the start, counting frames; take those at `positions`."""
        self._cursor = None
        if self._packets is not None:  # kept by the index pass
            codec = self._stream.codec_context
            codec.flush_buffers()
            codec.skip_frame = "DEFAULT"
            packets = [*self._packets, None]
        else:
            self.close()
            self._container, self._stream = _open(self.path)
            codec = self._stream.codec_context
            packets = self._container.demux(self._stream)
        set_decoder_threads(codec, seeking=False)
        wanted = set(positions)
        last = positions[-1] if positions else -1
        taken: dict[int, tuple[Any, int | None]] = {}
        errors: list[str] = []
        count = 0
        for packet in packets:
            self._check_deadline(count)
            try:
                frames = codec.decode(packet if packet is not None and packet.size else None)
            except av.error.FFmpegError as exc:  # a damaged packet: decoding goes on from the next one
                errors.append(_first_line(exc))
                continue
            for frame in frames:
                if count in wanted:
                    taken[count] = (convert(frame), frame.pts)
                count += 1
                self._count_decoded()
            if not to_end and count > last:
                self.report_progress()
                return ReadResult(taken, method, count, None, errors=errors)
        self.report_progress()
        return ReadResult(taken, method, count, count, errors=errors)


@dataclasses.dataclass
class _Cursor:
    """Where a resumable read left the decoder: the last position it took, the packets still to decode and the
    frames decoded but not yet looked at."""

    position: int
    packets: Any
    pending: collections.deque
    drained: bool


def plan_reads(index: PacketIndex, positions: list[int], current: int = -1) -> list[tuple[int, bool, int]]:
    """For each wanted position, in order: (position, whether to seek to its keyframe first, frames decoded
    for it including SEEK_COST). A seek is planned where it decodes fewer frames than going on from the
    previous wanted frame (or from `current`, where the decoder stands: -1 is the start)."""
    plan = []
    for position in positions:
        _, key_position = index.keyframe_before(position)
        forward = position - current
        from_key = position - max(key_position, 0) + 1 + SEEK_COST
        seek = from_key < forward
        plan.append((position, seek, from_key if seek else forward))
        current = position
    return plan


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
