"""common.cli.main: exit 0 on success; one line and the failure's exit status on a user mistake or an operational
failure (common.errors lists them); a traceback for anything else."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.cli import main
from common.errors import UserError

REPO = Path(__file__).resolve().parents[1]


class ContractError(ValueError):
    """Stands in for a listed user-error type such as tfrecords_schema.RecordError."""


def test_success_returns_0_and_passes_argv(capsys):
    seen = []
    assert main(lambda argv: seen.append(argv) or "a PipelineResult", ["--input", "x"]) == 0
    assert seen == [["--input", "x"]]
    assert capsys.readouterr().err == ""


def test_argv_defaults_to_none():
    seen = []
    assert main(seen.append) == 0
    assert seen == [None]


def test_a_user_error_is_one_line_and_exit_2(capsys):
    def run(argv):
        raise UserError("input /nope does not exist")

    assert main(run, []) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: input /nope does not exist\n"
    assert captured.out == ""


def test_a_listed_user_error_type_is_one_line_and_exit_2(capsys):
    def run(argv):
        raise ContractError("the feature records do not match the model: feature_dim 512 (expected 1024)")

    assert main(run, [], user_errors=(ContractError,)) == 2
    assert capsys.readouterr().err == (
        "error: the feature records do not match the model: feature_dim 512 (expected 1024)\n")


def test_other_exceptions_raise(capsys):
    def run(argv):
        raise ContractError("a programming error when not listed")

    with pytest.raises(ContractError, match="programming error"):
        main(run, [])
    with pytest.raises(KeyError):
        main(lambda argv: {}["missing"], [], user_errors=(ContractError,))
    assert "error:" not in capsys.readouterr().err


def test_system_exit_from_argparse_passes_through():
    import argparse

    def run(argv):
        argparse.ArgumentParser().parse_args(argv)

    with pytest.raises(SystemExit) as caught:
        main(run, ["--unknown"])
    assert caught.value.code == 2


def _raising(exc):
    def run(argv):
        raise exc

    return run


@pytest.mark.parametrize("exc, status, line", [
    (OSError(28, "No space left on device", "/out/.staging-1/report.html"), 74,
     "error: disk full: /out/.staging-1/report.html (No space left on device)"),
    (PermissionError(13, "Permission denied", "/out"), 77, "error: permission denied: /out (Permission denied)"),
    (OSError(30, "Read-only file system"), 74, "error: read-only filesystem (Read-only file system)"),
])
def test_operational_os_errors_are_one_line_with_their_status(exc, status, line, capsys):
    assert main(_raising(exc), []) == status
    assert capsys.readouterr().err == line + "\n"


def test_a_runner_wrapped_disk_full_is_recognised_in_the_cause_chain_and_in_text(capsys):
    def wrapped(argv):
        try:
            raise OSError(28, "No space left on device")
        except OSError as exc:
            raise RuntimeError("step failed [while running 'StageThumbnails']") from exc

    assert main(wrapped, []) == 74
    text_only = RuntimeError("OSError: [Errno 28] No space left on device [while running 'StageThumbnails']")
    assert main(_raising(text_only), []) == 74
    assert capsys.readouterr().err.splitlines() == ["error: disk full (No space left on device)"] * 2


def test_other_os_errors_are_bugs_and_keep_their_traceback():
    with pytest.raises(FileNotFoundError):
        main(_raising(FileNotFoundError(2, "No such file or directory", "/x")), [])


def test_operational_errors_carry_their_own_status(capsys):
    from common.errors import LeaseHeld, OperationalError

    assert main(_raising(OperationalError("model.keras is corrupt", 65)), []) == 65
    assert main(_raising(LeaseHeld("out is being written by another run (host h, pid 1)")), []) == 75
    assert capsys.readouterr().err.splitlines() == [
        "error: model.keras is corrupt", "skipped: out is being written by another run (host h, pid 1)"]


@pytest.fixture
def logging_back_on():
    """An interrupted command leaves logging off in its process, which is ending; the suite's goes on."""
    yield
    logging.disable(logging.NOTSET)


