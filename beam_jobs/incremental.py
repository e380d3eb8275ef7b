"""Incremental labelling: what a run into the output of a finished earlier run reuses of it.

A video is unchanged when the previous run labelled it with the same model and its size, modification time
and version are the same: its row is carried over without reading it. The version is what a same-size edit
with its modification time put back cannot keep: locally the file's inode and change time (ctime), on gs://
the object's generation (see `beam_jobs.matching`). A video whose listing changed but whose content did not
(same fingerprint) is decoded but skips the model (`SplitKnownContentDoFn`). `--verify` trusts no listing:
every video is read and fingerprinted again. Videos the previous run knew that are no longer listed are
removed (their rows drop out; their per-video files and thumbnails are deleted when the run publishes).

The launcher reads the previous manifest and the header of its labels.csv (`PreviousRun.read`), and of its
segments.csv when it labelled windows (`predict --segments`), then works out which videos are new, changed,
unchanged or removed by walking the listing and the previous index and labels.csv side by side
(`beam_jobs.plan`): the pipeline reads only the new and changed ones (`ReadPlan`), with the previous segments
of those it may find known (`ReadPreviousSegments`); the rows, index entries and segments of the videos
carried over go from the previous files to the new ones when the run publishes (`beam_jobs.carry`). A
previous run that decided labels with another --min-confidence or --top-k (`PreviousRun.decisions`) has its
carried rows and segments decided again (`label_rows.redecide`). CSV files are read in parallel a line at a
time, unless their manifest says a record spans lines (a video id with a line break): then in order
(`ReadCsvRecords`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging

import apache_beam as beam

from beam_jobs.label_rows import LABELS_FILE
from beam_jobs.matching import VideoRef
from beam_jobs.outputs import MANIFEST_FILE
from beam_jobs.segments import SEGMENTS_FILE
from beam_jobs.sinks import csv_records, csv_values
from common import fs
from common.errors import UserError

_LOG = logging.getLogger(__name__)

INDEX_FILE = "index.jsonl"  # the single index file of runs before the index was sharded
INDEX_PREFIX = "index"
INDEX_PATTERN = f"{INDEX_PREFIX}-*-of-*.jsonl"


@dataclasses.dataclass(frozen=True)
class PreviousRun:
    """A finished earlier labelling run in the same output: which model made it, its labels.csv header, the
    index files, whether it wrote per-video files, and the windows it labelled (SegmentOptions.manifest(),
    None without --segments) with its segments.csv header."""

    model_id: str
    columns: tuple[str, ...]
    index_files: tuple[str, ...]
    per_video: bool
    segments: dict | None = None
    segment_columns: tuple[str, ...] = ()
    decisions: dict | None = None  # its --min-confidence and --top-k (RowFormat.decisions()); None: unknown
    multiline: tuple[str, ...] = ()  # its CSV files with a record that spans lines (a line break in an id)
    review: bool = dataclasses.field(default=False, compare=False)  # it wrote Label Studio tasks (--review)

    @classmethod
    def read(cls, output: str) -> "PreviousRun | None":
        """The previous predict run in `output`, or None when there is no finished, complete one."""
        manifest_path = fs.join(output, MANIFEST_FILE)
        if not fs.exists(manifest_path):
            return None
        manifest = fs.read_json(manifest_path)
        if manifest.get("job") != "predict":
            raise UserError(f"{output} holds the output of a {manifest.get('job', 'different')} job; "
                            "pass --overwrite to replace it")
        labels_path, segments_path = fs.join(output, LABELS_FILE), fs.join(output, SEGMENTS_FILE)
        index_files = tuple(fs.match(fs.join(output, INDEX_PATTERN))) or tuple(
            p for p in [fs.join(output, INDEX_FILE)] if fs.exists(p))
        segments = manifest.get("segments")
        missing = [name for name, there in ((LABELS_FILE, fs.exists(labels_path)), (INDEX_FILE, index_files),
                                            (SEGMENTS_FILE, not segments or fs.exists(segments_path)))
                   if not there]
        if missing:
            _LOG.warning("the previous run in %s is incomplete (no %s): labelling every video again", output,
                         " and no ".join(missing))
            return None
        options = manifest.get("options", {})
        columns = _header(labels_path)
        decisions = None
        if "min_confidence" in options and "top_k" in options:
            labels = sum(column.startswith("p_") for column in columns)
            decisions = {"min_confidence": options["min_confidence"], "top_k": min(options["top_k"], labels)}
        return cls(model_id=manifest.get("model_id", ""), columns=columns, index_files=index_files,
                   per_video=bool(options.get("per_video")), segments=segments,
                   segment_columns=_header(segments_path) if segments else (), decisions=decisions,
                   multiline=tuple(name for name, count in manifest.get(MULTILINE_KEY, {}).items() if count),
                   review=bool(options.get("review")))


MULTILINE_KEY = "csv_records_spanning_lines"  # the manifest's {CSV file: records with a line break in a field}


def _header(path: str) -> tuple[str, ...]:
    """The header of a CSV file, reading its first record only."""
    with fs.open_read(path) as raw:
        return tuple(next(csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline="")), []))


def parse_row(record: str, columns: tuple[str, ...]) -> tuple[str, dict]:
    row = dict(zip(columns, csv_values(record)))
    return row["video_id"], row


class ReadCsvRecords(beam.PTransform):
    """The records of one CSV file of a previous run, after its header. A file whose manifest says every record
    is one line is read in parallel, a line at a time (Beam's text source); one with a record that spans
    lines (a video id with a line break) is read in order on one worker, so that no record is split."""

    def __init__(self, path: str, multiline: bool):
        super().__init__()
        self._path, self._multiline = path, multiline

    def expand(self, pbegin):
        if not self._multiline:
            return pbegin | "ReadLines" >> beam.io.ReadFromText(self._path, skip_header_lines=1)
        return (pbegin | "File" >> beam.Create([self._path]) | "ReadRecords" >> beam.FlatMap(csv_records, header=True)
                | "Spread" >> beam.Reshuffle())


class ReadPreviousSegments(beam.PTransform):
    """A segments.csv file of the previous run (the launcher's extract of it, `beam_jobs.plan`): its rows,
    keyed by video id."""

    def __init__(self, path: str, previous: PreviousRun):
        super().__init__()
        self._path, self._previous = path, previous

    def expand(self, pbegin):
        return (pbegin
                | "ReadSegments" >> ReadCsvRecords(self._path, SEGMENTS_FILE in self._previous.multiline)
                | "ParseSegments" >> beam.Map(parse_row, self._previous.segment_columns))


def unchanged(entry: dict | None, ref: VideoRef) -> bool:
    """Whether the listing says `ref` is the video its previous index entry describes."""
    return bool(entry) and ref.size >= 0 and all(
        entry.get(key) == getattr(ref, key) for key in ("uri", "size", "mtime", "version"))


class ReadPlan(beam.PTransform):
    """The plan's todo file (`beam_jobs.plan`) -> PCollection[(VideoRef, previous)], previous being
    (fingerprint, labels.csv row) when the previous run labelled the video with the same model, else None."""

    def __init__(self, todo_path: str):
        super().__init__()
        self._todo = todo_path

    def expand(self, pbegin):
        return (pbegin
                | "ReadTodo" >> beam.io.ReadFromText(self._todo)
                | "ParseTodo" >> beam.Map(parse_todo))


def parse_todo(line: str) -> tuple[VideoRef, tuple[str, dict] | None]:
    """A line of the plan's todo file -> (VideoRef, previous): (fingerprint, labels.csv row) or None."""
    item = json.loads(line)
    return VideoRef(**item["ref"]), tuple(item["previous"]) if item["previous"] else None


def index_entry(ref: VideoRef, fingerprint: str) -> dict:
    """The index line for a video: what the next run compares against."""
    return {"video_id": ref.video_id, "uri": ref.uri, "size": ref.size, "mtime": ref.mtime,
            "version": ref.version, "fingerprint": fingerprint}


class SplitKnownContentDoFn(beam.DoFn):
    """Decoded videos whose content the previous run already labelled (same fingerprint) skip the model:
    they leave on the `known` output as (row, index entry); the others pass on."""

    KNOWN = "known"

    def process(self, video):
        if video.previous and video.previous[0] == video.fingerprint:
            row = dict(video.previous[1], video_uri=video.ref.uri)
            yield beam.pvalue.TaggedOutput(self.KNOWN, (row, index_entry(video.ref, video.fingerprint)))
        else:
            yield video
