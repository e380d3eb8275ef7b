"""Labels along each video (`predict --segments SECONDS [--segment-stride SECONDS]`): every window of SECONDS,
sampled the way the model's records were (video.segments), embedded and classified with the same model as
the whole video, in the same pipeline.

`DecodeSegments` decodes each video once for all its windows and the whole-video sample, in the isolated
child: the windows leave a chunk at a time on the `window_frames` output (a `Video` whose `sampled` is a
`video.segments.WindowFrames`, each distinct frame once), the whole video on the main output once its last
chunk is out, so the frames in memory are a chunk's, never a video's. Both go through the one EmbedFrames
step. `LabelSegments` turns the embedded chunks into one classifier input per window, classifies them with
RunInference and joins the windows' rows with their video's labels.csv row by video id: segments of a video
that failed after some chunks were decoded are dropped there, and a video whose content the previous run knew
gets the previous run's segments (those of videos carried over unread join when the run publishes). Incremental runs carry segments
over only from a previous run with the same windows (`SegmentOptions.manifest()` in its manifest).

Outputs: segments.csv (`segment_columns`: a labels.csv row per window, with its index and its start and end in
seconds of presentation time), events.csv and tracks/<video id>.vtt (beam_jobs.events), and each row of
labels.csv carries its video's timeline for the report (`report.TIMELINE`, not a CSV column).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from beam_jobs import events as ev
from beam_jobs import report
from beam_jobs.classify import ModelInput
from beam_jobs.cores import CoreRequest
from beam_jobs.decode import FAILURES, DecodeFramesDoFn, FrameOptions, Video
from beam_jobs.flatten import FlattenApart
from beam_jobs.label_rows import RowFormat, format_label_row, probability_column, redecide
from beam_jobs.matching import VideoRef
from beam_jobs.sinks import csv_values
from common import fs
from video.segments import WindowFrames

SEGMENTS_FILE = "segments.csv"
EVENTS_FILE = "events.csv"
CHUNKS = "window_frames"  # the tag of DecodeSegments' output of windows' frames
SEGMENT_BASE = ("video_id", "segment", "start_s", "end_s", "label", "confidence", "top_k")
FROM_MODEL, FROM_PREVIOUS = "model", "previous"  # where a video's segments come from in this run


@dataclasses.dataclass(frozen=True)
class SegmentOptions:
    """Windows of `window_s` seconds every `stride_s` seconds."""

    window_s: float
    stride_s: float

    def manifest(self) -> dict:
        """What the manifest records, and what an incremental run compares to carry segments over."""
        return {"window_s": self.window_s, "stride_s": self.stride_s}


def segment_columns(labels) -> list[str]:
    return [*SEGMENT_BASE, *(probability_column(label) for label in labels), "model_id"]


def segment_sort_key(video_id: str, index: int) -> str:
    """segments.csv's order, as one string (the sinks shard by it): by video id, then window index."""
    return f"{video_id}\x00{index:010d}"


def segment_line_key(line: str) -> str:
    """`segment_sort_key` of a segments.csv record."""
    values = csv_values(line)
    return segment_sort_key(values[0], int(values[1]))


class DecodeSegmentsDoFn(DecodeFramesDoFn):
    """(VideoRef, previous) -> the video's windows' frames, a chunk at a time on `window_frames`, then the
    Video with its whole-video sample (main), or its failure. A video whose content the previous run labelled
    (same fingerprint) has only its whole-video sample decoded: its segments are carried over."""

    def __init__(self, options: FrameOptions, segments: SegmentOptions, job_id: str = "", expected_videos: int = 0,
                 cores: CoreRequest = CoreRequest()):
        super().__init__(options, job_id, expected_videos, cores)
        self._segments = segments
        self._windows = Metrics.counter("videos", "windows_decoded")
        self._window_frames = Metrics.counter("videos", "window_frames")

    def _sample(self, decoder, path: str, ref: VideoRef, fingerprint: str, previous):
        o = self._options
        if previous and previous[0] == fingerprint:
            return decoder.decode(path, o.max_seq_length, o.image_size, o.sampling)
        sampled = None
        for part in decoder.decode_segments(path, o.max_seq_length, o.image_size, o.sampling,
                                            self._segments.window_s, self._segments.stride_s):
            sampled = part
            if isinstance(part, WindowFrames):
                yield beam.pvalue.TaggedOutput(CHUNKS, Video(ref=ref, fingerprint=fingerprint, sampled=part))
        return sampled

    def _count_partial(self, output) -> None:
        chunk = output.value.sampled
        self._windows.inc(len(chunk.windows))
        self._window_frames.inc(len(chunk.frame_indices))


