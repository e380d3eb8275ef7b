"""The one publish protocol: outputs appear only when complete.

A run writes everything under a staging folder first. `publish` then marks the output unfinished (removes
its manifest), removes what the previous run left that this one replaces, moves the staged files to their
final names, and moves the manifest into place last; the manifest is the mark of a finished output, so a
run killed at any point leaves nothing that looks finished. Every file, the manifest included, is written
whole under its staging name before it is moved. `write_atomically` gives single files the same promise.

Publishing can be retried at any point (a runner retries a failed bundle; a storage call fails, or succeeds and
loses its answer): a retry ends with the new output complete (see `publish`). It removes only files an earlier
run's manifest names (`previous_outputs`), and `check_only_own_files` refuses an output of someone else's files.

The Beam jobs stage inside their output (`.staging-<run id>/`); training stages beside its model
directory (`<output>.partial`, resumable) or, for gs:// outputs, in the local temp folder.
"""

from __future__ import annotations

import datetime
import glob
import itertools
import logging
import os
import re
import tempfile
import uuid
from typing import Callable, Iterable, Iterator, Sequence

from common import fs
from common.errors import EXIT_CANNOT_CREATE, OperationalError, UserError

_LOG = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
PUBLISHING_FILE = ".publishing.json"  # in the output while a publish replaces it: what it replaces
MOVING_MARK = ".moving"  # in staging: the replaced files are removed, the staged ones are being moved
OUTPUTS_KEY = "outputs"  # in a job's manifest: the patterns of the files the job writes


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


def check_only_own_files(output: str, manifest_name: str, overwrite: bool) -> None:
    """Refuse (one line, exit 2) an output without a manifest that holds files no run of this product wrote,
    unless `overwrite`: a folder of the user's own is not taken over silently. Files an unfinished publish
    names in its mark are the product's. With `overwrite`, files of the output's names are replaced and no
    other file is removed (`publish` removes only what an earlier manifest names)."""
    if overwrite or fs.exists(fs.join(output, manifest_name)):
        return
    owned = owned_by(previous_outputs(output, manifest_name))
    for path in fs.iter_files_under(output):
        relative = fs.relative(path, output)
        if not is_bookkeeping(relative) and not owned(relative):
            raise UserError(f"--output {output} holds files this program did not write ({relative}) and no "
                            f"{manifest_name}; pass --overwrite to write into it (files of the same names are "
                            "replaced, no other file is removed)")


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


def _pattern(glob_pattern: str) -> re.Pattern:
    """A relative glob as a regular expression: `*` within one name, `**` across folders."""
    parts = re.split(r"(\*\*|\*|\?)", glob_pattern)
    wildcards = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts) + r"\Z")


