"""Paths over one filesystem layer: Beam's `FileSystems`, which serves local paths and gs:// alike.

Every module that reads or writes a path a user gave (outputs, model directories, lists in staging) goes
through these helpers, so "is it remote?" is asked in one place. Content is never (de)compressed on the
way, whatever the file name ends in. TensorFlow's own readers (`tf.data`, `tf.io.gfile`) stay where
TensorFlow reads records itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shutil
import tempfile
import unicodedata
from typing import Any, Iterator, Sequence

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from common.errors import EXIT_IO_ERROR, EXIT_NO_PERMISSION, OperationalError

_RAW = CompressionTypes.UNCOMPRESSED
_CHUNK = 1 << 22


def is_remote(path: str) -> bool:
    """Whether `path` is a URI (gs://...) rather than a local path."""
    return "://" in path


def join(base: str, *names: str) -> str:
    """`base` with `names` appended; a name may hold forward slashes (`per_video/a/b.csv`)."""
    parts = [piece for name in names for piece in name.split("/") if piece]
    if not parts:
        return base
    if is_remote(base):
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _escape_char(char: str) -> str:
    """`%` itself and control characters (NUL, tab, newlines, DEL, C1, line and paragraph separators) as
    %XX per UTF-8 byte; every other character as it is."""
    if char == "%" or unicodedata.category(char) in ("Cc", "Zl", "Zp"):
        return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return char


def _safe_segment(segment: str) -> str:
    if segment in ("", ".", ".."):  # never produced by escaping alone: `%` is always escaped
        return {"": "%2F", ".": "%2E", "..": "%2E%2E"}[segment]
    return "".join(map(_escape_char, segment))


def mirrored_name(name: str) -> str:
    """A relative name, to put under an output folder, that mirrors `name` (a video id, a URI or a local path)
    and cannot leave that folder: a URI without its scheme (`gs://b/x.avi` -> `b/x.avi`, the bucket being the
    first folder), a local path without its leading slash, and then each part between slashes kept as it is
    unless it could escape or mislead: `..`, `.` and empty parts (`a//b`) become `%2E%2E`, `%2E` and `%2F`, and
    `%` and control characters (NUL, tab, CR, LF, ...) become `%XX` (UTF-8). Ordinary names are unchanged
    (`Class/v_1.avi`), and different relative names never share a file; a name that starts like a URI
    (`gs://b/x`) is taken for one, and shares its file with `b/x` (one run's ids are either all relative to
    the input root or all URIs and absolute paths)."""
    path = _SCHEME.sub("", name, count=1)
    path = path[1:] if path.startswith("/") else path
    return "/".join(_safe_segment(segment) for segment in path.split("/"))


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(path)


def relative(path: str, root: str) -> str:
    """`path` relative to the folder `root`, with forward slashes."""
    prefix = root.rstrip("/") + ("/" if is_remote(root) else os.sep)
    if not path.startswith(prefix):
        raise ValueError(f"{path} is not under {root}")
    return path[len(prefix):].replace(os.sep, "/")


def exists(path: str) -> bool:
    """Whether a file (or, locally, a folder) exists at `path`."""
    return os.path.lexists(path) if not is_remote(path) else FileSystems.exists(path)


def is_dir(path: str) -> bool:
    """A local folder, or a gs:// prefix with at least one object under it."""
    if not is_remote(path):
        return os.path.isdir(path)
    return bool(match(path.rstrip("/") + "/**"))


def match(pattern: str) -> list[str]:
    """Sorted files matching a glob (`**` crosses folders); [] when nothing matches, or when what the pattern
    names does not exist (a missing folder or bucket). Any other failure to list (no permission, expired
    credentials, a storage error) is an OperationalError naming the pattern: a listing that failed is never
    taken for an empty one."""
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except BeamIOError as error:
        causes = list(_causes(error))
        if causes and all(_is_not_found(cause) for cause in causes):
            return []
        cause = next((c for c in causes if not _is_not_found(c)), error)
        denied = isinstance(cause, PermissionError) or getattr(cause, "code", None) in (401, 403)
        raise OperationalError(f"cannot list {pattern}: {cause}",
                               EXIT_NO_PERMISSION if denied else EXIT_IO_ERROR) from error
    return sorted(m.path for m in found)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The errors a BeamIOError holds (its exception_details), nested ones unpacked."""
    details = getattr(error, "exception_details", None)
    if not isinstance(details, dict):
        yield error
        return
    for cause in details.values():
        yield from _causes(cause)


def _is_not_found(error: BaseException) -> bool:
    return isinstance(error, FileNotFoundError) or getattr(error, "code", None) == 404  # google.api_core NotFound


def match_with_stats(pattern: str) -> Iterator[tuple[str, int, float, str]]:
    """(path, size in bytes, modification time, version) of each file matching a glob, as listed; errors (a
    bucket that does not exist, no credentials) propagate. The version is the object generation on gs:// (it
    changes with every write), '' elsewhere. On gs:// the listing streams, page by page."""
    if pattern.startswith("gs://"):
        return _match_gcs_with_generations(pattern)
    return iter(sorted((m.path, m.size_in_bytes, m.last_updated_in_seconds, "")
                       for m in FileSystems.match([pattern])[0].metadata_list))


