"""Decoding in a child process, so that no single file can hang or crash a job.

FFmpeg can block on a damaged stream or take the whole process down on a malformed one.
`IsolatedDecoder` sends each file to one long-lived child process and waits at most `timeout_s`: a child
that runs late is killed and the file is reported as timed out; a child that dies is reported as a crash;
either way a fresh child takes the next file. The child imports only PyAV and NumPy, so it starts fast,
and the time limit starts only once it is ready, so a slow start is never charged to a file.

The child's stderr goes to a scratch file, and FFmpeg's own logger (not PyAV's Python one, which would take
the GIL from FFmpeg's decoding threads) prints its warnings and errors there: what FFmpeg prints while a
file is decoded tells a damaged file from one whose container merely states a wrong frame count, and makes
a seeking read fall back to decoding through (see video.frames); it stays out of the job's log.

`decode_segments` asks the same child for the frames of every window along a video (video.segments): the
child sends them a chunk of windows at a time as it decodes, and the whole-video sample last. There the time
limit applies to each message, not to the whole file: the child also reports that it is still decoding every
`HEARTBEAT_S`, so a long video is never timed out for its length, only a decoder that stops making progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
from typing import Iterator

import av.error

from common import cli
from video.frames import DecodeError, SampledFrames, decode_and_sample
from video.segments import WindowFrames, iter_segments

_LOG = logging.getLogger(__name__)

READY = "ready"
INTERRUPTED = "not decoded: the command was interrupted"  # a start refused or cut short after Ctrl-C
START_TIMEOUT_S = 120.0
HEARTBEAT_S = 1.0  # while decoding windows, the child says it is alive at least this often
_LOG_LIMIT = 1 << 16
FILE_FAULTS = (av.error.FFmpegError, MemoryError)  # exceptions in the child that a bad file causes


class DecoderBug(RuntimeError):
    """A programming error in the decoder child (not a bad file): the message holds the child's traceback."""


@dataclasses.dataclass(frozen=True)
class SegmentRequest:
    """Ask the child for every window of `window_s` seconds, every `stride_s` (see video.segments)."""

    path: str
    max_seq_length: int
    image_size: int
    sampling: str
    window_s: float
    stride_s: float


def _stderr_to_scratch_file() -> int:
    """Point this process's stderr (fd 2, where FFmpeg writes) at an unlinked scratch file; return its fd.

    O_APPEND keeps writes at the end after the file is truncated between videos."""
    fd, path = tempfile.mkstemp(prefix="decoder-stderr-")
    os.close(fd)
    log_fd = os.open(path, os.O_RDWR | os.O_APPEND)
    os.unlink(path)
    os.dup2(log_fd, 2)
    return log_fd


def _send_segments(connection, request: SegmentRequest, decoder_log) -> None:
    """("chunk", WindowFrames) for each chunk of windows, ("alive", None) while decoding takes long, and
    ("ok", SampledFrames) last."""
    last_sent = [time.monotonic()]

    def alive(frames: int) -> None:
        if time.monotonic() - last_sent[0] >= HEARTBEAT_S:
            connection.send(("alive", None))
            last_sent[0] = time.monotonic()

    for part in iter_segments(request.path, request.max_seq_length, request.image_size, request.sampling,
                              request.window_s, request.stride_s, decoder_log=decoder_log, on_progress=alive):
        connection.send(("chunk" if isinstance(part, WindowFrames) else "ok", part))
        last_sent[0] = time.monotonic()


def _serve(connection, decoder_threads: int = 0) -> None:
    """Child loop: (path, max_seq_length, image_size, sampling) -> ("ok", SampledFrames) | ("error", reason);
    a SegmentRequest -> its windows' chunks, then ("ok", SampledFrames) (see `_send_segments`), or an error
    after some chunks. An exception that is not the file's fault (a programming error) -> ("bug", traceback).

    Sends READY first, once its imports are done. `decoder_threads` (0: every core) caps FFmpeg's threads."""
    import av.logging

    from video import reader

    if decoder_threads:
        reader.DECODER_THREADS = decoder_threads
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log_fd = _stderr_to_scratch_file()
    av.logging.restore_default_callback()
    av.logging.set_libav_level(av.logging.WARNING)

    def decoder_log() -> str:
        return os.pread(log_fd, _LOG_LIMIT, 0).decode("utf-8", "replace")

    connection.send(READY)
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return
        if request is None:
            return
        os.ftruncate(log_fd, 0)
        try:
            if isinstance(request, SegmentRequest):
                _send_segments(connection, request, decoder_log)
            else:
                connection.send(("ok", decode_and_sample(*request, decoder_log=decoder_log)))
        except DecodeError as exc:
            connection.send(("error", str(exc)))
        except FILE_FAULTS as exc:  # FFmpeg's word on a damaged file (or one too big to decode): the file's fault
            first_line = (str(exc).strip().splitlines() or [""])[0]
            connection.send(("error", f"decoder error: {type(exc).__name__}: {first_line}"))
        except Exception:  # anything else is a bug in video/: the job must stop and show it
            connection.send(("bug", traceback.format_exc()))


