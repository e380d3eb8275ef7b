"""beam_jobs.prism_server: which pipelines run on Beam's process-wide Prism server, and the server process that is
waited for until it listens before Beam's channel first connects (gRPC's 1 s reconnect backoff otherwise). The
jobs on the real Prism binary, through this server, are in test_prism.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import types

import pytest
from hosts import free_port

from beam_jobs.prism_server import listening, runs_on_shared_prism, server_class, stop_on_exit_class

# A job server that listens on its port only once the test has opened and closed the FIFO it reads.
_GATED_SERVER = """
import socket, sys
with open(sys.argv[1]) as gate:
    gate.read()
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("localhost", int(sys.argv[2])))
server.listen()
while True:
    server.accept()[0].close()
"""


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("localhost", port), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("args, shared", [
    ([], True),  # DirectRunner, the default, tries Prism first
    (["--runner", "DirectRunner"], True),
    (["--runner", "PrismRunner", "--prism_location", "/somewhere/prism"], True),
    (["--runner", "apache_beam.runners.portability.prism_runner.PrismRunner"], True),
    (["--runner", "prism"], True),
    (["--runner", "PrismRunner", "--experiments", "disable_prism_server_singleton"], False),
    (["--runner", "PrismRunner", "--job_endpoint", "localhost:8099"], False),
    (["--runner", "FnApiRunner"], False),
    (["--runner", "FlinkRunner"], False),
    (["--runner", "PortableRunner", "--job_endpoint", "localhost:8099"], False),
])
def test_which_pipelines_run_on_beams_shared_prism_server(args, shared):
    from apache_beam.options.pipeline_options import PipelineOptions

    assert runs_on_shared_prism(PipelineOptions(args)) is shared


def test_the_server_process_is_waited_for_until_it_listens(tmp_path):
    """Beam connects as soon as `start_process` returns: it must return only once the server accepts
    connections, here held back until the test lets it listen."""
    from apache_beam.portability.api import beam_job_api_pb2_grpc

    gate, port = tmp_path / "gate", free_port()
    os.mkfifo(gate)
    server = server_class().Subprocess(beam_job_api_pb2_grpc.JobServiceStub,
                                       [sys.executable, "-c", _GATED_SERVER, str(gate), str(port)], port=port)
    started = {}

    def start():
        started["process"], _ = server.start_process()
        started["accepting"] = _accepts(port)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    try:
        with open(gate, "w"):  # waits until the server opens its end: it does not listen yet
            pass
        starter.join(60)
        assert started.get("accepting") is True, "start_process returned before the server listened"
    finally:
        if "process" in started:
            started["process"].kill()
            started["process"].wait()
        server.stop()


def test_a_server_that_exits_is_not_waited_for():
    """A server that exits as it starts is Beam's to report ("Service failed to start"), not to wait for."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    found = {}
    waiter = threading.Thread(target=lambda: found.update(listening=listening(free_port(), process, wait_s=600)),
                              daemon=True)
    waiter.start()
    waiter.join(60)
    assert found == {"listening": False}


class _Server:
    """A job server that records what is asked of it."""

    def __init__(self):
        self.asked = []

    def start(self):
        self.asked.append("start")
        return "localhost:1"

    def stop(self):
        self.asked.append("stop")

    def interrupt(self):
        self.asked.append("interrupt")


def test_ctrl_c_signals_prism_and_stops_nothing_inside_the_signal_handler():
    """Beam's Ctrl-C handler stops the job server, closing its gRPC channel, inside the signal handler: when the
    signal came as the main thread held a lock of gRPC's (the job's state stream), the close waited for a thread
    that waited for that lock, and the command hung for good. The jobs' handler signals Prism and raises."""
    import signal

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    server = _Server()
    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        wrapper = stop_on_exit_class()(server)
        wrapper._original_sigint_handler = interrupted
        with pytest.raises(KeyboardInterrupt):
            wrapper._sigint_handler(signal.SIGINT, None)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert server.asked == ["interrupt"]


def test_interrupting_prism_sends_it_sigint():
    """What the handler does to the server's process: SIGINT, on which Prism ends (a stand-in here)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    process = subprocess.Popen([sys.executable, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(600)"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "ready\n"  # its SIGINT handler is Python's by then
        server = server_class()(PipelineOptions([]))
        server._server = types.SimpleNamespace(process=process)
        server.interrupt()
        assert process.wait(60) != 0
    finally:
        process.kill()
        process.wait()
