"""One job's progress in a worker process, logged every few seconds while its decode and embed steps run."""

from __future__ import annotations

import logging
import threading
import time

_LOG = logging.getLogger(__name__)


class Progress:
    """Videos embedded of those matched, failures so far, frames/s, logged every `interval_s` seconds.

    The decode and embed DoFns of one job share one `Progress` through `Progress.of(job_id)`; a daemon thread
    logs, so a line comes even while one long video decodes. Counts are this process's share (a distributed
    runner has one per worker process); Beam's counters hold the totals.
    """

    _jobs: dict[str, "Progress"] = {}
    _jobs_lock = threading.Lock()

    def __init__(self, job_id: str, expected_videos: int, interval_s: float):
        self.job_id, self.expected_videos, self.interval_s = job_id, expected_videos, interval_s
        self._lock = threading.Lock()
        self._users = 0
        self._stop = threading.Event()
        self._started = time.monotonic()
        self.failed = self.embedded = self.frames = 0
        self.thread: threading.Thread | None = None  # the logging thread, once started by `of`

    @classmethod
    def of(cls, job_id: str, expected_videos: int = 0, interval_s: float = 10.0) -> "Progress":
        """The job's Progress, started; each caller (a DoFn's setup) must `release()` it (in teardown)."""
        with cls._jobs_lock:
            progress = cls._jobs.get(job_id)
            if progress is None:
                progress = cls._jobs[job_id] = cls(job_id, expected_videos, interval_s)
                progress.thread = threading.Thread(target=progress._log_every_interval, daemon=True, name="progress")
                progress.thread.start()
            progress._users += 1
            return progress

    def release(self) -> None:
        with self._jobs_lock:
            self._users -= 1
            if self._users == 0:
                self._stop.set()
                self._jobs.pop(self.job_id, None)

    def count(self, failed: int = 0, embedded: int = 0, frames: int = 0) -> None:
        with self._lock:
            self.failed += failed
            self.embedded += embedded
            self.frames += frames

    def line(self) -> str:
        with self._lock:
            elapsed = max(time.monotonic() - self._started, 1e-9)
            of = f"/{self.expected_videos}" if self.expected_videos else ""
            return (f"progress: {self.embedded + self.failed}{of} videos done ({self.embedded} embedded, "
                    f"{self.failed} failed so far); {self.frames} frames at {self.frames / elapsed:.1f} frames/s; "
                    f"{elapsed:.0f} s")

    def _finished(self) -> bool:
        with self._lock:
            return bool(self.expected_videos) and self.embedded + self.failed >= self.expected_videos

    def _log_every_interval(self) -> None:
        while not self._stop.wait(self.interval_s) and not self._finished():
            _LOG.info("%s", self.line())
