"""The Prism job server the jobs run on, started without gRPC's one-second reconnect backoff.

Beam starts Prism as the pipeline runs and connects to it at once (`apache_beam.utils.subprocess_server.
SubprocessServer.start`): the connection is refused in the ~20 ms before Prism listens, and gRPC then waits out
its 1 s reconnect backoff before it tries again (the channel and its options are Beam's; no setting changes the
backoff). Every command on Prism spent ~1 s there while nothing else ran.

Where a pipeline will run on Beam's process-wide Prism server (`PrismRunner.shared_handle`: what `--runner
PrismRunner` and `--runner DirectRunner` use unless the `disable_prism_server_singleton` experiment is set),
`prism_server_for` puts Beam's own Prism job server in that handle, with one change: its server process is
started and then waited for until it accepts connections, before Beam's channel first connects. Beam's run takes
that server from the handle and starts it as its own (its exit and Ctrl-C handlers included); a machine without
Prism (DirectRunner offline) fails its start as before, and DirectRunner falls back to its in-process runner.
Its Ctrl-C handler signals Prism rather than closing a gRPC channel from inside a signal handler, which could
hang the command for good (`stop_on_exit_class`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import socket
import time
from typing import Iterator

_LOG = logging.getLogger(__name__)
SINGLETON_OFF = "disable_prism_server_singleton"
LISTEN_WAIT_S = 30.0  # after this, Beam's own wait (and its failure) takes over
_PROBE_EVERY_S = 0.002


def runs_on_shared_prism(options) -> bool:
    """Whether a pipeline with `options` runs (or, for DirectRunner, first tries to run) on Beam's process-wide
    Prism server: the runner is PrismRunner or DirectRunner (the default), no --job_endpoint is given, and the
    singleton is not turned off."""
    from apache_beam.options.pipeline_options import DebugOptions, PortableOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if not isinstance(runner, str):
        return False
    name = runner.rsplit(".", 1)[-1].lower()
    if not name.endswith("runner"):
        name += "runner"
    return (name in ("prismrunner", "directrunner") and not options.view_as(PortableOptions).job_endpoint
            and not options.view_as(DebugOptions).lookup_experiment(SINGLETON_OFF))


def listening(port: int, process, wait_s: float = LISTEN_WAIT_S) -> bool:
    """Whether something accepts connections on localhost:`port` within `wait_s`; False at once if `process` (the
    server's, where known) has exited."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            socket.create_connection(("localhost", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(_PROBE_EVERY_S)
    return False


@functools.cache
def server_class():
    """`PrismServer`: Beam's Prism job server, its process waited for until it listens (made on first use, so that
    importing this module does not import Beam's portable runner)."""
    from apache_beam.portability.api import beam_job_api_pb2_grpc
    from apache_beam.runners.portability.prism_runner import PrismJobServer
    from apache_beam.utils.subprocess_server import SubprocessServer

    class ListeningFirst(SubprocessServer):
        """Beam's subprocess server, whose process is waited for until it listens, before Beam connects."""

        process = None

        def start_process(self):
            started = time.monotonic()
            process, endpoint = super().start_process()
            self.process = process
            if listening(int(endpoint.rsplit(":", 1)[1]), process):
                _LOG.info("Prism at %s accepts connections, %.0f ms after its start", endpoint,
                          1000 * (time.monotonic() - started))
            return process, endpoint

    class PrismServer(PrismJobServer):
        """Beam's Prism job server, started through `ListeningFirst` (what `SubprocessJobServer.start` does,
        with that server class; the logger keeps Beam's name)."""

        Subprocess = ListeningFirst

        def start(self):
            if self._server is None:
                import tempfile

                self._local_temp_root = tempfile.mkdtemp(prefix="beam-temp")
                command, endpoint = self.subprocess_cmd_and_endpoint()
                logger = logging.getLogger(PrismJobServer.__name__)
                if self._log_filter is not None:
                    logger.addFilter(self._log_filter)
                    logger.setLevel(logging.INFO)
                self._server = self.Subprocess(beam_job_api_pb2_grpc.JobServiceStub, command,
                                               port=int(endpoint.rsplit(":", 1)[1]), logger=logger)
            return self._server.start()

        def interrupt(self) -> None:
            """Send Prism SIGINT (it exits within milliseconds), from a signal handler: nothing here waits or
            takes a lock."""
            process = self._server.process if self._server is not None else None
            if process is not None:
                process.send_signal(signal.SIGINT)  # nothing if it has ended; its poll does not wait for a lock

    return PrismServer


@functools.cache
def stop_on_exit_class():
    """`StopOnExit`: Beam's `StopOnExitJobServer` (stops the server as the process exits, and on Ctrl-C), whose
    Ctrl-C handler signals Prism instead of stopping the server. Beam's handler closes the job service's gRPC
    channel, and a signal handler runs in the main thread wherever that thread is: when the signal came as it
    held the lock of the job's state stream (between taking it and waiting on it, in gRPC's wait), closing
    the channel waited for gRPC's thread, which waited for that lock, and the Ctrl-C'd command hung for good
    (1 interrupt in ~20 on Prism). Prism ends on the signal as on Beam's stop, before the interrupt is raised;
    the channel is closed by the command's end (`common.cli.end_job_servers`) or Beam's exit handler."""
    from apache_beam.runners.portability.job_server import StopOnExitJobServer

    class StopOnExit(StopOnExitJobServer):
        def _sigint_handler(self, sig, frame):
            self._job_server.interrupt()
            if callable(self._original_sigint_handler):
                self._original_sigint_handler(sig, frame)

    return StopOnExit


@contextlib.contextmanager
def prism_server_for(options) -> Iterator[None]:
    """Run the block (which must hold the pipeline's run) with `PrismServer` as Beam's process-wide Prism server,
    where the pipeline runs on that server (`runs_on_shared_prism`) and none is made yet. The handle keeps only a
    weak reference: the block holds it until the run has taken it."""
    if not runs_on_shared_prism(options):
        yield
        return
    from apache_beam.runners.portability.prism_runner import PrismRunner

    handle = PrismRunner.shared_handle.acquire(lambda: stop_on_exit_class()(server_class()(options)))
    try:
        yield
    finally:
        del handle