class DecodeSegments(beam.PTransform):
    """PCollection[(VideoRef, previous)] -> tagged outputs: main `videos` PCollection[Video] (the whole-video
    sample), `window_frames` PCollection[Video] (chunks of windows), `failures` (id, uri, reason)."""

    def __init__(self, options: FrameOptions, segments: SegmentOptions, job_id: str = "", expected_videos: int = 0,
                 cores: CoreRequest = CoreRequest()):
        super().__init__()
        self._dofn = DecodeSegmentsDoFn(options, segments, job_id, expected_videos, cores)

    def expand(self, refs):
        return refs | "Decode" >> beam.ParDo(self._dofn).with_outputs(CHUNKS, FAILURES, main="videos")


def is_window_frames(video: Video) -> bool:
    return isinstance(video.sampled, WindowFrames)


def window_model_inputs(video: Video, max_seq_length: int):
    """An embedded chunk of windows -> ((video_id, window index, start_s, end_s), padded ModelInput) for each
    of its windows with a frame that decoded."""
    from tfrecords_schema import pad_features

    chunk = video.sampled
    for window in chunk.windows:
        if rows := chunk.rows(window):
            features, mask = pad_features(video.features[rows], max_seq_length)
            yield (video.ref.video_id, window.index, window.start_s, window.end_s), ModelInput(features, mask)


def format_segment_row(keyed_result, fmt: RowFormat) -> tuple[str, dict]:
    """((video_id, index, start_s, end_s), PredictionResult) -> (video_id, segments.csv row)."""
    (video_id, index, start_s, end_s), result = keyed_result
    row = format_label_row(video_id, "", result.inference, fmt)
    del row["video_uri"]
    row.update(segment=str(index), start_s=f"{start_s:.3f}", end_s=f"{end_s:.3f}")
    return video_id, row


class JoinSegmentsDoFn(beam.DoFn):
    """(video_id, {"row": [(source, labels.csv row)], "new": [segment rows], "old": [segment rows]}) -> main:
    the row with its timeline; `segment_lines` and `event_lines` (sort key, CSV values); `tracks` (video_id,
    WebVTT) for videos the model labelled in this run, and for every video when `redo` (the previous run
    decided labels with another --min-confidence or --top-k: its segments are decided again, and its tracks
    written again); `covered`: the id of each video with segments.

    Segments without a row are of a video that failed, or of one no longer listed: they are dropped."""

    SEGMENT_LINES, EVENT_LINES, TRACKS, COVERED = "segment_lines", "event_lines", "tracks", "covered"

    def __init__(self, columns: tuple[str, ...], fmt: RowFormat, window_s: float, redo: bool = False):
        self._columns, self._fmt, self._window_s, self._redo = columns, fmt, window_s, redo

    def process(self, joined):
        video_id, parts = joined
        if not parts["row"]:
            return
        (source, row), = parts["row"]
        if source == FROM_MODEL:
            segments = list(parts["new"])
        elif self._redo:
            segments = [redecide(s, self._fmt) for s in parts["old"]]
        else:
            segments = list(parts["old"])
        segments.sort(key=lambda s: int(s["segment"]))
        spans = ev.window_spans(segments, self._window_s)
        events = ev.merge_events(spans)
        for segment in segments:
            yield beam.pvalue.TaggedOutput(self.SEGMENT_LINES, (segment_sort_key(video_id, int(segment["segment"])),
                                                                [segment.get(c, "") for c in self._columns]))
        for event in events:
            yield beam.pvalue.TaggedOutput(self.EVENT_LINES, (ev.event_sort_key(video_id, event.start_s),
                                                              ev.event_values(video_id, event)))
        if source == FROM_MODEL or self._redo:
            yield beam.pvalue.TaggedOutput(self.TRACKS, (video_id, ev.webvtt(events)))
        if segments:
            yield beam.pvalue.TaggedOutput(self.COVERED, video_id)
        yield dict(row, **{report.TIMELINE: ev.timeline_blocks(spans)})


