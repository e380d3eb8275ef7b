"""`mem://`, an in-memory object store for Beam's FileSystems: it stands in for gs:// in unit tests.

Like an object store it has no folders, only names with slashes; an object appears whole when its writer
closes. Importing this module registers the scheme (Beam finds FileSystem subclasses itself).
"""

from __future__ import annotations

import io
import time

from apache_beam.io.filesystem import BeamIOError, FileMetadata, FileSystem

OBJECTS: dict[str, tuple[bytes, float]] = {}  # path -> (content, time written)


class _Writer(io.BytesIO):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def close(self):
        if not self.closed:
            OBJECTS[self.path] = (self.getvalue(), time.time())
        super().close()


class MemoryFileSystem(FileSystem):
    @classmethod
    def scheme(cls):
        return "mem"

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path):
        head, _, tail = path.rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        for path, (content, written) in sorted(OBJECTS.items()):
            if path.startswith(dir_or_prefix):
                yield FileMetadata(path, len(content), written)

    def create(self, path, mime_type="application/octet-stream", compression_type=None):
        return _Writer(path)

    def open(self, path, mime_type="application/octet-stream", compression_type=None):
        if path not in OBJECTS:
            raise BeamIOError("open failed", {path: FileNotFoundError(path)})
        return io.BytesIO(OBJECTS[path][0])

    def copy(self, source_file_names, destination_file_names):
        for source, destination in zip(source_file_names, destination_file_names):
            OBJECTS[destination] = OBJECTS[source]

    def rename(self, source_file_names, destination_file_names):
        for source, destination in zip(source_file_names, destination_file_names):
            OBJECTS[destination] = OBJECTS.pop(source)

    def exists(self, path):
        return path in OBJECTS

    def size(self, path):
        return len(OBJECTS[path][0])

    def last_updated(self, path):
        return OBJECTS[path][1]

    def metadata(self, path):
        content, written = OBJECTS[path]
        return FileMetadata(path, len(content), written)

    def delete(self, paths):
        missing = {p: FileNotFoundError(p) for p in paths if p not in OBJECTS and not any(
            name.startswith(p.rstrip("/") + "/") for name in OBJECTS)}
        for path in paths:
            OBJECTS.pop(path, None)
            for name in [n for n in OBJECTS if n.startswith(path.rstrip("/") + "/")]:
                del OBJECTS[name]
        if missing:
            raise BeamIOError("delete failed", missing)


class StorageError(Exception):
    """An error as google-cloud-storage raises them: with the HTTP status as `code` (404 is NotFound)."""

    def __init__(self, code: int):
        super().__init__(f"{code} from storage")
        self.code = code


def listing_fails(error: Exception):
    """A `MemoryFileSystem._list` that raises `error`, as Cloud Storage's does on an expired token or a 503:
    `monkeypatch.setattr(memfs.MemoryFileSystem, "_list", listing_fails(...))`."""

    def _list(self, prefix):
        raise error
        yield  # a generator, as FileSystem._list is

    return _list
