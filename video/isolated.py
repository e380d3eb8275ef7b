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
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import tempfile

from video.frames import DecodeError, SampledFrames, decode_and_sample

_LOG = logging.getLogger(__name__)

READY = "ready"
START_TIMEOUT_S = 120.0
_LOG_LIMIT = 1 << 16


def _stderr_to_scratch_file() -> int:
    """Point this process's stderr (fd 2, where FFmpeg writes) at an unlinked scratch file; return its fd.

    O_APPEND keeps writes at the end after the file is truncated between videos."""
    fd, path = tempfile.mkstemp(prefix="decoder-stderr-")
    os.close(fd)
    log_fd = os.open(path, os.O_RDWR | os.O_APPEND)
    os.unlink(path)
    os.dup2(log_fd, 2)
    return log_fd


def _serve(connection) -> None:
    """Child loop: (path, max_seq_length, image_size, sampling) -> ("ok", SampledFrames) | ("error", reason).

    Sends READY first, once its imports are done."""
    import av.logging

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
            connection.send(("ok", decode_and_sample(*request, decoder_log=decoder_log)))
        except DecodeError as exc:
            connection.send(("error", str(exc)))
        except Exception as exc:  # a decoder error on a damaged file is the file's fault, not ours
            first_line = (str(exc).strip().splitlines() or [""])[0]
            connection.send(("error", f"decoder error: {type(exc).__name__}: {first_line}"))


@contextlib.contextmanager
def _main_module_hidden():
    """A spawned child normally re-imports the launching module (`python -m beam_jobs.featurize` and, with
    it, TensorFlow): seconds and hundreds of MB per decoder for nothing, since the child needs PyAV only.
    Hiding `__main__`'s name and path while the child starts keeps it from doing so."""
    main = sys.modules.get("__main__")
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
    """Decode files in a child process with a per-file time limit. Not thread-safe; one per DoFn."""

    def __init__(self, timeout_s: float = 120.0, start_timeout_s: float = START_TIMEOUT_S):
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self._context = multiprocessing.get_context("spawn")
        self._process = None
        self._connection = None

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(child,), daemon=True, name="frame-decoder")
        with _main_module_hidden():
            self._process.start()
        child.close()
        self._connection = parent
        try:
            ready = parent.poll(self.start_timeout_s) and parent.recv() == READY
        except (EOFError, OSError):
            ready = False
        if not ready:  # the machine, not a file, is at fault: stop the job
            self._process.join(timeout=1)
            code = self._process.exitcode
            self._stop(kill=True)
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
        """Sample frames from the local file `path`; raise DecodeError with the reason on any failure."""
        if self._process is None or not self._process.is_alive():
            self._stop(kill=True)
            self._start()
        try:
            self._connection.send((path, max_seq_length, image_size, sampling))
            if not self._connection.poll(self.timeout_s):
                self._stop(kill=True)
                raise DecodeError(f"decoding timed out after {self.timeout_s:g}s (--decode-timeout)")
            status, value = self._connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            code = None
            if self._process is not None:
                self._process.join(timeout=5)
                code = self._process.exitcode
            self._stop(kill=True)
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise DecodeError(f"the decoder crashed on this file ({how})") from None
        if status == "error":
            raise DecodeError(value)
        return value

    def close(self) -> None:
        self._stop(kill=False)