class SegmentOutputs(NamedTuple):
    rows: beam.PCollection  # every labels.csv row, with its video's timeline
    segment_lines: beam.PCollection  # (sort key, segments.csv values)
    event_lines: beam.PCollection  # (sort key, events.csv values)
    tracks: beam.PCollection  # (video_id, WebVTT text), videos labelled by the model in this run
    counts: dict  # segments, events, segment_videos: PCollections of one int


class LabelSegments(beam.PTransform):
    """(embedded window chunks, rows by the model, rows of known content, the previous run's segments keyed by
    video id) -> SegmentOutputs. Rows are known only from a previous run with the same model and the same
    windows, whose segments are then the ones they get. (The segments of videos carried over unread join
    when the run publishes: beam_jobs.carry.)"""

    def __init__(self, handler, fmt: RowFormat, max_seq_length: int, windows: SegmentOptions, redo: bool = False):
        super().__init__()
        self._handler, self._fmt, self._max_seq_length, self._windows = handler, fmt, max_seq_length, windows
        self._redo = redo  # the previous run decided labels otherwise: carried segments are decided again

    def expand(self, inputs):
        chunks, new_rows, known_rows, previous_segments = inputs
        fmt = self._fmt
        new_segments = (chunks
                        | "WindowInputs" >> beam.FlatMap(window_model_inputs, self._max_seq_length)
                        | "ClassifyWindows" >> RunInference(self._handler)
                        | "FormatSegmentRows" >> beam.Map(format_segment_row, fmt))
        tagged = [rows | f"Source{name}" >> beam.Map(lambda r, s=source: (r["video_id"], (s, r)))
                  for name, source, rows in (("Model", FROM_MODEL, new_rows), ("Known", FROM_PREVIOUS, known_rows))]
        parts = {"row": tagged | "AllSources" >> FlattenApart(), "new": new_segments, "old": previous_segments}
        join = JoinSegmentsDoFn(tuple(segment_columns(fmt.labels)), fmt, self._windows.window_s, self._redo)
        joined = (parts
                  | "JoinWithRows" >> beam.CoGroupByKey()
                  | "PerVideo" >> beam.ParDo(join).with_outputs(
                      *(getattr(JoinSegmentsDoFn, tag) for tag in ("SEGMENT_LINES", "EVENT_LINES", "TRACKS",
                                                                   "COVERED")), main="rows"))
        segment_lines, event_lines = joined[JoinSegmentsDoFn.SEGMENT_LINES], joined[JoinSegmentsDoFn.EVENT_LINES]

        def count(pcoll, label):
            return pcoll | label >> beam.combiners.Count.Globally()

        return SegmentOutputs(
            rows=joined.rows, segment_lines=segment_lines, event_lines=event_lines,
            tracks=joined[JoinSegmentsDoFn.TRACKS],
            counts={"segments": count(segment_lines, "CountSegments"), "events": count(event_lines, "CountEvents"),
                    "segment_videos": count(joined[JoinSegmentsDoFn.COVERED], "CountSegmentVideos")},
        )


def stage_track(item: tuple[str, str], staging: str) -> str:
    """Write one video's WebVTT track under `staging`; returns its path."""
    video_id, text = item
    path = fs.join(staging, ev.track_path(video_id))
    fs.write_text(path, text)
    return path
