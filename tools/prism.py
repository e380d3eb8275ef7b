"""Where `make prism` builds Prism, Beam's local runner, for the installed Beam: the tests and benchmarks that
run jobs on it (`--runner PrismRunner --prism_location ...`) look here.

The Makefile builds `github.com/apache/beam/sdks/v2/go/cmd/prism` at the version of setup.py's apache-beam pin
into `$PRISM_CACHE/v<version>/prism` (default `~/.cache/video-annotation/prism`), never into Beam's own cache
(`~/.apache_beam/cache/prism/bin`), where `--runner DirectRunner` would find it and switch every job on the
machine to Prism.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CACHE = "~/.cache/video-annotation/prism"


def prism_binary() -> Path:
    """The binary `make prism` builds for the installed apache-beam (whether or not it is there yet)."""
    from apache_beam.version import __version__

    cache = os.environ.get("PRISM_CACHE") or os.path.expanduser(DEFAULT_CACHE)
    return Path(cache) / f"v{__version__}" / "prism"


def prism_args() -> list[str]:
    """The flags that run a job on that binary."""
    return ["--runner", "PrismRunner", "--prism_location", str(prism_binary())]
