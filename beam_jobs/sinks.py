"""Text outputs of any size that must end as one sorted file (labels.csv, failures.csv), and the CSV records
they are made of.

Workers write them in parallel as sorted shards (`WriteSortedShards`: rows spread over shards by a hash of
their key, each shard sorted on its worker), and publishing merges the shards into the one file a user
reads (`merge_sorted_shards`), streaming: no process holds more than one shard's rows.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
import unicodedata
from typing import Callable, Iterable, Iterator, NamedTuple

import apache_beam as beam

from common import fs

DEFAULT_SHARDS = 16


def _has_control(value: str) -> bool:
    return any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in value)


def csv_line(values) -> str:
    """One CSV record, ending in a newline. Fields with a comma, a quote or a line break are quoted, as the csv
    module does; a record with any control character (CR, tab, NUL, ...) has every field quoted, so that no
    reader splits or trims it. `csv_values` reads it back exactly."""
    values = [str(value) for value in values]
    buffer = io.StringIO()
    quoting = csv.QUOTE_ALL if any(map(_has_control, values)) else csv.QUOTE_MINIMAL
    csv.writer(buffer, lineterminator="\n", quoting=quoting).writerow(values)
    return buffer.getvalue()


def csv_values(record: str) -> list[str]:
    """The fields of one CSV record (which may span lines inside quotes)."""
    return next(csv.reader(io.StringIO(record, newline="")), [])


def csv_key(line: str) -> str:
    """The first field of a CSV record (the video id, by which labels.csv and failures.csv are sorted)."""
    return csv_values(line)[0]


def iter_csv_records(lines: Iterable[str]) -> Iterator[str]:
    """Physical lines -> CSV records, each as written: a quoted field's line breaks stay inside its record. A
    record is complete when its quotes balance (quotes in a field are doubled)."""
    record, quotes = "", 0
    for line in lines:
        record += line
        quotes += line.count('"')
        if quotes % 2 == 0:
            yield record
            record, quotes = "", 0
    if record:
        yield record


SPREADSHEET_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text, never runs as a formula (CSV injection, as OWASP describes
    it): a value starting with `=`, `+`, `-`, `@`, tab or carriage return gets a `'` in front, and so does
    one starting with `'`, so that `plain_cell` gives every value back exactly."""
    return "'" + text if text.startswith(SPREADSHEET_TRIGGERS) else text


def plain_cell(cell: str) -> str:
    """The value a `spreadsheet_cell` stands for."""
    return cell[1:] if cell.startswith("'") else cell


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


def csv_records(path: str, header: bool = False) -> Iterator[str]:
    """The CSV records of a file, streaming (a record may span lines); those after its header when `header`."""
    with fs.open_read(path) as raw:
        records = iter_csv_records(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        if header:
            next(records, None)
        yield from records


def json_lines(path: str) -> Iterator[str]:
    """The lines of a file of JSON lines (a JSON value holds no raw line break)."""
    with fs.open_read(path) as raw:
        yield from io.TextIOWrapper(raw, encoding="utf-8", newline="")


class Merged(NamedTuple):
    records: int  # written, the header not counted
    multiline: int  # of them with a line break inside a quoted field


def merge_sorted_shards(paths: Iterable[str], destination: str, key: Callable[[str], str], header: str = "",
                        records: Callable[[str], Iterator[str]] = csv_records) -> Merged:
    """Merge sorted shard files of CSV records (or other `records` of a file, such as `json_lines`) into
    `destination` (header first), streaming; a record whose quoted field holds a line break moves whole."""
    count = multiline = 0
    with fs.open_write(destination, "text/plain") as raw:
        out = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        out.write(header)
        for record in heapq.merge(*(records(path) for path in sorted(paths)), key=key):
            out.write(record)
            count += 1
            multiline += "\n" in record[:-1] or "\r" in record
        out.flush()
        out.detach()
    return Merged(count, multiline)
