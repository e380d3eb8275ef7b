"""Decoding in a child process, so that no single file can hang or crash a job.

OpenCV's FFmpeg backend can block on a damaged stream or take the whole process down on a malformed one.
`IsolatedDecoder` sends each file to one long-lived child process and waits at most `timeout_s`: a child
that runs late is killed and the file is reported as timed out; a child that dies is reported as a crash;
either way a fresh child takes the next file. The child imports only OpenCV and NumPy, so it starts fast.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal

from beam_jobs.frames import DecodeError, SampledFrames, decode_and_sample

_LOG = logging.getLogger(__name__)


def _serve(connection) -> None:
    """Child loop: (path, max_seq_length, image_size, sampling) -> ("ok", SampledFrames) | ("error", reason)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return
        if request is None:
            return
        try:
            connection.send(("ok", decode_and_sample(*request)))
        except DecodeError as exc:
            connection.send(("error", str(exc)))
        except Exception as exc:  # an OpenCV error on a damaged file is the file's fault, not ours
            connection.send(("error", f"decoder error: {type(exc).__name__}: {exc}"))


class IsolatedDecoder:
    """Decode files in a child process with a per-file time limit. Not thread-safe; one per DoFn."""

    def __init__(self, timeout_s: float = 120.0):
        self.timeout_s = timeout_s
        self._context = multiprocessing.get_context("spawn")
        self._process = None
        self._connection = None

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(child,), daemon=True, name="frame-decoder")
        self._process.start()
        child.close()
        self._connection = parent

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
        """Sample frames from the local file `path`; raise DecodeError with the reason on any failure."""
        if self._process is None or not self._process.is_alive():
            self._stop(kill=True)
            self._start()
        try:
            self._connection.send((path, max_seq_length, image_size, sampling))
            if not self._connection.poll(self.timeout_s):
                self._stop(kill=True)
                raise DecodeError(f"decoding timed out after {self.timeout_s:g}s")
            status, value = self._connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            code = self._process.exitcode if self._process is not None else None
            self._stop(kill=True)
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise DecodeError(f"the decoder crashed on this file ({how})") from None
        if status == "error":
            raise DecodeError(value)
        return value

    def close(self) -> None:
        self._stop(kill=False)
