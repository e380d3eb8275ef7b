"""The videos a re-run carries over, from the previous run's files into this run's, when the run publishes.

The launcher's plan (`beam_jobs.plan`) lists the index entries of the videos carried over, in id order. The
publishing step walks the previous labels.csv (and segments.csv and events.csv, with --segments) beside that
list and writes the carried records as one more sorted shard of each file, which the usual merge
(`sinks.merge_sorted_shards`) joins with the shards the pipeline wrote: streaming, one record at a time,
whatever the number of videos. Rows of a previous run that decided labels otherwise (another --min-confidence
or --top-k) are decided again on the way, their events made again from their segments and their WebVTT tracks
written again. What the report needs of the carried rows (totals, the least confident) is folded in too.

The carried shards are written once: a retried publishing step finds them with their result file
(`carried.json`, written last) and reads nothing of the previous run again, which may be gone by then.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
from typing import Iterable, Iterator

from beam_jobs import events as ev
from beam_jobs import report
from beam_jobs.incremental import parse_row
from beam_jobs.label_rows import LABELS_FILE, RowFormat, redecide, write_per_video
from beam_jobs.plan import CARRIED_FILE, csv_id_of, video_id_of
from beam_jobs.segments import EVENTS_FILE, SEGMENTS_FILE, segment_columns
from beam_jobs.sinks import csv_line, csv_records, csv_values, plain_cell
from common import fs

CARRIED_DIR = "carried"  # under the staging's _parts
DONE_FILE = "carried.json"


def _ids(path: str) -> Iterator[str]:
    with fs.open_read(path) as raw:
        for line in io.TextIOWrapper(raw, encoding="utf-8", newline=""):
            yield video_id_of(line)


def event_id_of(record: str) -> str:
    """The video id of an events.csv record (a spreadsheet-safe cell there)."""
    return plain_cell(csv_values(record)[0])


def records_of(records: Iterable[str], ids: Iterator[str], id_of=csv_id_of) -> Iterator[tuple[str, str]]:
    """(video id, record) of the id-sorted `records` whose id is one of the sorted `ids` (several records a
    video, for segments and events)."""
    wanted = next(ids, None)
    for record in records:
        video_id = id_of(record)
        while wanted is not None and wanted < video_id:
            wanted = next(ids, None)
        if wanted is None:
            return
        if wanted == video_id:
            yield video_id, record


class _Summary:
    """What report.SummarizeForReport computes, over rows handed one at a time."""

    def __init__(self):
        self.videos, self.labels, self.histogram, self.shown = 0, {}, [0] * report.HISTOGRAM_BINS, []

    def add(self, row: dict) -> None:
        confidence = float(row["confidence"])
        self.videos += 1
        self.labels[row["label"]] = self.labels.get(row["label"], 0) + 1
        self.histogram[report.confidence_bin(confidence)] += 1
        self.shown.append(row)
        if len(self.shown) >= 4 * report.SHOWN_VIDEOS:
            self.shown = _least_confident(self.shown)

    def result(self) -> dict:
        return {"videos": self.videos, "label_counts": sorted(self.labels.items()), "histogram": self.histogram,
                "shown_rows": _least_confident(self.shown)}


def _least_confident(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (float(r["confidence"]), r["video_id"]))[:report.SHOWN_VIDEOS]


def fold_summary(summary: dict, carried: dict) -> dict:
    """The pipeline's report summary (of the rows it made) with the carried rows' folded in."""
    labels = dict(summary["label_counts"])
    for label, count in carried["label_counts"]:
        labels[label] = labels.get(label, 0) + count
    histogram = summary["histogram"] if summary["videos"] else [0] * report.HISTOGRAM_BINS
    return dict(summary, videos=summary["videos"] + carried["videos"], label_counts=sorted(labels.items()),
                histogram=tuple(a + b for a, b in zip(histogram, carried["histogram"])),
                shown_rows=_least_confident([*summary["shown_rows"], *carried["shown_rows"]]))


@dataclasses.dataclass(frozen=True)
class CarryOver:
    """The previous run's rows of the videos carried over, as publishing writes them into this run's files.

    `columns` are labels.csv's (the same model: the previous run's too); `previous` is the PreviousRun;
    `fmt` this run's RowFormat, `redo` whether carried rows are decided again; `window_s` the windows' length
    with --segments (0 without); `per_video` whether carried rows get per-video files (the previous run wrote
    none)."""

    output: str
    plan_dir: str
    count: int
    columns: tuple[str, ...]
    previous_columns: tuple[str, ...]
    multiline: tuple[str, ...]
    fmt: RowFormat
    redo: bool = False
    window_s: float = 0.0
    segment_columns: tuple[str, ...] = ()
    per_video: bool = False

    def write(self, parts: str, staging: str) -> dict:
        """Write the carried shards under `parts`/carried (labels, and with --segments segments and events;
        tracks of rows decided again under `staging`), once; returns their paths and counts and the carried
        rows' report summary."""
        folder = fs.join(parts, CARRIED_DIR)
        done = fs.join(folder, DONE_FILE)
        if fs.exists(done):
            return fs.read_json(done)
        result = {"index": fs.join(self.plan_dir, CARRIED_FILE), "labels": fs.join(folder, "labels.txt"),
                  "per_video": 0, "tracks": 0}
        summary = _Summary()
        with fs.open_write(result["labels"], "text/plain") as raw:
            out = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            for _, record in records_of(csv_records(fs.join(self.output, LABELS_FILE), header=True), _ids(result["index"])):
                row = parse_row(record, self.previous_columns)[1]
                if self.redo:
                    row = redecide(row, self.fmt)
                    record = csv_line([row.get(c, "") for c in self.columns])
                out.write(record)
                summary.add(row)
                if self.per_video:
                    write_per_video(row, staging, self.fmt.labels)
                    result["per_video"] += 1
            out.flush()
            out.detach()
        if summary.videos != self.count:
            raise RuntimeError(f"accounting error: {self.count} videos carried over, {summary.videos} of them found "
                               f"in the previous {LABELS_FILE}")
        result["rows"], result["summary"] = summary.videos, summary.result()
        if self.window_s:
            result.update(self._write_segments(folder, staging, result["index"]))
        fs.write_json(done, result)
        return result

    def _write_segments(self, folder: str, staging: str, index: str) -> dict:
        found = {"segments": fs.join(folder, "segments.txt"), "events": fs.join(folder, "events.txt"),
                 "segment_count": 0, "event_count": 0, "segment_videos": 0, "tracks": 0}
        columns = tuple(segment_columns(self.fmt.labels))
        previous = records_of(csv_records(fs.join(self.output, SEGMENTS_FILE), header=True), _ids(index))
        with fs.open_write(found["segments"], "text/plain") as seg_raw, \
                fs.open_write(found["events"], "text/plain") as event_raw:
            segments_out = io.TextIOWrapper(seg_raw, encoding="utf-8", newline="")
            events_out = io.TextIOWrapper(event_raw, encoding="utf-8", newline="")
            if not self.redo:  # as they were, and so are the events and tracks
                for video_id, group in itertools.groupby(previous, key=lambda pair: pair[0]):
                    found["segment_videos"] += 1
                    for _, record in group:
                        segments_out.write(record)
                        found["segment_count"] += 1
                for _, record in records_of(csv_records(fs.join(self.output, EVENTS_FILE), header=True), _ids(index),
                                             event_id_of):
                    events_out.write(record)
                    found["event_count"] += 1
            else:
                for video_id, group in itertools.groupby(previous, key=lambda pair: pair[0]):
                    rows = sorted((redecide(parse_row(record, self.segment_columns)[1], self.fmt) for _, record in group),
                                  key=lambda s: int(s["segment"]))
                    events = ev.merge_events(ev.window_spans(rows, self.window_s))
                    segments_out.writelines(csv_line([s.get(c, "") for c in columns]) for s in rows)
                    events_out.writelines(csv_line(ev.event_values(video_id, e)) for e in events)
                    fs.write_text(fs.join(staging, ev.track_path(video_id)), ev.webvtt(events))
                    found["segment_videos"] += 1
                    found["segment_count"] += len(rows)
                    found["event_count"] += len(events)
                    found["tracks"] += 1
            for out in (segments_out, events_out):
                out.flush()
                out.detach()
        return found


def timelines(segments_shard: str, rows: list[dict], columns: tuple[str, ...], window_s: float) -> list[dict]:
    """`rows` (the report's shown rows) with the timeline of each carried one (those without one), from the
    carried segments shard."""
    wanted = sorted({row["video_id"] for row in rows if report.TIMELINE not in row})
    if not wanted:
        return rows
    found: dict[str, list] = {}
    for video_id, group in itertools.groupby(records_of(csv_records(segments_shard), iter(wanted)),
                                             key=lambda pair: pair[0]):
        segments = sorted((parse_row(record, columns)[1] for _, record in group), key=lambda s: int(s["segment"]))
        found[video_id] = ev.timeline_blocks(ev.window_spans(segments, window_s))
    return [row if report.TIMELINE in row else dict(row, **{report.TIMELINE: found.get(row["video_id"], [])})
            for row in rows]
