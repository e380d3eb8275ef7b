"""Text outputs of any size that must end as one sorted file (labels.csv, failures.csv).

Workers write them in parallel as sorted shards (`WriteSortedShards`: rows spread over shards by a hash of
their key, each shard sorted on its worker), and publishing merges the shards into the one file a user
reads (`merge_sorted_shards`), streaming: no process holds more than one shard's rows.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
from typing import Callable, Iterable, Iterator

import apache_beam as beam

from common import fs

DEFAULT_SHARDS = 16


def csv_line(values) -> str:
    """One CSV row as a line."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def csv_key(line: str) -> str:
    """The first field of a CSV line (the video id, by which labels.csv and failures.csv are sorted)."""
    return next(csv.reader([line]))[0]


def shard_of(key: str, shards: int) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=4).digest(), "big") % shards


def _write_shard(item, prefix: str, shards: int) -> tuple[str, int]:
    index, keyed_lines = item
    lines = [line for _, line in sorted(keyed_lines)]
    path = f"{prefix}-{index:05d}-of-{shards:05d}.txt"
    fs.write_text(path, "".join(lines))
    return path, len(lines)


class WriteSortedShards(beam.PTransform):
    """PCollection[(sort key, line ending in a newline)] -> PCollection[(shard path, lines in it)]; each
    shard's lines are sorted by key. Empty shards are not written."""

    def __init__(self, prefix: str, shards: int = DEFAULT_SHARDS):
        super().__init__()
        self._prefix, self._shards = prefix, shards

    def expand(self, keyed_lines):
        shards = self._shards
        return (
            keyed_lines
            | "ToShard" >> beam.Map(lambda kv: (shard_of(kv[0], shards), kv))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShard" >> beam.Map(_write_shard, self._prefix, shards)
        )


def _lines(path: str) -> Iterator[str]:
    with fs.open_read(path) as raw:
        yield from io.TextIOWrapper(raw, encoding="utf-8", newline="")


def merge_sorted_shards(paths: Iterable[str], destination: str, key: Callable[[str], str], header: str = "") -> int:
    """Merge sorted shard files into `destination` (header first), streaming; returns the lines written."""
    count = 0
    with fs.open_write(destination, "text/plain") as raw:
        out = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        out.write(header)
        for line in heapq.merge(*(_lines(path) for path in sorted(paths)), key=key):
            out.write(line)
            count += 1
        out.flush()
        out.detach()
    return count