def owned_by(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Whether a path relative to the output (a file, or a folder such as `thumbnails`) is one of `patterns`
    (relative globs such as `labels.csv`, `index-*-of-*.jsonl`, `thumbnails/**`), or a folder of theirs."""
    compiled = [_pattern(p) for p in patterns]
    folders = {p.split("/", 1)[0] for p in patterns if "/" in p}
    return lambda relative: relative in folders or any(c.match(relative) for c in compiled)


def is_bookkeeping(relative: str) -> bool:
    """The files a run keeps in an output besides its outputs: the lease, staging, the publishing mark."""
    first = relative.split("/", 1)[0]
    return first.startswith((STAGING_PREFIX, ".lease")) or first == PUBLISHING_FILE


def previous_outputs(output: str, manifest_name: str, default: Sequence[str] = ()) -> list[str]:
    """The patterns of the files an earlier run of this product wrote in `output`, which a new run may remove:
    those its manifest names (`default` for a manifest from before manifests named them), and those a publish
    that did not finish names in its mark (its previous run's and its own). [] when neither is there: an
    output of someone else's files, of which nothing is removed."""
    patterns: list[str] = []
    manifest_path = fs.join(output, manifest_name)
    if fs.exists(manifest_path):
        try:
            manifest = fs.read_json(manifest_path)
        except ValueError:
            manifest = {}
        patterns += manifest.get(OUTPUTS_KEY, default) if isinstance(manifest, dict) else default
    mark = _read_mark(output)
    if mark is not None:
        patterns += [*mark.get("previous", []), *mark.get("outputs", [])]
    return sorted(set(patterns))


def _read_mark(output: str) -> dict | None:
    path = fs.join(output, PUBLISHING_FILE)
    if not fs.exists(path):
        return None
    try:
        mark = fs.read_json(path)
    except (ValueError, FileNotFoundError):
        return None
    return mark if isinstance(mark, dict) else None


def publish(output: str, staging: str, staged: Iterable[str], manifest_name: str, manifest_text: str,
            replace: Iterable[str] = (), outputs: Sequence[str] | None = None,
            previous_default: Sequence[str] = (), fence: Callable[[], None] | None = None,
            run_id: str | None = None) -> None:
    """Move `staged` (files under `staging`) to the same relative names under `output`, the manifest last.

    `replace` are the previous run's outputs (files or folders) that this run replaces; they are removed
    after the old manifest and before the new files arrive. With `outputs` (the patterns of what this run
    writes, which its manifest names too), only those of them that an earlier run's manifest names
    (`previous_outputs`) are removed: files the product did not write are never removed. Both may be long
    streams (a million thumbnails): they are taken a batch at a time. `fence` (the lease check) runs before
    each step that changes the output. The staging folder is removed at the end.

    Idempotent under retries (a runner retrying the step, or a transient storage error): a retry of a publish
    that failed at any file operation ends with the new output complete. The output's `.publishing.json` mark
    records what is replaced before anything is removed, and staging's `.moving` mark records that the old
    files are gone; a retry that finds it only moves what is still staged, never removing what it moved.
    With `run_id` (which the manifest then holds as "run_id"), a retry after the publish succeeded finds its
    manifest in place and only cleans up."""
    if published_by(output, manifest_name, staging, run_id) is not None:
        return
    staged_manifest = fs.join(staging, manifest_name)
    moving = fs.join(staging, MOVING_MARK)
    mark_path = fs.join(output, PUBLISHING_FILE)
    check = fence or (lambda: None)
    staging_name = staging.rstrip("/") if fs.dirname(staging) != output.rstrip("/") else fs.relative(staging, output)
    check()
    resuming = fs.exists(moving)
    fs.write_text(staged_manifest, manifest_text)
    if not resuming:
        mark = _read_mark(output)
        if mark is not None and mark.get("staging") == staging_name:  # this publish, retried
            previous = mark.get("previous", [])
        else:
            previous = previous_outputs(output, manifest_name, previous_default or outputs or ())
            fs.write_json(mark_path, {"staging": staging_name, "previous": previous,
                                      "outputs": list(outputs or ())})
        fs.delete([fs.join(output, manifest_name)])
        owned = owned_by(previous) if outputs is not None else (lambda _: True)
        for path in replace:
            if owned(fs.relative(path, output)):
                fs.remove_tree(path)
        fs.write_text(moving, "")
    bookkeeping = {staged_manifest, moving}
    for batch in _batches(path for path in staged if path not in bookkeeping):
        check()
        if resuming:
            batch = _still_staged(batch, output, staging)
        fs.move(batch, [fs.join(output, fs.relative(path, staging)) for path in batch])
    check()
    fs.move([staged_manifest], [fs.join(output, manifest_name)])
    clean_up(output, staging)


def published_by(output: str, manifest_name: str, staging: str, run_id: str | None) -> dict | None:
    """The manifest in `output` if run `run_id` published it (a publishing step retried after it succeeded:
    nothing is left to do but removing what the first try could not), else None."""
    path = fs.join(output, manifest_name)
    if run_id is None or not fs.exists(path):
        return None
    try:
        manifest = fs.read_json(path)
    except ValueError:
        return None
    if not isinstance(manifest, dict) or manifest.get("run_id") != run_id:
        return None
    clean_up(output, staging)
    return manifest


def clean_up(output: str, staging: str) -> None:
    """After a publish (or a retry that finds it done): remove its mark and its staging folder, as far as
    possible; what is left is removed by the next run."""
    for what, remove in (("mark", lambda: fs.delete([fs.join(output, PUBLISHING_FILE)])),
                         ("staging folder", lambda: fs.remove_tree(staging))):
        try:
            remove()
        except Exception as exc:  # leftovers are removed by the next run
            _LOG.warning("could not remove the publishing %s in %s: %s", what, output, exc)


def _still_staged(batch: list[str], output: str, staging: str) -> list[str]:
    """The files of `batch` still in staging; the others must be in the output already (moved by the try
    that failed), or the staged output is incomplete."""
    still = []
    for path in batch:
        if fs.exists(path):
            still.append(path)
        elif not fs.exists(fs.join(output, fs.relative(path, staging))):
            raise FileNotFoundError(f"{path} is neither staged nor published: the staged output is incomplete")
    return still


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
