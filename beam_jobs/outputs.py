"""How the Beam jobs own and publish their output.

A run holds the output's lease (`common.lease`) from before it touches the output until it ends: a second
run on the same output is skipped (exit 75). Every output file is staged under `.staging-<run id>/` inside
`--output`, and `PublishOutputs`, the last step, runs once after every write has finished, checks the run
still holds the lease, and publishes with the one protocol of `common.publish` (manifest.json last). A run
that fails or is interrupted removes its staging on the way out; one that is killed leaves it to the next
run, which removes it once it holds the lease.
"""

from __future__ import annotations

import argparse
import logging
import os
from importlib import metadata
from typing import Iterable, Sequence

import apache_beam as beam

from beam_jobs.sinks import csv_line
from common import fs, publish
from common.lease import DEFAULT_TTL_S, Lease, assert_held

_LOG = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
FAILURES_FILE = "failures.csv"
FAILURE_COLUMNS = ("video_id", "uri", "reason")
REFS_FILE = "inputs.jsonl"  # the launcher's list of matched videos, in staging


def package_versions() -> dict[str, str]:
    names = ("tensorflow", "keras", "apache-beam", "opencv-python-headless", "numpy", "video-annotation")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def add_lease_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lease-ttl", type=float, default=DEFAULT_TTL_S, metavar="SECONDS",
                        help="the run's lease on --output is renewed every SECONDS / 4 and expires SECONDS after "
                             "the last renewal, when a run that died is taken over (default: %(default)s)")


class OutputRun:
    """One run's hold on its output folder, as a context manager around everything that touches it.

    On entry: refuse an output path that is a file (exit 73), then take the lease (LeaseHeld, exit 75, when
    a live run holds it). `staging(overwrite, incremental)` refuses a finished run (unless `overwrite` or
    `incremental`, a run that builds on it) and, unless `overwrite`, an output without a manifest holding files
    this program did not write; it returns a fresh staging folder, removing what dead runs left. On exit, whatever happened: remove this run's staging if it is still
    there (a failed or interrupted run), remove the output folder if this run created it and left it empty,
    release the lease."""

    def __init__(self, output: str, job: str, ttl_s: float = DEFAULT_TTL_S):
        self.output, self.job, self.ttl_s = output, job, ttl_s
        self.lease: Lease | None = None
        self._staging: str | None = None
        self._created = False

    def __enter__(self) -> "OutputRun":
        publish.check_not_a_file(self.output)
        self._created = not fs.exists(self.output)
        self.lease = Lease.acquire(self.output, self.ttl_s, job=self.job)
        return self

    def staging(self, overwrite: bool, incremental: bool = False) -> str:
        publish.check_output(self.output, MANIFEST_FILE, overwrite or incremental)
        publish.check_only_own_files(self.output, MANIFEST_FILE, overwrite)
        self._staging = publish.new_staging(self.output)
        return self._staging

    @property
    def run_id(self) -> str:
        return self.lease.run_id

    def __exit__(self, *exc) -> None:
        try:
            if self._staging is not None and fs.is_dir(self._staging):
                _LOG.info("removing this run's staging %s", self._staging)
                fs.remove_tree(self._staging)
        except Exception as error:  # best effort: the next run removes it
            _LOG.warning("could not remove staging %s: %s", self._staging, error)
        finally:
            self.lease.release()
            if self._created and not fs.is_remote(self.output):
                try:
                    os.rmdir(self.output)  # only when empty
                except OSError:
                    pass


def failures_csv(failures: Iterable[tuple[str, str, str]]) -> str:
    return csv_line(FAILURE_COLUMNS) + "".join(csv_line(failure) for failure in sorted(failures))


def check_lease(output: str, run_id: str | None) -> None:
    """Before publishing, wherever that runs: the run must still hold the output's lease (LeaseLost)."""
    if run_id is not None:
        assert_held(output, run_id)


def published_by(output: str, staging: str, run_id: str | None) -> dict | None:
    """The manifest in `output` if run `run_id` published it (see common.publish.published_by), else None."""
    return publish.published_by(output, MANIFEST_FILE, staging, run_id)


def publish_outputs(output: str, staging: str, staged_files: Sequence[str], texts: dict[str, str], manifest: dict,
                    replace_patterns: Iterable[str] = (), run_id: str | None = None) -> dict:
    """Stage `texts` ({name: content}) beside `staged_files`, then publish them all with `manifest` (completed
    with the time, package versions, run id and the patterns of its outputs) last. Files of the previous run
    matching `replace_patterns` (this job's outputs, as its manifest names them) are replaced. With `run_id`,
    that run must still hold the output's lease (LeaseLost otherwise), checked before every step of
    publishing; a retry after it published returns the manifest it wrote. Returns the manifest written."""
    if done := published_by(output, staging, run_id):
        return done
    patterns = list(replace_patterns)
    manifest = dict(manifest, finished_at=publish.now_utc(), package_versions=package_versions(), run_id=run_id,
                    **{publish.OUTPUTS_KEY: patterns})
    staged = list(staged_files)
    for name, text in texts.items():
        staged.append(fs.join(staging, name))
        fs.write_text(staged[-1], text)
    check_lease(output, run_id)
    previous = (path for pattern in patterns for path in fs.match(fs.join(output, pattern)))
    publish.publish(output, staging, staged, MANIFEST_FILE, fs.json_text(manifest), replace=previous,
                    outputs=patterns, fence=lambda: check_lease(output, run_id), run_id=run_id)
    return manifest


def _call_ignoring_element(_, finish, **views):
    return finish(**views)


class PublishOutputs(beam.PTransform):
    """The last step of a job: once everything is written, call `finish(**side_inputs)` exactly once.

    `side_inputs` maps names to `beam.pvalue.AsList`/`AsSingleton` views; `finish` receives their values
    as keyword arguments and must publish the outputs (see `publish_outputs`). Its return value is the output.
    """

    def __init__(self, finish, **side_inputs):
        super().__init__()
        self._finish = finish
        self._side_inputs = side_inputs

    def expand(self, pbegin):
        return (
            pbegin
            | "Once" >> beam.Create([None])
            | "Publish" >> beam.Map(_call_ignoring_element, self._finish, **self._side_inputs)
        )