def test_ctrl_c_is_exit_130_and_one_line(capsys, logging_back_on):
    assert main(_raising(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err == "interrupted: nothing was published\n"


def test_nothing_is_logged_after_the_line_of_an_interrupted_command(logging_back_on):
    """On Prism the job's bundle goes on in Beam's SDK harness thread after Ctrl-C: what it logs must not come
    after the one line."""
    harness = logging.getLogger("apache_beam.runners.worker.sdk_worker")
    assert harness.isEnabledFor(logging.ERROR)
    assert main(_raising(KeyboardInterrupt()), []) == 130
    assert not harness.isEnabledFor(logging.CRITICAL)


def test_ctrl_c_inside_a_beam_step_is_still_an_interrupt(capsys, logging_back_on):
    """Beam's DoFn runner re-raises a KeyboardInterrupt as RuntimeError("KeyboardInterrupt [while running ...]")."""
    def run(argv):
        try:
            raise KeyboardInterrupt()
        except BaseException:
            raise RuntimeError("KeyboardInterrupt [while running 'DecodeFrames/Decode']")

    assert main(run, []) == 130
    assert capsys.readouterr().err == "interrupted: nothing was published\n"
    with pytest.raises(RuntimeError, match="a bug"):  # any other RuntimeError is still a bug
        main(_raising(RuntimeError("a bug")), [])


_CHILD_THEN_CTRL_C = """
import multiprocessing, signal, sys, time
from common.cli import main

if sys.argv[1:] == ["sigterm-ignored"]:  # as a command started by a shell or harness that ignores it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

def run(argv):
    child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(120,))
    child.start()
    print(child.pid, flush=True)
    raise KeyboardInterrupt

if __name__ == "__main__":
    sys.exit(main(run, []))
"""


@pytest.mark.parametrize("sigterm", ["default", "sigterm-ignored"])
def test_ctrl_c_ends_the_child_processes_the_command_started(tmp_path, sigterm):
    """A frame decoder left running (or still starting, reading its start-up data) would outlive the command and
    print multiprocessing's EOFError after the one line. A child inherits an ignored SIGTERM; multiprocessing's
    exit handler then waited for it (the child sleeps 120 s, so a command that waits for it runs past 60)."""
    script = tmp_path / "job.py"
    script.write_text(_CHILD_THEN_CTRL_C)
    try:
        done = subprocess.run([sys.executable, str(script), sigterm], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the command waited for its child: {exc.stderr!r}")
    assert done.returncode == 130, done.stderr[-2000:]
    assert "interrupted: nothing was published" in done.stderr.splitlines(), done.stderr[-2000:]
    child = int(done.stdout.split()[0])
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{child}") and _state(child) != "Z":  # ended (a zombie until init reaps it)
        assert time.monotonic() < deadline, f"child {child} still running after the command ended"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return "Z"


def test_a_command_ends_the_job_servers_it_started_and_only_those():
    """Beam's exit handler stops a job server it started (Prism) with SIGINT, then sleeps a whole second before
    it looks again: a second on every command run on Prism. The command stops them itself as it ends, and
    the handler finds them gone; its other children are not its to stop. A server started with SIGINT ignored
    (a command run in the background of a shell script passes that on) is ended too, and so is one that handles
    SIGINT without exiting."""
    started = {}

    def run(argv):
        sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
        started["server"] = subprocess.Popen([*sleeper, "--job_port", "0"], preexec_fn=_sigint(signal.SIG_DFL))
        started["deaf server"] = subprocess.Popen([*sleeper, "--job-port", "0"], preexec_fn=_sigint(signal.SIG_IGN))
        stubborn = ("import signal, time; signal.signal(signal.SIGINT, lambda *a: None); print('ready', flush=True); "
                    "time.sleep(120)")
        started["stubborn server"] = subprocess.Popen([sys.executable, "-c", stubborn, "--job_port", "0"],
                                                      stdout=subprocess.PIPE, text=True)
        assert started["stubborn server"].stdout.readline() == "ready\n"  # its handler is in place
        started["other"] = subprocess.Popen(sleeper)

    try:
        assert main(run, []) == 0
        assert started["server"].poll() is not None, "the job server still runs after the command"
        assert started["deaf server"].poll() is not None, "the job server ignoring SIGINT still runs"
        assert started["stubborn server"].poll() is not None, "the job server handling SIGINT still runs"
        assert started["other"].poll() is None
    finally:
        for process in started.values():
            process.kill()
            process.wait()


def test_a_server_that_ignores_sigint_is_known_to_before_it_is_signalled():
    """A job server started with SIGINT ignored gets SIGKILL at once rather than a SIGINT and a second's wait."""
    from common.cli import _ignores

    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    deaf = subprocess.Popen(sleeper, preexec_fn=_sigint(signal.SIG_IGN))
    hearing = subprocess.Popen(sleeper, preexec_fn=_sigint(signal.SIG_DFL))  # whatever the suite was started with
    try:
        assert _ignores(deaf.pid, signal.SIGINT) and not _ignores(deaf.pid, signal.SIGTERM)
        assert not _ignores(hearing.pid, signal.SIGINT)
    finally:
        for process in (deaf, hearing):
            process.kill()
            process.wait()


def _sigint(disposition):
    """A child's SIGINT disposition, set before it runs (kept across exec when ignored, reset when default)."""
    return lambda: signal.signal(signal.SIGINT, disposition)
