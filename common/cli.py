"""What every command-line entry point shares: one line on stderr and a meaningful exit status for user
mistakes and operational failures (see common.errors for the statuses); only bugs show a traceback.

    if __name__ == "__main__":
        from common.cli import main, quiet_tensorflow
        quiet_tensorflow()
        sys.exit(main(run))

`quiet_tensorflow` is for `__main__` paths only: importing a module of this project never touches stderr.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from typing import Callable, NoReturn, Sequence

from common.errors import (
    EXIT_INTERRUPTED,
    EXIT_IO_ERROR,
    EXIT_LEASE_HELD,
    EXIT_NO_PERMISSION,
    OperationalError,
    UserError,
)
from common.shutdown import freeze_at_exit

# OS errors that say the environment failed, not the code: (exit status, what to call it).
_OS_FAILURES = {
    errno.ENOSPC: (EXIT_IO_ERROR, "disk full"),
    errno.EDQUOT: (EXIT_IO_ERROR, "disk quota exceeded"),
    errno.EROFS: (EXIT_IO_ERROR, "read-only filesystem"),
    errno.EIO: (EXIT_IO_ERROR, "I/O error"),
    errno.EACCES: (EXIT_NO_PERMISSION, "permission denied"),
    errno.EPERM: (EXIT_NO_PERMISSION, "permission denied"),
}
_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\] ([^\n\[]*)")
_BEAM_STEP = re.compile(r"( \[while running '[^\]]*'\])+$")


def quiet_tensorflow() -> None:
    """Import TensorFlow now, without its native start-up notes on stderr.

    TensorFlow's native libraries print "no CUDA drivers", CPU-feature and absl notes on import and on
    device initialisation, whatever TF_CPP_MIN_LOG_LEVEL says. They bury the one line a user mistake should
    print, so the import and the device scan run with stderr pointed at a temporary file, which is replayed
    only if the import fails."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # stderr replaced by something without a descriptor
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), fd)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, fd)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def operational_failure(exc: BaseException) -> tuple[int, str] | None:
    """(exit status, one line) when `exc`, or what caused it, is an operational failure; None for a bug.

    Runners wrap what a step raised (`RuntimeError: OSError: [Errno 28] ... [while running 'X']`), sometimes
    as text only, so both the cause chain and the message are looked at."""
    for link in _chain(exc):
        if isinstance(link, OperationalError):
            return link.exit_code, str(link)
        if isinstance(link, OSError) and link.errno in _OS_FAILURES:
            code, what = _OS_FAILURES[link.errno]
            where = f": {link.filename}" if link.filename else ""
            return code, f"{what}{where} ({link.strerror or link})"
    if match := _ERRNO_IN_TEXT.search(str(exc)):
        number = int(match.group(1))
        if number in _OS_FAILURES:
            code, what = _OS_FAILURES[number]
            return code, f"{what} ({match.group(2).strip()})"
    return None


def _interrupted(exc: BaseException) -> bool:
    """Whether `exc` stands for a KeyboardInterrupt: Beam's DoFn runner re-raises one as a RuntimeError
    ("KeyboardInterrupt [while running 'Step']") raised while handling it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _lost_job_server(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) says the job server went away (gRPC UNAVAILABLE, CANCELLED)."""
    grpc = sys.modules.get("grpc")
    return grpc is not None and any(
        isinstance(link, grpc.RpcError) and callable(getattr(link, "code", None))
        and link.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) for link in _chain(exc))


