"""Events: runs of consecutive segments of one video with the same label, for annotation tools and players.

Each window stands for the stretch of the video nearer its centre than any other window's (`window_spans`):
with windows that do not overlap that is the window itself; with overlapping ones (--segment-stride shorter
than --segments) the stretches meet halfway between the centres, so they never overlap, and together they
cover the whole video. A video's windows merge into an event wherever consecutive windows have the same label
at or above --min-confidence (below it a segment's label is `unknown`, which ends an event and starts none);
an event covers its windows' stretches, and its confidence is the mean of its windows'.

Written as events.csv (one table for every video: spreadsheets, pandas, and ELAN's CSV / tab-delimited text
import, with `label` as the annotation, `start` and `end` (or `start_s` and `end_s`) as its begin and end time
and `video_id` as the tier; text cells that a spreadsheet would run as a formula start with `'`, see
`event_values`) and as one WebVTT track per video (`tracks/<video id>.vtt`), which HTML5 players
(`<track kind="chapters">` or `kind="metadata"`), VLC and mpv show along the video.
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Iterable, Sequence

from beam_jobs.label_rows import UNKNOWN_LABEL
from beam_jobs.sinks import csv_values, plain_cell, spreadsheet_cell
from common import fs

EVENT_COLUMNS = ("video_id", "label", "start", "end", "start_s", "end_s", "mean_confidence", "segments")
TRACKS_DIR = "tracks"


@dataclasses.dataclass(frozen=True)
class Event:
    """`label` from `start_s` to `end_s` (seconds of presentation time), over `segments` windows whose mean
    confidence is `confidence`."""

    label: str
    start_s: float
    end_s: float
    confidence: float
    segments: int


Span = tuple  # (start_s, end_s, label, confidence): a window's stretch of its video


def window_spans(segments: Sequence[dict], window_s: float) -> list[Span]:
    """A video's segments.csv rows, in window order -> each window's stretch of the video: from halfway
    between its centre and the previous window's (the first from 0) to halfway to the next one's (the last to
    its own end), with its label and confidence."""
    spans = []
    centres = [float(s["start_s"]) + window_s / 2 for s in segments]
    for i, segment in enumerate(segments):
        start = (centres[i - 1] + centres[i]) / 2 if i else 0.0
        end = (centres[i] + centres[i + 1]) / 2 if i + 1 < len(segments) else float(segment["end_s"])
        spans.append((start, max(end, start), segment["label"], float(segment["confidence"])))
    return spans


def merge_events(spans: Iterable[Span]) -> list[Event]:
    """A video's window spans, in order -> its events, in time order."""
    events: list[Event] = []
    run: list[Span] = []

    def close_run() -> None:
        if run:
            confidence = sum(span[3] for span in run) / len(run)
            events.append(Event(run[0][2], run[0][0], run[-1][1], confidence, len(run)))
            run.clear()

    for span in spans:
        if run and span[2] != run[-1][2]:
            close_run()
        if span[2] != UNKNOWN_LABEL:
            run.append(span)
    close_run()
    return events


def clock(seconds: float) -> str:
    """Seconds -> `HH:MM:SS.mmm` (hours as many digits as they need), the time format of WebVTT."""
    milliseconds = max(int(round(seconds * 1000)), 0)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def event_values(video_id: str, event: Event) -> list[str]:
    """One events.csv row, in EVENT_COLUMNS order. events.csv is made to be opened in spreadsheets, so its text
    cells (video id, label) are spreadsheet-safe (`sinks.spreadsheet_cell`: one that could run as a formula
    starts with `'`); `sinks.plain_cell` gives the id back."""
    return [spreadsheet_cell(video_id), spreadsheet_cell(event.label), clock(event.start_s), clock(event.end_s),
            f"{event.start_s:.3f}", f"{event.end_s:.3f}", f"{event.confidence:.6f}", str(event.segments)]


def event_sort_key(video_id: str, start_s: float) -> str:
    """events.csv's order, as one string (the sinks shard by it): by video id, then start time."""
    return f"{video_id}\x00{int(round(start_s * 1000)):015d}"


def event_line_key(line: str) -> str:
    """`event_sort_key` of an events.csv record."""
    values = csv_values(line)
    return event_sort_key(plain_cell(values[0]), float(values[EVENT_COLUMNS.index("start_s")]))


def _cue_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webvtt(events: Sequence[Event]) -> str:
    """A WebVTT track with one cue per event: its label and mean confidence."""
    cues = "".join(f"\n{n}\n{clock(e.start_s)} --> {clock(e.end_s)}\n{_cue_text(e.label)} ({100 * e.confidence:.0f}%)\n"
                   for n, e in enumerate(events, 1))
    return "WEBVTT\n" + cues


def track_path(video_id: str) -> str:
    """tracks/<video id>.vtt, the id as `fs.mirrored_name` makes it safe (like per_video/)."""
    return posixpath.join(TRACKS_DIR, fs.mirrored_name(video_id) + ".vtt")


# --- A video's timeline in the report: its stretches merged, at most TIMELINE_BLOCKS ----------------------

TIMELINE_BLOCKS = 40


def _merged(spans: Iterable[tuple[float, float, str, float]]) -> list[tuple[float, float, str, float]]:
    """Neighbouring spans of one label as one, with their duration-weighted mean confidence."""
    blocks: list[list] = []
    for start, end, label, confidence in spans:
        if blocks and blocks[-1][2] == label:
            block = blocks[-1]
            weight, extra = block[1] - block[0], end - start
            block[3] = (block[3] * weight + confidence * extra) / (weight + extra) if weight + extra else confidence
            block[1] = end
        else:
            blocks.append([start, end, label, confidence])
    return [tuple(block) for block in blocks]


def timeline_blocks(spans: Sequence[tuple], most: int = TIMELINE_BLOCKS) -> list[tuple]:
    """A video's windows' stretches (start_s, end_s, label, confidence; beam_jobs.events.window_spans), in
    order -> its timeline: (start_s, end_s, label, mean confidence) for each run of stretches with one label
    (`unknown` too), at most `most`: a longer timeline is cut into `most` equal parts, each with the label
    shown longest in it."""
    blocks = _merged(spans)
    if len(blocks) > most:
        end = blocks[-1][1]
        coarse = []
        for k in range(most):
            low, high = end * k / most, end * (k + 1) / most
            shown: dict[str, list[float]] = {}
            for start, stop, label, confidence in blocks:
                overlap = min(stop, high) - max(start, low)
                if overlap > 0:
                    seen = shown.setdefault(label, [0.0, 0.0])
                    seen[0] += overlap
                    seen[1] += overlap * confidence
            label, (duration, weighted) = max(shown.items(), key=lambda item: item[1][0])
            coarse.append((low, high, label, weighted / duration))
        blocks = _merged(coarse)
    return [(round(start, 3), round(end, 3), label, round(confidence, 4)) for start, end, label, confidence in blocks]
