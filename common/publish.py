"""The one publish protocol: outputs appear only when complete.

A run writes everything under a staging folder first. `publish` then marks the output unfinished (removes
its manifest), removes what the previous run left that this one replaces, moves the staged files to their
final names, and moves the manifest into place last; the manifest is the mark of a finished output, so a
run killed at any point leaves nothing that looks finished. Every file, the manifest included, is written
whole under its staging name before it is moved. `write_atomically` gives single files the same promise.

The Beam jobs stage inside their output (`.staging-<run id>/`); training stages beside its model
directory (`<output>.partial`, resumable) or, for gs:// outputs, in the local temp folder.
"""

from __future__ import annotations

import datetime
import glob
import itertools
import logging
import os
import tempfile
import uuid
from typing import Callable, Iterable, Iterator

from common import fs
from common.errors import EXIT_CANNOT_CREATE, OperationalError, UserError

_LOG = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_not_a_file(output: str) -> None:
    """An output folder whose path is a file (or a link to one) cannot be created: exit 73."""
    if not fs.is_remote(output) and os.path.exists(output) and not os.path.isdir(output):
        raise OperationalError(f"--output {output} exists and is not a directory", EXIT_CANNOT_CREATE)


def check_output(output: str, manifest_name: str, overwrite: bool, what: str = "a finished run") -> bool:
    """Refuse an output that is a file, or that holds a finished run (its manifest) unless `overwrite`.

    Returns whether a finished run is there."""
    check_not_a_file(output)
    finished = fs.exists(fs.join(output, manifest_name))
    if finished and not overwrite:
        raise UserError(f"{output} already holds {what} ({manifest_name}); pass --overwrite to replace it")
    return finished


def new_staging(output: str) -> str:
    """A fresh staging folder inside `output`, after removing the staging of runs that did not finish.

    Nothing is created: the folder appears with the first file written into it, so a run stopped by a user
    mistake before it writes anything leaves nothing behind."""
    if fs.is_remote(output):  # object stores: the objects under the staging prefixes
        stale = fs.match(fs.join(output, STAGING_PREFIX + "*/**"))
    else:  # local: the folders themselves (FileSystems.match lists files only, and not empty folders)
        stale = sorted(glob.glob(os.path.join(glob.escape(output), STAGING_PREFIX + "*")))
    if stale:
        _LOG.warning("removing %d staged file(s) left by a run that did not finish", len(stale))
        try:
            fs.delete(stale)
        except Exception as exc:  # best effort: stale staging is never read
            _LOG.warning("could not remove stale staging files: %s", exc)
    return fs.join(output, STAGING_PREFIX + uuid.uuid4().hex[:12])


def _batches(items: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def publish(output: str, staging: str, staged: Iterable[str], manifest_name: str, manifest_text: str,
            replace: Iterable[str] = ()) -> None:
    """Move `staged` (files under `staging`) to the same relative names under `output`, the manifest last.

    `replace` are the previous run's outputs (files or folders) that this run replaces; they are removed
    after the old manifest and before the new files arrive. Both may be long streams (a million thumbnails):
    they are taken a batch at a time. The staging folder is removed at the end."""
    staged_manifest = fs.join(staging, manifest_name)
    fs.write_text(staged_manifest, manifest_text)
    fs.delete([fs.join(output, manifest_name)])
    for path in replace:
        fs.remove_tree(path)
    for batch in _batches(path for path in staged if path != staged_manifest):
        fs.move(batch, [fs.join(output, fs.relative(path, staging)) for path in batch])
    fs.move([staged_manifest], [fs.join(output, manifest_name)])
    try:
        fs.remove_tree(staging)
    except Exception as exc:  # leftovers are removed by the next run
        _LOG.warning("could not remove staging folder %s: %s", staging, exc)


def write_atomically(path: str, content: bytes | Callable[[str], None]) -> None:
    """Write a file whole or not at all: `content` is the bytes, or a function that writes a local path.

    Locally a temporary file beside `path` (same extension, so writers that go by it still work) is renamed
    onto it; an object store's upload is atomic already."""
    if fs.is_remote(path):
        if callable(content):
            with tempfile.TemporaryDirectory(prefix="atomic-") as scratch:
                local = os.path.join(scratch, os.path.basename(path))
                content(local)
                fs.copy_file(local, path)
        else:
            fs.write_bytes(path, content)
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    stem, dot, ext = name.partition(".")
    handle, temporary = tempfile.mkstemp(prefix=f".{stem}-", suffix=dot + ext, dir=folder)
    try:
        with os.fdopen(handle, "wb") as f:
            if not callable(content):
                f.write(content)
        if callable(content):
            content(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; this is an ordinary file
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
