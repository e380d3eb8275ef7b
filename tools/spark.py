"""Where `make spark` puts Spark and Beam's Spark job server: the tests and benchmarks that run jobs on a Spark
standalone cluster (`--runner SparkRunner --spark_job_server_jar ... --spark_master_url spark://...`) look here.

- Spark itself: the pyspark wheel (its jars and `bin/spark-class`), SPARK_VERSION, installed `--no-deps
  --target` into `$SPARK_CACHE/spark-<version>/` (default `~/.cache/video-annotation/spark`), never into the
  project venv. Beam's Spark 3 runner is built for Scala 2.12 and Spark 3.5.
- Beam's job server: `org.apache.beam:beam-runners-spark-3-job-server` at the installed apache-beam's version,
  from Maven Central, as `$SPARK_CACHE/v<beam version>/beam-runners-spark-3-job-server-<beam version>.jar`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SPARK_VERSION = "3.5.0"  # the Makefile reads this line
DEFAULT_CACHE = "~/.cache/video-annotation/spark"
JOB_SERVER_ARTIFACT = "org.apache.beam:beam-runners-spark-3-job-server"


def _cache() -> Path:
    return Path(os.environ.get("SPARK_CACHE") or os.path.expanduser(DEFAULT_CACHE))


def spark_home() -> Path:
    """SPARK_HOME of the Spark `make spark` installs (whether or not it is there yet)."""
    return _cache() / f"spark-{SPARK_VERSION}" / "pyspark"


def job_server_jar() -> Path:
    """The job server jar `make spark` fetches for the installed apache-beam (whether or not it is there yet)."""
    from apache_beam.version import __version__

    return _cache() / f"v{__version__}" / f"beam-runners-spark-3-job-server-{__version__}.jar"


def missing() -> list[str]:
    """What a Spark cluster with Beam jobs on it still lacks here, one line each, the root cause first; [] when
    nothing. `make spark` installs Spark only where the job server jar is there, so a cluster without jobs needs
    the jar too."""
    reasons = []
    if shutil.which("java") is None:
        reasons.append("Java is not installed")
    jar = job_server_jar()
    if not jar.exists():
        artifact = f"{JOB_SERVER_ARTIFACT}:{jar.parent.name[1:]}"
        answer = Path(f"{jar}.maven.log")
        reasons.append(f"Beam's Spark job server {jar.name} is not in {jar.parent} ("
                       + (f"Maven Central did not serve {artifact} when make spark asked: {answer})" if answer.exists()
                          else f"make spark fetches {artifact} from Maven Central)"))
    if not (spark_home().parent / ".installed").exists():
        reasons.append(f"Spark {SPARK_VERSION} is not installed in {spark_home().parent} (make spark)")
    return reasons
