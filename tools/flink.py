"""Where `make flink` puts Apache Flink and Beam's Flink job server for the installed Beam: the Flink tests and
benchmark (a session cluster on test hosts, jobs submitted with `--runner FlinkRunner`) look here.

The Makefile reads `FLINK_VERSION` below (the one place it is pinned) and installs, under `$FLINK_CACHE`
(default `~/.cache/video-annotation/flink`):

- `flink-<FLINK_VERSION>/`: the `apache-flink` and `apache-flink-libraries` wheels (`pip install --no-deps
  --target`; they pin an old apache-beam, so never into the project's venv), a whole Flink distribution under
  `pyflink/` (`bin/jobmanager.sh`, `bin/taskmanager.sh`, `lib/flink-dist-*.jar`, `conf/`);
- `beam-runners-flink-<minor>-job-server-<beam version>.jar`, fetched with Maven: Beam's job server for that
  Flink minor, of the apache-beam pin's version (Beam asks for a jar of its own version).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

FLINK_VERSION = "1.20.3"
DEFAULT_CACHE = "~/.cache/video-annotation/flink"


def flink_minor() -> str:
    return FLINK_VERSION.rsplit(".", 1)[0]


def cache() -> Path:
    return Path(os.environ.get("FLINK_CACHE") or os.path.expanduser(DEFAULT_CACHE))


def flink_home() -> Path:
    """FLINK_HOME of the distribution `make flink` installs (whether or not it is there yet)."""
    return cache() / f"flink-{FLINK_VERSION}" / "pyflink"


def job_server_jar() -> Path:
    """Beam's Flink job server for the installed apache-beam (whether or not it is there yet)."""
    from apache_beam.version import __version__

    return cache() / f"beam-runners-flink-{flink_minor()}-job-server-{__version__}.jar"


def missing() -> str | None:
    """Why a Flink cluster cannot be run here, in one line, or None. `make flink` installs Flink only where the job
    server jar is there (no job can run on Flink without it)."""
    if shutil.which("java") is None:
        return "Java is not installed: Flink and Beam's Flink job server need it (then run `make flink`)"
    if not job_server_jar().is_file():
        tried = Path(f"{job_server_jar()}.maven.log")
        if tried.is_file():  # make flink asked Maven and was refused
            return (f"Maven did not serve Beam's Flink job server {job_server_jar().name} when `make flink` asked "
                    f"(its answer: {tried})")
        return f"Beam's Flink job server is not at {job_server_jar()}: run `make flink` (it fetches it with Maven)"
    if not (flink_home() / "bin" / "jobmanager.sh").is_file():
        return f"Flink {FLINK_VERSION} is not installed at {flink_home()}: run `make flink`"
    return None
