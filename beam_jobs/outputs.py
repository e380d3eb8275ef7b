"""Outputs that appear only when complete.

A job writes everything into a staging folder inside its output (`.staging-<run id>/`). Its last step,
`PublishOutputs`, runs once after every write has finished: it removes a previous run's outputs (with
`--overwrite`), moves the staged files to their final names, and moves `manifest.json` into place last; every
file, the manifest included, is written whole under its staging name first, so no final name ever holds a
half-written file. A run killed before that leaves only the staging folder, which no reader looks at, and no
`manifest.json`: the manifest is the mark of a finished output. The next run removes stale staging folders.
The staging folder is created by the first file written into it, so a run stopped by a user mistake before
it writes anything leaves nothing behind.
"""

from __future__ import annotations

import csv
import datetime
import glob
import io
import json
import logging
import os
import uuid
from importlib import metadata
from typing import Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from model.cli import UserError

_LOG = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
FAILURES_FILE = "failures.csv"
STAGING_PREFIX = ".staging-"
FAILURE_COLUMNS = ("video_id", "uri", "reason")


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base.rstrip("/"), *parts) if parts else base


def write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))


def read_text(path: str) -> str:
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def delete_if_exists(paths: Iterable[str]) -> None:
    existing = [p for p in paths if FileSystems.exists(p)]
    if existing:
        FileSystems.delete(existing)


def matching(pattern: str) -> list[str]:
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # BeamIOError when nothing matches on some filesystems
        return []


def package_versions() -> dict[str, str]:
    names = ("tensorflow", "keras", "apache-beam", "opencv-python-headless", "numpy", "video-annotation")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def prepare_output(output: str, overwrite: bool) -> str:
    """Check the output folder and return a new staging folder inside it.

    A folder holding a finished run (its manifest) is refused unless `overwrite`. Stale staging folders
    of killed runs are removed.
    """
    manifest = join(output, MANIFEST_FILE)
    if FileSystems.exists(manifest) and not overwrite:
        raise UserError(f"{output} already holds a finished run ({MANIFEST_FILE}); pass --overwrite to replace it")
    if "://" in output:  # object stores: the objects under the staging prefixes
        stale = matching(join(output, STAGING_PREFIX + "*/**"))
    else:  # local: the folders themselves (FileSystems.match lists files only, and not empty folders)
        stale = sorted(glob.glob(os.path.join(glob.escape(output), STAGING_PREFIX + "*")))
    if stale:
        _LOG.warning("removing %d staged file(s) left by a run that did not finish", len(stale))
        try:
            FileSystems.delete(stale)
        except Exception as exc:  # best effort: stale staging is never read
            _LOG.warning("could not remove stale staging files: %s", exc)
    return join(output, STAGING_PREFIX + uuid.uuid4().hex[:12])


def failures_csv(failures: Iterable[tuple[str, str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FAILURE_COLUMNS)
    writer.writerows(sorted(failures))
    return buffer.getvalue()


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def publish(
    output: str,
    staging: str,
    staged_files: list[str],
    texts: dict[str, str],
    manifest: dict,
    replace_patterns: Iterable[str] = (),
) -> dict:
    """Move `staged_files` (paths under `staging`) and `texts` ({name: content}) into `output`, then the
    manifest. Files matching `replace_patterns` (a previous run's outputs) are removed first."""
    manifest = dict(manifest, finished_at=now_utc(), package_versions=package_versions())
    staged_texts = []
    for name, text in texts.items():
        staged_texts.append(join(staging, name))
        write_text(staged_texts[-1], text)
    staged_manifest = join(staging, MANIFEST_FILE)
    write_text(staged_manifest, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    delete_if_exists([join(output, MANIFEST_FILE)])
    delete_if_exists([p for pattern in replace_patterns for p in matching(join(output, pattern))])
    _move(output, staging, list(staged_files) + staged_texts)
    _move(output, staging, [staged_manifest])
    try:
        if "://" in staging:  # object stores have no folders: remove what is left inside (the input list)
            delete_if_exists(matching(staging.rstrip("/") + "/**"))
        elif os.path.exists(staging):
            FileSystems.delete([staging])
    except Exception as exc:  # leftovers are removed by the next run
        _LOG.warning("could not remove staging folder %s: %s", staging, exc)
    return manifest


def _move(output: str, staging: str, staged: list[str]) -> None:
    """Rename files under `staging` to the same relative names under `output`."""
    if not staged:
        return
    destinations = [join(output, path[len(staging.rstrip("/")) + 1 :]) for path in staged]
    delete_if_exists(destinations)
    if "://" not in output:  # object stores have no folders; local renames need them
        for folder in sorted({os.path.dirname(d) for d in destinations}):
            os.makedirs(folder, exist_ok=True)
    FileSystems.rename(staged, destinations)


def _call_ignoring_element(_, finish, **views):
    return finish(**views)


class PublishOutputs(beam.PTransform):
    """The last step of a job: once everything is written, call `finish(**side_inputs)` exactly once.

    `side_inputs` maps names to `beam.pvalue.AsList`/`AsSingleton` views; `finish` receives their values
    as keyword arguments and must publish the outputs (see `publish`). Its return value is the output.
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
