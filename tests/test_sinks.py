"""beam_jobs.sinks: CSV records that read back exactly whatever their fields hold, sorted shards merged into one
file a whole record at a time, and the spreadsheet-safe cells of events.csv."""

from __future__ import annotations

import csv
import io

import pytest

from beam_jobs.events import EVENT_COLUMNS, Event, event_line_key, event_sort_key, event_values
from beam_jobs.segments import segment_line_key, segment_sort_key
from beam_jobs.sinks import (
    csv_key,
    csv_line,
    csv_values,
    iter_csv_records,
    merge_sorted_shards,
    plain_cell,
    spreadsheet_cell,
)
from common import fs

ODD = ["plain.avi", "new\nline.avi", "carriage\rreturn.avi", "crlf\r\n.avi", "tab\there.avi", 'say "hi", twice.avi',
       "nul\x00.avi", "sep\u2028.avi", "=HYPERLINK(\"http:\"&A1,\"x\").avi", "'quoted.avi", ""]


@pytest.mark.parametrize("value", ODD)
def test_a_csv_line_reads_back_exactly(value):
    line = csv_line([value, "x,y", 'q"', "3"])
    assert line.endswith("\n") and csv_values(line) == [value, "x,y", 'q"', "3"] and csv_key(line) == value
    assert list(csv.reader(io.StringIO(line, newline=""))) == [[value, "x,y", 'q"', "3"]]


def test_a_record_with_any_control_character_has_every_field_quoted():
    assert csv_line(["a\rb", "1"]) == '"a\rb","1"\n'  # the csv module alone leaves a lone CR unquoted
    assert csv_line(["a\tb", "1"]) == '"a\tb","1"\n'
    assert csv_line(["a\x00b"]) == '"a\x00b"\n'
    assert csv_line(["a,b", "plain"]) == '"a,b",plain\n'  # no control character: quoted only where needed
    assert csv_line(["a", "1.5"]) == "a,1.5\n"


def test_records_are_read_whole_across_line_breaks():
    text = "".join(csv_line([value, "x"]) for value in ODD)
    lines = io.StringIO(text, newline="").readlines()  # as a file is read: CR, LF and CRLF end physical lines
    assert len(lines) > len(ODD)
    assert [csv_values(record) for record in iter_csv_records(lines)] == [[value, "x"] for value in ODD]


@pytest.mark.parametrize("where", ["local", "mem"])
def test_merging_shards_keeps_records_whole_and_sorted(where, tmp_path, bucket):
    root = str(tmp_path) if where == "local" else bucket
    values = sorted(ODD)
    shards = [fs.join(root, f"part-{i}.txt") for i in range(3)]
    for i, path in enumerate(shards):  # each shard sorted, as WriteSortedShards writes them
        fs.write_text(path, "".join(csv_line([value, str(n)]) for n, value in enumerate(values) if n % 3 == i))
    merged = merge_sorted_shards(shards, fs.join(root, "all.csv"), csv_key, csv_line(["video_id", "n"]))
    assert merged.records == len(values) and merged.multiline == 3  # LF, CR and CRLF
    rows = list(csv.DictReader(io.StringIO(fs.read_text(fs.join(root, "all.csv")), newline="")))
    assert [(row["video_id"], int(row["n"])) for row in rows] == [(value, n) for n, value in enumerate(values)]


def test_segment_and_event_keys_of_records_with_line_breaks():
    line = csv_line(["a\nb.avi", "7", "0.000", "1.000"])
    assert segment_line_key(line) == segment_sort_key("a\nb.avi", 7)
    values = event_values("a\nb.avi", Event("cat", 1.5, 2.5, 0.75, 3))
    assert event_line_key(csv_line(values)) == event_sort_key("a\nb.avi", 1.5)
    assert dict(zip(EVENT_COLUMNS, values))["start_s"] == "1.500"


@pytest.mark.parametrize("value, cell", [
    ("=HYPERLINK(\"http:\"&A1,\"x\").avi", "'=HYPERLINK(\"http:\"&A1,\"x\").avi"),
    ("+1.avi", "'+1.avi"), ("-1.avi", "'-1.avi"), ("@SUM(A1).avi", "'@SUM(A1).avi"), ("\tx.avi", "'\tx.avi"),
    ("\rx.avi", "'\rx.avi"), ("'x.avi", "''x.avi"), ("x=1.avi", "x=1.avi"), ("plain.avi", "plain.avi"), ("", ""),
])
def test_spreadsheet_cells_never_start_a_formula_and_give_the_value_back(value, cell):
    assert spreadsheet_cell(value) == cell and plain_cell(cell) == value


def test_events_csv_cells_are_spreadsheet_safe_and_sort_by_the_real_id():
    formula = "=HYPERLINK(\"http:\"&A1,\"x\").avi"
    values = event_values(formula, Event("-label", 0.0, 1.0, 0.5, 1))
    assert values[:2] == ["'" + formula, "'-label"]
    assert event_line_key(csv_line(values)) == event_sort_key(formula, 0.0)
