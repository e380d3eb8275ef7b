"""Streams of text lines in key order, in bounded memory whatever their length: an external merge sort, and
the walk that lines several key-sorted streams up side by side.

    lines = sorted_lines(open("listing.jsonl"), key=video_id_of, scratch="/tmp/x", budget_bytes=64 << 20)
    for key, (listed, indexed) in align([keyed(lines, video_id_of), keyed(index, video_id_of)]): ...

`sorted_lines` holds at most about `budget_bytes` of lines at a time: longer input is cut into sorted runs
spilled to files under `scratch`, merged (at most `FAN_IN` runs at once, in several passes if need be). A
sort is stable, and a stream found already in order is passed through without a copy (`sorted_file`).
Each line is one record: it ends in a newline and holds no other (JSON lines, not CSV with line breaks).
"""

from __future__ import annotations

import heapq
import itertools
import os
import tempfile
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

DEFAULT_BUDGET_BYTES = 64 << 20
FAN_IN = 64  # runs merged at once: open files
_LINE_OVERHEAD = 100  # bytes a line costs in memory beyond its characters (the str object, the list slot)

T = TypeVar("T")


def _spill(lines: list[str], scratch: str) -> str:
    handle, path = tempfile.mkstemp(prefix="run-", suffix=".txt", dir=scratch)
    with os.fdopen(handle, "w", encoding="utf-8", newline="") as f:
        f.writelines(lines)
    return path


def _read_run(path: str) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            yield from f
    finally:
        os.unlink(path)


def _merge_runs(runs: list[str], key: Callable[[str], object], scratch: str) -> Iterator[str]:
    """The runs merged in order; more than FAN_IN are first merged FAN_IN consecutive runs at a time into
    longer runs (consecutive, so that the sort stays stable)."""
    while len(runs) > FAN_IN:
        merged = []
        for start in range(0, len(runs), FAN_IN):
            group = runs[start:start + FAN_IN]
            handle, path = tempfile.mkstemp(prefix="run-", suffix=".txt", dir=scratch)
            with os.fdopen(handle, "w", encoding="utf-8", newline="") as f:
                f.writelines(heapq.merge(*map(_read_run, group), key=key))
            merged.append(path)
        runs = merged
    return heapq.merge(*map(_read_run, runs), key=key)


def sorted_lines(lines: Iterable[str], key: Callable[[str], object], scratch: str,
                 budget_bytes: int = DEFAULT_BUDGET_BYTES) -> Iterator[str]:
    """`lines` in `key` order (stable), holding about `budget_bytes` of them in memory at most; the runs that
    do not fit are spilled under `scratch` (removed as they are read)."""
    chunk: list[str] = []
    size, runs = 0, []
    for line in lines:
        chunk.append(line)
        size += len(line) + _LINE_OVERHEAD
        if size >= budget_bytes:
            chunk.sort(key=key)
            runs.append(_spill(chunk, scratch))
            chunk, size = [], 0
    chunk.sort(key=key)
    if not runs:
        yield from chunk
        return
    if chunk:
        runs.append(_spill(chunk, scratch))
    del chunk
    yield from _merge_runs(runs, key, scratch)


def in_order(lines: Iterable[str], key: Callable[[str], object]) -> bool:
    """Whether `lines` come in `key` order."""
    previous = None
    for line in lines:
        current = key(line)
        if previous is not None and current < previous:
            return False
        previous = current
    return True


def sorted_file(path: str, key: Callable[[str], object], scratch: str,
                budget_bytes: int = DEFAULT_BUDGET_BYTES, opener: Callable[[str], Iterable[str]] | None = None
                ) -> Iterator[str]:
    """The lines of the file `path` in `key` order: read as they are when they are in order already (one
    pass to check), else sorted by `sorted_lines`. `opener(path)` gives its lines (a local file by default)."""
    def read() -> Iterator[str]:
        if opener is not None:
            yield from opener(path)
            return
        with open(path, encoding="utf-8", newline="") as f:
            yield from f

    if in_order(read(), key):
        yield from read()
    else:
        yield from sorted_lines(read(), key, scratch, budget_bytes)


def keyed(items: Iterable[T], key: Callable[[T], str]) -> Iterator[tuple[str, T]]:
    """(key, item) pairs; a stream that goes back in key order is a programming error (RuntimeError)."""
    previous = None
    for item in items:
        current = key(item)
        if previous is not None and current < previous:
            raise RuntimeError(f"a stream expected in key order is not: {current!r} after {previous!r}")
        previous = current
        yield current, item


def _tagged(stream: Iterable[tuple[str, T]], number: int) -> Iterator[tuple[str, int, T]]:
    for key, item in stream:
        yield key, number, item


def align(streams: Sequence[Iterable[tuple[str, T]]]) -> Iterator[tuple[str, list[T | None]]]:
    """Key-sorted streams of (key, item) side by side: for each key in any of them, in order, the item each
    stream has under it (its first, when it has several), None where it has none. Streaming."""
    tagged = [_tagged(stream, i) for i, stream in enumerate(streams)]
    merged = heapq.merge(*tagged, key=lambda t: (t[0], t[1]))
    for key, group in itertools.groupby(merged, key=lambda t: t[0]):
        found: list[T | None] = [None] * len(streams)
        seen = [False] * len(streams)
        for _, i, item in group:
            if not seen[i]:
                found[i], seen[i] = item, True
        yield key, found