def _match_gcs_with_generations(pattern: str) -> Iterator[tuple[str, int, float, str]]:
    """One listing of the prefix before the pattern's first wildcard, filtered by Beam's own glob rules."""
    import re

    from apache_beam.io.filesystem import FileSystem

    bucket, _, name_pattern = pattern[len("gs://"):].partition("/")
    prefix = re.split(r"[*?\[]", name_pattern, maxsplit=1)[0]
    wanted = re.compile(FileSystem.translate_pattern(pattern))
    for blob in gcs_client().list_blobs(bucket, prefix=prefix):
        path = f"gs://{bucket}/{blob.name}"
        if wanted.match(path) and not blob.name.endswith("/"):
            yield (path, int(blob.size or 0), blob.updated.timestamp() if blob.updated else 0.0,
                   str(blob.generation or ""))


def gcs_client():
    """The google-cloud-storage client Beam's own GCS filesystem uses (its credentials and retries)."""
    from apache_beam.io.gcp import gcsio

    return gcsio.GcsIO().client


def files_under(folder: str) -> list[str]:
    """Every file under `folder`, sorted."""
    return sorted(iter_files_under(folder))


def iter_files_under(folder: str) -> Iterator[str]:
    """Every file under `folder`, as found (locally without holding the whole list)."""
    if not is_remote(folder):
        return (os.path.join(d, name) for d, _, names in os.walk(folder) for name in names)
    return iter(match(folder.rstrip("/") + "/**"))


def open_read(path: str):
    return FileSystems.open(path, compression_type=_RAW)


def open_write(path: str, mime_type: str = "application/octet-stream"):
    """A write channel; local parent folders are made as needed."""
    return FileSystems.create(path, mime_type=mime_type, compression_type=_RAW)


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def write_bytes(path: str, data: bytes, mime_type: str = "application/octet-stream") -> None:
    with open_write(path, mime_type) as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"), "text/plain")


def json_text(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def write_json(path: str, value: Any) -> None:
    write_text(path, json_text(value))


def makedirs(path: str) -> None:
    """Local folders only: object stores have none."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def delete(paths: Sequence[str]) -> None:
    """Delete the files (or local folders) that exist among `paths`."""
    existing = [p for p in paths if exists(p)]
    if existing:
        FileSystems.delete(existing)


def remove_tree(path: str) -> None:
    """Remove a local file or folder, or on gs:// the object `path` and every object under it as a prefix."""
    if is_remote(path):
        delete([path, *files_under(path)])
    elif os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def copy_file(source: str, destination: str) -> None:
    """Copy one file, across filesystems too (local to gs:// and back)."""
    with open_read(source) as src, open_write(destination) as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)


def move(sources: Sequence[str], destinations: Sequence[str]) -> None:
    """Move files to new names, replacing what is there: a rename on one filesystem, else copy and delete."""
    sources, destinations = list(sources), list(destinations)
    if not sources:
        return
    delete(destinations)
    same = [(s, d) for s, d in zip(sources, destinations) if is_remote(s) == is_remote(d)]
    for folder in sorted({dirname(d) for _, d in same if not is_remote(d)}):
        os.makedirs(folder, exist_ok=True)
    if same:
        FileSystems.rename([s for s, _ in same], [d for _, d in same])
    for source, destination in zip(sources, destinations):
        if is_remote(source) != is_remote(destination):
            copy_file(source, destination)
            delete([source])


@contextlib.contextmanager
def local_copy(path: str, suffix: str | None = None) -> Iterator[str]:
    """A local path holding `path`'s content for the duration of the block (`path` itself when local)."""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="local-copy-") as scratch:
        local = os.path.join(scratch, "file" + (suffix if suffix is not None else posixpath.splitext(path)[1]))
        copy_file(path, local)
        yield local
