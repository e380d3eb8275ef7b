"""Which files are the input videos, what each is called (its video id), and its label.

Matching runs once, in the launching process, so that a user mistake (a missing path, a glob matching
nothing, a labels CSV naming videos that are not there) stops the job before it starts. The listing streams:
`write_listing` writes one line per video to a file as folders and buckets are listed, holding none of it in
memory, and the pipeline reads that file (nothing per video is in the pipeline graph). A video listed twice
(by overlapping inputs) has one id, and the pipeline keeps one of them.

Video ids are paths relative to the input root, with forward slashes: `Class/v_Class_g01_c01.avi`. With
several inputs the root is their common parent folder, so ids stay distinct; inputs on different
filesystems fall back to full URIs.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import itertools
import json
import os
import posixpath
import re
from typing import Iterable, Iterator

from common import fs
from common.errors import UserError
from common.fs import is_remote
from video.frames import DEFAULT_VIDEO_EXTENSIONS

_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclasses.dataclass(frozen=True)
class VideoRef:
    """One input video: its id, where it is, its label ('' when unlabelled), and what the listing saw: size,
    modification time and a version that changes whenever the content may have (locally the inode and the
    change time, which no tool can set back; on gs:// the object generation)."""

    video_id: str
    uri: str
    label: str = ""
    size: int = -1
    mtime: float = 0.0
    version: str = ""


def _glob_root(pattern: str) -> str:
    """The folder part of a pattern before its first wildcard."""
    match = _GLOB_CHARS.search(pattern)
    if not match:
        return pattern
    head = pattern[: match.start()]
    return head[: head.rfind("/") + 1] if "/" in head else ""


def _walk_files(root: str) -> Iterator[str]:
    """Every file under `root`, following links to folders but entering each folder once, so a link that
    points back up the tree neither loops nor lists the same videos under a second id."""
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs.sort()
        yield from (os.path.join(folder, name) for name in sorted(files))


Listing = tuple[str, int, float, str]  # (path, size, modification time, version)


def _list_local(pattern: str, extensions: tuple[str, ...]) -> tuple[str, Iterator[Listing]]:
    """(root, (path, size, mtime, version) of each video) for a local directory, glob or file, listed lazily.
    Broken links are kept (size -1)."""
    if os.path.isdir(pattern):
        root = os.path.abspath(pattern)
        paths = _walk_files(root)
    elif _GLOB_CHARS.search(pattern):
        root = os.path.abspath(_glob_root(pattern) or ".")
        paths = (os.path.abspath(p) for p in glob.iglob(pattern, recursive=True) if not os.path.isdir(p))
    elif os.path.lexists(pattern):
        path = os.path.abspath(pattern)
        root, paths = os.path.dirname(path), iter([path])
    else:
        raise UserError(f"input {pattern} does not exist")
    return root, (_stat(path) for path in paths if path.lower().endswith(extensions))


def _stat(path: str) -> Listing:
    try:
        stat = os.stat(path)
    except OSError:  # a broken symlink: listed, and reported as a failure when read
        return path, -1, 0.0, ""
    return path, stat.st_size, stat.st_mtime, f"{stat.st_dev}:{stat.st_ino}:{stat.st_ctime_ns}"


def _list_remote(pattern: str, extensions: tuple[str, ...]) -> tuple[str, Iterator[Listing]]:
    if not _GLOB_CHARS.search(pattern):
        if fs.exists(pattern) and not pattern.endswith("/"):
            root, full = posixpath.dirname(pattern), pattern
        else:
            root = pattern.rstrip("/")
            full = root + "/**"
    else:
        root, full = _glob_root(pattern).rstrip("/"), pattern
    try:
        listed = fs.match_with_stats(full)
        first = next(listed, None)
    except Exception as exc:  # BeamIOError, auth and bucket errors
        raise UserError(f"cannot list input {pattern}: {exc}") from None
    found = itertools.chain([first] if first else [], listed)
    return root, (entry for entry in found if entry[0].lower().endswith(extensions))


def _common_root(roots: list[str]) -> str | None:
    if any(is_remote(r) for r in roots):
        schemes = {r.split("://", 1)[0] + "://" + r.split("://", 1)[1].split("/", 1)[0] for r in roots}
        if len(schemes) > 1 or not all(is_remote(r) for r in roots):
            return None
        return posixpath.commonpath([r.rstrip("/") for r in roots]) if len(roots) > 1 else roots[0].rstrip("/")
    return os.path.commonpath(roots)


def iter_videos(inputs: list[str], extensions: tuple[str, ...] = DEFAULT_VIDEO_EXTENSIONS) -> Iterator[VideoRef]:
    """Every video under `inputs` (directories, globs, files; local or remote), as the listing finds them.

    A directory is searched recursively. Only names ending in one of `extensions` (case-insensitive)
    count as videos. An input that matches no video is a UserError (raised once its listing is done)."""
    extensions = tuple(e.lower() for e in extensions)
    listings = [(pattern, *(_list_remote if is_remote(pattern) else _list_local)(pattern, extensions))
                for pattern in inputs]
    common = listings[0][1] if len(listings) == 1 else _common_root([root for _, root, _ in listings])
    for pattern, _, found in listings:
        count = 0
        for path, size, mtime, version in found:
            count += 1
            if common is None:
                video_id = path
            elif is_remote(path):
                video_id = path[len(common) :].lstrip("/")
            else:
                video_id = os.path.relpath(path, common).replace(os.sep, "/")
            uri = path if is_remote(path) else os.path.abspath(path)
            yield VideoRef(video_id=video_id, uri=uri, size=size, mtime=mtime, version=version)
        if not count:
            raise UserError(f"input {pattern} matches no video files (extensions: {' '.join(extensions)})")


def match_videos(inputs: list[str], extensions: tuple[str, ...] = DEFAULT_VIDEO_EXTENSIONS) -> list[VideoRef]:
    """Every video under `inputs`, one per id, sorted by id (held in memory: see `write_listing` for large
    inputs)."""
    return sorted({ref.video_id: ref for ref in iter_videos(inputs, extensions)}.values(), key=lambda r: r.video_id)


def ref_line(ref: VideoRef) -> str:
    return json.dumps(dataclasses.asdict(ref), ensure_ascii=False) + "\n"


def parse_ref(line: str) -> VideoRef:
    return VideoRef(**json.loads(line))


def write_listing(refs: Iterable[VideoRef], path: str) -> int:
    """Write `refs` to the local file `path` as they come, one JSON line each; returns how many."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for ref in refs:
            f.write(ref_line(ref))
            count += 1
    return count


def label_from_folder(ref: VideoRef) -> str:
    """UCF101 layout: the label is the name of the folder holding the video (`Class/v_Class_g01.avi`)."""
    parent = posixpath.dirname(ref.uri.replace(os.sep, "/"))
    return posixpath.basename(parent)


def read_labels_csv(path: str) -> dict[str, str]:
    """`video_name,tag` rows (UCF101 top-5's train.csv/test.csv) -> {video_name: tag}."""
    if not fs.exists(path):
        raise UserError(f"labels CSV {path} does not exist")
    text = fs.read_text(path)
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    if set(columns) != {"video_name", "tag"}:
        raise UserError(f"labels CSV {path} must have exactly the columns video_name,tag; found {','.join(columns) or 'none'}")
    labels = {}
    for line, row in enumerate(reader, start=2):
        name, tag = (row["video_name"] or "").strip(), (row["tag"] or "").strip()
        if not name or not tag:
            raise UserError(f"labels CSV {path} line {line}: empty video_name or tag")
        if labels.get(name, tag) != tag:
            raise UserError(f"labels CSV {path} gives {name} two tags: {labels[name]} and {tag}")
        labels[name] = tag
    if not labels:
        raise UserError(f"labels CSV {path} has no rows")
    return labels


def attach_labels(
    refs: list[VideoRef], mode: str, labels_csv: dict[str, str] | None = None
) -> tuple[list[VideoRef], list[tuple[VideoRef, str]]]:
    """Give each video its label; return (labelled videos, [(video, reason)] that could not be labelled).

    `mode` is `folder` (parent folder name), `csv` (`labels_csv` keyed by video id or by file name) or
    `none` (unlabelled inputs). A CSV naming a video that was not matched is a UserError.
    """
    if mode == "none":
        return list(refs), []
    if mode == "folder":
        return [dataclasses.replace(r, label=label_from_folder(r)) for r in refs], []
    assert labels_csv is not None
    by_name: dict[str, list[VideoRef]] = {}
    for ref in refs:
        by_name.setdefault(posixpath.basename(ref.video_id), []).append(ref)
    labelled, unlabelled, used = [], [], set()
    for ref in refs:
        name = posixpath.basename(ref.video_id)
        if ref.video_id in labels_csv:
            key = ref.video_id
        elif name in labels_csv and len(by_name[name]) == 1:
            key = name
        else:
            reason = "not listed in the labels CSV"
            if name in labels_csv:
                reason = f"the labels CSV names {name}, which matches {len(by_name[name])} videos; use the video id {ref.video_id}"
            unlabelled.append((ref, reason))
            continue
        used.add(key)
        labelled.append(dataclasses.replace(ref, label=labels_csv[key]))
    missing = sorted(set(labels_csv) - used - {n for n in labels_csv if n in by_name})
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"the labels CSV names {len(missing)} video(s) not found in the inputs: {shown}")
    return labelled, unlabelled