class _NoLostJobServerTracebacks(logging.Filter):
    """Drops log records whose traceback is of a lost job server: Beam's SDK harness logs one for each request
    it was serving when Prism was stopped (as its exception, or as text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _lost_job_server(record.exc_info[1]):
            return False
        return not (record.name.startswith("apache_beam.runners.worker") and record.levelno >= logging.ERROR
                    and re.search(r"StatusCode\.(UNAVAILABLE|CANCELLED)", record.getMessage()))


class _QuietThreadsAfterCtrlC:
    """While a command runs: Ctrl-C raises KeyboardInterrupt in the main thread, as Python's own handler does,
    and threads that end on it, or on losing the job server, do so without a traceback, in the log too.

    On a portable runner (Prism, which `--runner DirectRunner` runs on wherever Beam finds it) Beam's own
    SIGINT handler stops the job server before it calls this one, and Beam's threads still streaming from it
    (the job's state, a LOOPBACK job's SDK harness) die with gRPC errors that say nothing the one line does
    not; a job server that dies otherwise fails the job in the main thread, which reports it. Installed only
    where Python's handler is, in the main thread; both are put back afterwards."""

    def __enter__(self):
        self._interrupted = threading.Event()
        self._installed = (threading.current_thread() is threading.main_thread()
                           and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if self._installed:
            self._hook = threading.excepthook
            signal.signal(signal.SIGINT, self._on_interrupt)
            threading.excepthook = self._thread_died
        self._filter, self._handlers = _NoLostJobServerTracebacks(), list(logging.getLogger().handlers)
        for handler in self._handlers:
            handler.addFilter(self._filter)
        return self

    def _on_interrupt(self, signum, frame):
        self._interrupted.set()
        raise KeyboardInterrupt

    def _thread_died(self, args) -> None:
        if self._interrupted.is_set() or _lost_job_server(args.exc_value):
            logging.getLogger(__name__).debug("thread %s ended: %s", getattr(args.thread, "name", "?"),
                                              type(args.exc_value).__name__)
            return
        self._hook(args)

    def __exit__(self, *exc) -> None:
        for handler in self._handlers:
            handler.removeFilter(self._filter)
        if self._installed:
            if signal.getsignal(signal.SIGINT) == self._on_interrupt:
                signal.signal(signal.SIGINT, signal.default_int_handler)
            threading.excepthook = self._hook


# Child process starts and `end_children` take turns: a starter (video.isolated) holds this lock while it starts a
# child and first checks `ended_since` with the count it took from `children_ended()` when it was made.
CHILD_STARTS = threading.Lock()
_children_ended = 0


def children_ended() -> int:
    """How many times `end_children` has run in this process (a starter keeps the count from when it was made)."""
    return _children_ended


def ended_since(count: int) -> bool:
    """Whether `end_children` ran since `children_ended()` was `count`: the starter belongs to an interrupted
    command, and must start no child. On Prism the job's bundle goes on in Beam's SDK harness thread after
    Ctrl-C and restarted a decoder that had just been killed; the command's `os._exit` (`exit_with`) then left
    that child reading the start-up data of a parent that was gone (multiprocessing's EOFError, printed after
    the command's last line). A later command in the same process makes new starters, which start children."""
    return count != _children_ended


def end_children(grace: float = 2.0) -> None:
    """After Ctrl-C: end the child processes this process started with multiprocessing (the frame decoders, some
    perhaps still being started), so that none outlives the command or, reading the start-up data of a parent
    that is gone, prints multiprocessing's EOFError after the command's last line. A start under way is waited
    for (`CHILD_STARTS`), and the starters that exist now start no more (`ended_since`). The children get
    SIGTERM, which the decoders do not handle, or SIGKILL (`_end`): a child inherits an ignored SIGTERM from a
    command started with it ignored, and multiprocessing's exit handler would then wait for it. Found in /proc
    by the argument multiprocessing spawns them with (which leaves its resource tracker, that cleans up after
    them, alone), where a child still being started is not yet in `multiprocessing.active_children()`, and in
    that list."""
    import multiprocessing

    global _children_ended
    with CHILD_STARTS:
        _children_ended += 1
    children = {p.pid for p in multiprocessing.active_children() if p.pid} | _multiprocessing_children()
    _end(children, signal.SIGTERM, grace)


def _multiprocessing_children() -> set[int]:
    return _children(lambda argv: "--multiprocessing-fork" in argv)


def _job_servers() -> set[int]:
    """This process's children that are Beam job servers: Prism (`--job_port`), the Java ones (`--job-port`)."""
    return _children(lambda argv: "--job_port" in argv or "--job-port" in argv)


def _children(wanted: Callable[[list[str]], bool]) -> set[int]:
    """This process's children (from /proc; none where there is no /proc) whose argument list is `wanted`."""
    me, children = os.getpid(), set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in filter(str.isdigit, entries):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                parent = int(f.read().rsplit(b")", 1)[1].split()[1])
            if parent != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if wanted([a.decode("utf-8", "replace") for a in argv]):
            children.add(int(entry))
    return children


def end_job_servers(grace: float = 1.0, wait: float = 10.0) -> None:
    """As a command ends: stop the job servers Beam started for it (Prism) and wait for them to exit. Beam's own
    exit handler stops them too, but sends SIGINT and then sleeps a whole second before it looks again: a
    second added to every command on Prism, which exits within milliseconds of the signal. A server that has
    exited is found so by that handler's first look, and left there. SIGINT, or SIGKILL (`_end`): a command
    started in the background of a shell script passes an ignored SIGINT on to the servers it starts, which
    then waited out the handler's five rounds."""
    _end(_job_servers(), signal.SIGINT, grace, wait)


def _end(pids: set[int], signum: int, grace: float, wait: float = 0.0) -> None:
    """Send `signum` to `pids`, SIGKILL at once to those that ignore it and to those still running after `grace`
    seconds; then wait up to `wait` seconds for them to exit."""
    for pid in pids:
        _signal(pid, signal.SIGKILL if _ignores(pid, signum) else signum)
    for pid in _still_running(pids, grace):
        _signal(pid, signal.SIGKILL)
    _still_running(pids, wait)


def _still_running(pids: set[int], seconds: float) -> list[int]:
    """Those of `pids` still running once they all ended or `seconds` went by."""
    deadline = time.monotonic() + seconds
    while (running := [pid for pid in pids if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return running


def _ignores(pid: int, signum: int) -> bool:
    """Whether process `pid` ignores `signum` (its SigIgn mask in /proc; False where that cannot be read)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            mask = next(line for line in f if line.startswith(b"SigIgn:")).split()[1]
        return bool(int(mask, 16) >> (signum - 1) & 1)
    except (OSError, StopIteration, IndexError, ValueError):
        return False


def _running(pid: int) -> bool:
    """Whether `pid` still runs: not ended, and not a zombie waiting for its parent to collect it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)  # no /proc (macOS): a zombie still answers here, and ends up SIGKILLed harmlessly
        except ProcessLookupError:
            return False
        return True


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _report_interrupt() -> int:
    end_children()
    # The one line is the last: on Prism the job's bundle goes on in Beam's SDK harness thread until the process
    # ends, and its log lines came after the line (an INFO line of a harness still starting, 1 fresh-clone run).
    # Logging stays off in this process, which is ending (`exit_with`).
    logging.disable(logging.CRITICAL)
    print("interrupted: nothing was published", file=sys.stderr)
    return EXIT_INTERRUPTED


def exit_with(code: int) -> NoReturn:
    """End a command's process with `code` (its `__main__` block's `sys.exit`). After Ctrl-C (130) the process
    ends at once, its output flushed, without the interpreter's shutdown: on Prism the job's bundle may still
    run in a thread of this process (Beam's SDK harness), and shutting the interpreter down under it aborted
    (`terminate called without an active exception`, status -6 instead of 130). What that shutdown would do
    is done by then: the run's staging removed, its lease released, child processes and job servers ended."""
    if code != EXIT_INTERRUPTED:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main(run: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None,
         user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run `run(argv)` as a command: INFO logging; one stderr line and exit 2 on a UserError (or one of
    `user_errors`, such as the record contract's RecordError), the failure's own status on an operational
    failure, 130 on Ctrl-C (after which this process logs nothing more: it is ending). Anything else is a bug and
    raises with its traceback."""
    freeze_at_exit()  # the command's process exits in milliseconds once its last line is out (common.shutdown)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Beam's type-hint conversion notes are noise at INFO.
    logging.getLogger("apache_beam.typehints").setLevel(logging.WARNING)
    # A failing step's traceback is logged by Beam before the error reaches here, where it is printed again
    # if it is a bug; an operational failure (disk full) must end as one line, not a logged traceback.
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    # Quiet until the command's end, not only while `run` runs: after Ctrl-C, Beam's threads streaming from Prism
    # die as it goes, which may be while the interrupt is reported and the children and job servers are ended.
    with _QuietThreadsAfterCtrlC():
        try:
            return _run_command(run, argv, user_errors)
        finally:
            end_job_servers()


def _run_command(run, argv, user_errors) -> int:
    try:
        run(argv)
    except (UserError, *user_errors) as exc:  # raised in a Beam step too, which adds the step's name
        print(f"error: {_BEAM_STEP.sub('', str(exc))}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        return _report_interrupt()
    except Exception as exc:
        if _interrupted(exc):  # Ctrl-C inside a Beam step, which re-raises it as another error
            return _report_interrupt()
        failure = operational_failure(exc)
        if failure is None:
            raise
        code, line = failure
        print(f"{'skipped' if code == EXIT_LEASE_HELD else 'error'}: {line}", file=sys.stderr)
        return code
    return 0