@contextlib.contextmanager
def _main_module_hidden(made: int):
    """A spawned child normally re-imports the launching module (`python -m beam_jobs.featurize` and, with
    it, TensorFlow): seconds and hundreds of MB per decoder for nothing, since the child needs PyAV only.
    Hiding `__main__`'s name and path while the child starts keeps it from doing so.

    One start at a time (`common.cli.CHILD_STARTS`): video.ahead starts decoders from several threads at once,
    and two hidings that overlapped restored it under each other (a child then ran the launching module again,
    and `__main__.__spec__` stayed None for the rest of the process). A decoder made (`made`: the count of
    `common.cli.end_children`) before Ctrl-C ended the command's children starts no new one: DecodeError."""
    with cli.CHILD_STARTS:
        if cli.ended_since(made):
            raise DecodeError(INTERRUPTED)
        with _hidden(sys.modules.get("__main__")):
            yield


@contextlib.contextmanager
def _hidden(main):
    saved = {name: main.__dict__[name] for name in ("__spec__", "__file__") if main and name in main.__dict__}
    try:
        if main is not None:
            main.__dict__["__spec__"] = None
            main.__dict__.pop("__file__", None)
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)
            if "__spec__" not in saved:
                main.__dict__.pop("__spec__", None)


class IsolatedDecoder:
    """Decode files in a child process with a per-file time limit. Not thread-safe: one per thread (video.ahead
    gives each of its decoder threads its own); only `kill` may be called from another thread."""

    def __init__(self, timeout_s: float = 120.0, start_timeout_s: float = START_TIMEOUT_S, decoder_threads: int = 0):
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.decoder_threads = decoder_threads
        self._context = multiprocessing.get_context("spawn")
        self._process = None
        self._connection = None
        self._made = cli.children_ended()

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_serve, args=(child, self.decoder_threads), daemon=True, name="frame-decoder")
        try:
            with _main_module_hidden(self._made):
                process.start()
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._process, self._connection = process, parent
        try:
            ready = parent.poll(self.start_timeout_s) and parent.recv() == READY
        except (EOFError, OSError):
            ready = False
        if not ready:  # the machine, not a file, is at fault: stop the job
            self._process.join(timeout=1)
            code = self._process.exitcode
            self._stop(kill=True)
            if cli.ended_since(self._made):  # Ctrl-C ended it as it started
                raise DecodeError(INTERRUPTED)
            if code is None:
                raise RuntimeError(f"the frame decoder process did not start within {self.start_timeout_s:g}s")
            raise RuntimeError(f"the frame decoder process exited while starting (exit code {code})")

    def _stop(self, kill: bool) -> None:
        if self._process is None:
            return
        if kill:
            self._process.kill()
        else:
            try:
                self._connection.send(None)
            except (BrokenPipeError, OSError):
                pass
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._connection.close()
        self._process = self._connection = None

    def decode(self, path: str, max_seq_length: int, image_size: int, sampling: str) -> SampledFrames:
        """Sample frames from the local file `path`; raise DecodeError with the reason when the file is at
        fault, DecoderBug when the decoder is."""
        self._ensure_started()
        status, value = self._exchange((path, max_seq_length, image_size, sampling))
        if status == "error":
            raise DecodeError(value)
        _raise_bug(status, value)
        return value

    def decode_segments(self, path: str, max_seq_length: int, image_size: int, sampling: str, window_s: float,
                        stride_s: float) -> Iterator[WindowFrames | SampledFrames]:
        """Yield the windows of the local file `path` a chunk at a time as the child decodes them (WindowFrames),
        then its whole-video sample (SampledFrames); raise DecodeError with the reason on any failure, which
        may come after some chunks (see video.segments). `timeout_s` bounds the wait for each message.

        A caller that stops iterating early has the child killed: it may still be sending."""
        self._ensure_started()
        finished = False
        try:
            message = self._exchange(SegmentRequest(path, max_seq_length, image_size, sampling, window_s, stride_s))
            while True:
                status, value = message
                if status == "error":
                    finished = True
                    raise DecodeError(value)
                _raise_bug(status, value)
                if status == "chunk":
                    yield value
                elif status == "ok":
                    finished = True
                    yield value
                    return
                message = self._exchange(None)  # after a chunk, or the child's word that it is still decoding
        finally:
            if not finished:
                self._stop(kill=True)

    def _ensure_started(self) -> None:
        if self._process is None or not self._process.is_alive():
            self._stop(kill=True)
            self._start()

    def _exchange(self, request) -> tuple[str, object]:
        """Send `request` (None: nothing, just wait) and return the child's next message, waiting at most
        `timeout_s`; DecodeError when it runs late (it is killed) or has died."""
        try:
            if request is not None:
                self._connection.send(request)
            if not self._answered(self.timeout_s):
                self._stop(kill=True)
                raise DecodeError(f"decoding timed out after {self.timeout_s:g}s (--decode-timeout)")
            return self._connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            code = None
            if self._process is not None:
                self._process.join(timeout=5)
                code = self._process.exitcode
            self._stop(kill=True)
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise DecodeError(f"the decoder crashed on this file ({how})") from None

    def _answered(self, timeout_s: float) -> bool:
        """Whether the child's next message came within `timeout_s` (a test may stand in for the clock)."""
        return self._connection.poll(timeout_s)

    def kill(self) -> None:
        """Kill the child now, from any thread: the file it decodes fails as a crash."""
        process = self._process
        if process is not None:
            process.kill()

    def close(self) -> None:
        self._stop(kill=False)


def _raise_bug(status: str, value) -> None:
    if status == "bug":
        raise DecoderBug(f"the frame decoder failed (a bug, not a bad file); its traceback:\n{value}")
