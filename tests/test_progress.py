"""beam_jobs.progress: one Progress per job id in a process, its counts and its log line."""

from __future__ import annotations

import logging
import threading
import types
import uuid

import pytest

from beam_jobs import progress as progress_module
from beam_jobs.progress import Progress


@pytest.fixture
def job_id():
    job = f"job-{uuid.uuid4().hex[:8]}"
    yield job
    Progress._jobs.pop(job, None)


class Clock:
    """Stands in for time.monotonic in beam_jobs.progress."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def monotonic(self) -> float:
        return self.now


def test_of_shares_one_progress_per_job_and_release_removes_it(job_id):
    first = Progress.of(job_id, expected_videos=5, interval_s=60)
    second = Progress.of(job_id, expected_videos=99, interval_s=1)  # a later caller's numbers are ignored
    other = Progress.of(job_id + "-other", interval_s=60)
    try:
        assert second is first and other is not first
        assert (first.expected_videos, first.interval_s) == (5, 60)
        assert Progress._jobs[job_id] is first
        first.release()
        assert Progress._jobs[job_id] is first and not first._stop.is_set()  # one user left
        second.release()
        assert job_id not in Progress._jobs and first._stop.is_set()
        again = Progress.of(job_id, expected_videos=2, interval_s=60)
        assert again is not first and again.expected_videos == 2 and again.embedded == 0
        again.release()
        assert job_id not in Progress._jobs
    finally:
        other.release()
    assert job_id + "-other" not in Progress._jobs


def test_counts_add_up(job_id):
    progress = Progress(job_id, expected_videos=5, interval_s=60)
    progress.count(failed=1)
    progress.count(embedded=2, frames=30)
    progress.count(frames=10)
    assert (progress.failed, progress.embedded, progress.frames) == (1, 2, 40)


def test_line_format(job_id, monkeypatch):
    clock = Clock(100.0)
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    progress = Progress(job_id, expected_videos=5, interval_s=60)
    progress.count(failed=1)
    progress.count(embedded=2, frames=40)
    clock.now = 104.0
    assert progress.line() == "progress: 3/5 videos done (2 embedded, 1 failed so far); 40 frames at 10.0 frames/s; 4 s"
    clock.now = 112.6
    assert progress.line() == "progress: 3/5 videos done (2 embedded, 1 failed so far); 40 frames at 3.2 frames/s; 13 s"


def test_line_without_an_expected_count_and_at_time_zero(job_id, monkeypatch):
    clock = Clock(7.0)
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    progress = Progress(job_id, expected_videos=0, interval_s=60)
    assert progress.line() == "progress: 0 videos done (0 embedded, 0 failed so far); 0 frames at 0.0 frames/s; 0 s"
    progress.count(embedded=1, frames=8)
    clock.now = 9.0
    assert progress.line() == "progress: 1 videos done (1 embedded, 0 failed so far); 8 frames at 4.0 frames/s; 2 s"


def test_finished_once_every_expected_video_is_done(job_id):
    progress = Progress(job_id, expected_videos=3, interval_s=60)
    progress.count(embedded=2)
    assert not progress._finished()
    progress.count(failed=1)
    assert progress._finished()
    assert not Progress(job_id, expected_videos=0, interval_s=60)._finished()  # unknown total: never


def test_the_logging_thread_logs_lines_until_released(job_id, caplog):
    caplog.set_level(logging.INFO, logger="beam_jobs.progress")
    logged = threading.Event()

    class Signal(logging.Handler):
        def emit(self, record):
            logged.set()

    signal = Signal(level=logging.INFO)
    logging.getLogger("beam_jobs.progress").addHandler(signal)
    progress = Progress.of(job_id, expected_videos=4, interval_s=0.02)
    try:
        progress.count(embedded=1, frames=8)
        assert logged.wait(60), "no progress line"
    finally:
        progress.release()
        logging.getLogger("beam_jobs.progress").removeHandler(signal)
    progress.thread.join(60)
    assert not progress.thread.is_alive()  # stopped: no line can follow
    lines = [r.getMessage() for r in caplog.records if r.name == "beam_jobs.progress"]
    assert lines and lines[0].startswith("progress: 1/4 videos done (1 embedded, 0 failed so far); 8 frames at ")
