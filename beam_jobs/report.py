"""report.html: one static page to spot-check a labelling run, and the thumbnail strips it shows.

The predict job writes `report.html` beside `labels.csv`: a summary, how many videos got each label, one
row per video (a strip of its sampled frames, its label, the confidence and the top-k) and the failures
with their reasons. It is a single self-contained file (thumbnails embedded as base64 JPEGs, CSS and a few
lines of plain JavaScript inline, nothing fetched), so it opens from disk or after downloading it alone
from a bucket. Clicking a column header sorts by it; the first click on Confidence puts the least
confident videos first, the ones worth a look.

Thumbnails are made in the pipeline from the sampled frames, before embedding drops them: up to
`THUMBNAIL_FRAMES` frames, `THUMBNAIL_SIDE` px square, side by side in one small JPEG (5 KB on average for
real clips, 3.5 KB for the synthetic ones; base64 adds a third, so the page grows by about 8 KB a video). Each is also kept as `thumbnails/<video id>.jpg` under the output: a scheduled
run that carries a video's row over from the previous run (the file did not change) carries its thumbnail
over from there too, without reading the video again. Videos labelled from feature records
(`--features`) have no frames, hence no thumbnail.

With `predict --segments`, each row also shows the video's timeline: one strip across the row, coloured by
the label of each stretch of windows (grey where it is `unknown`), the times and labels in its tooltip, and
a legend of the colours above the table (report_timeline.py). The strip comes with the row (`TIMELINE`, made
in the pipeline by `timeline_blocks`), at most `TIMELINE_BLOCKS` stretches however long the video, so the page
stays small.
"""

from __future__ import annotations

import base64
import dataclasses
import pathlib
import posixpath
import urllib.parse
from typing import Iterable, Mapping, Sequence

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.metrics import Metrics

from beam_jobs.flatten import FlattenApart
from beam_jobs.report_timeline import (TIMELINE, escape as _e, label_colours, legend_html, percent as _percent,
                                       timeline_html)
from common import fs
from video.frames import sample_frame_indices

REPORT_FILE = "report.html"
THUMBNAILS_DIR = "thumbnails"
THUMBNAILS = "thumbnails"  # the tag of MakeThumbnails' thumbnail output
THUMBNAIL_FRAMES = 8
THUMBNAIL_SIDE = 48
THUMBNAIL_GAP = 2
JPEG_QUALITY = 70


def thumbnail_strip(frames: np.ndarray, count: int = THUMBNAIL_FRAMES, side: int = THUMBNAIL_SIDE) -> bytes:
    """Sampled frames `[n, S, S, 3]` uint8 RGB -> JPEG of up to `count` of them, evenly spread, side by side.

    Each tile is `min(side, S)` px square, with a `THUMBNAIL_GAP` px white gap between tiles."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [n, S, S, 3] with n >= 1, got {frames.dtype} {frames.shape}")
    side = min(side, frames.shape[1])
    picked = frames[sample_frame_indices(len(frames), count)]
    width = len(picked) * side + (len(picked) - 1) * THUMBNAIL_GAP
    strip = np.full((side, width, 3), 255, np.uint8)
    for position, frame in enumerate(picked):
        left = position * (side + THUMBNAIL_GAP)
        strip[:, left : left + side] = cv2.resize(frame, (side, side), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {strip.shape} thumbnail strip as JPEG")
    return jpeg.tobytes()


def thumbnail_path(video_id: str) -> str:
    """thumbnails/<video id>.jpg, the id as `fs.mirrored_name` makes it safe (like per_video/)."""
    return posixpath.join(THUMBNAILS_DIR, fs.mirrored_name(video_id) + ".jpg")


def stage_thumbnail(item: tuple[str, bytes], staging: str) -> tuple[str, str, bytes]:
    """(video_id, jpeg) -> (video_id, staged path, jpeg), the JPEG written under `staging`."""
    video_id, jpeg = item
    path = fs.join(staging, thumbnail_path(video_id))
    fs.write_bytes(path, jpeg, mime_type="image/jpeg")
    return video_id, path, jpeg


def read_previous_thumbnail(video_id: str, output: str) -> Iterable[tuple[str, bytes]]:
    """The thumbnail a previous run left in `output` for `video_id`, if any (runs before thumbnails existed
    left none)."""
    path = fs.join(output, thumbnail_path(video_id))
    if fs.exists(path):
        yield video_id, fs.read_bytes(path)


class MakeThumbnailsDoFn(beam.DoFn):
    """Video -> the same Video, and `(video_id, JPEG strip)` on the `thumbnails` output.

    The strip is made before the video is passed on: embedding drops the frames, in place."""

    def __init__(self):
        self._made = Metrics.counter("videos", "thumbnails_made")

    def process(self, video):
        strip = thumbnail_strip(video.sampled.frames)
        self._made.inc()
        yield beam.pvalue.TaggedOutput(THUMBNAILS, (video.ref.video_id, strip))
        yield video


class MakeThumbnails(beam.PTransform):
    """PCollection[Video] with frames -> tagged outputs: main the same videos, `thumbnails` (video_id, jpeg)."""

    def expand(self, videos):
        return videos | "Strip" >> beam.ParDo(MakeThumbnailsDoFn()).with_outputs(THUMBNAILS, main="videos")


# --- What the page shows of a run of any size -----------------------------------------------------------

SHOWN_VIDEOS = 300  # the least confident videos get a row (with thumbnails); labels.csv has them all
SHOWN_FAILURES = 500
HISTOGRAM_BINS = 10
LABELS_LINK, FAILURES_LINK = "labels.csv", "failures.csv"


@dataclasses.dataclass(frozen=True)
class ReportTotals:
    """A whole run's counts for the page, however many rows it shows: videos labelled, failures, videos per
    label, and videos per confidence bin (HISTOGRAM_BINS equal bins over [0, 1])."""

    videos: int
    failures: int
    label_counts: tuple[tuple[str, int], ...]
    confidence_histogram: tuple[int, ...] = ()

    @classmethod
    def of(cls, rows: Sequence[Mapping[str, str]], failures: int) -> "ReportTotals":
        counts: dict[str, int] = {}
        histogram = [0] * HISTOGRAM_BINS
        for row in rows:
            counts[row["label"]] = counts.get(row["label"], 0) + 1
            histogram[confidence_bin(float(row["confidence"]))] += 1
        return cls(len(rows), failures, tuple(sorted(counts.items())), tuple(histogram) if rows else ())


def confidence_bin(confidence: float) -> int:
    return min(int(confidence * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)


class _HistogramFn(beam.CombineFn):
    def create_accumulator(self):
        return [0] * HISTOGRAM_BINS

    def add_input(self, accumulator, confidence):
        accumulator[confidence_bin(confidence)] += 1
        return accumulator

    def merge_accumulators(self, accumulators):
        return [sum(bins) for bins in zip(*accumulators)]

    def extract_output(self, accumulator):
        return tuple(accumulator)


class SummarizeForReport(beam.PTransform):
    """(rows, failures) -> one dict with what report.html shows of a run of any size: the totals
    (ReportTotals fields) and the SHOWN_VIDEOS least confident rows and the first SHOWN_FAILURES failures,
    computed with combiners (no step holds every row)."""

    def expand(self, inputs):
        rows, failures = inputs
        confidence = rows | "Confidences" >> beam.Map(lambda r: float(r["confidence"]))
        parts = {
            "videos": rows | "CountVideos" >> beam.combiners.Count.Globally(),
            "failures": failures | "CountFailures" >> beam.combiners.Count.Globally(),
            "label_counts": (rows | "Labels" >> beam.Map(lambda r: r["label"])
                             | "CountLabels" >> beam.combiners.Count.PerElement()
                             | "AllLabelCounts" >> beam.combiners.ToList()),
            "histogram": confidence | "Histogram" >> beam.CombineGlobally(_HistogramFn()),
            "shown_rows": rows | "LeastConfident" >> beam.combiners.Top.Smallest(
                SHOWN_VIDEOS, key=lambda r: (float(r["confidence"]), r["video_id"])),
            "shown_failures": failures | "FirstFailures" >> beam.combiners.Top.Smallest(
                SHOWN_FAILURES, key=lambda f: f[0]),
        }
        keyed = [parts[name] | f"Key{name.title().replace('_', '')}" >> beam.Map(lambda v, n=name: (n, v))
                 for name in parts]
        return (keyed | "AllParts" >> FlattenApart() | "OneSummary" >> beam.combiners.ToDict())


def totals_from_summary(summary: dict) -> ReportTotals:
    histogram = tuple(summary["histogram"]) if summary["videos"] else ()
    return ReportTotals(int(summary["videos"]), int(summary["failures"]),
                        tuple(sorted((str(k), int(v)) for k, v in summary["label_counts"])), histogram)


def _histogram_html(histogram: Sequence[int]) -> str:
    top = max(max(histogram), 1)
    width = 100 / len(histogram)
    bars = "".join(
        f'<tr><td class="num">{100 * i * width / 100:.0f}-{100 * (i + 1) * width / 100:.0f}%</td>'
        f'<td><div class="meter" style="width:16em"><span style="width:{100 * count / top:.1f}%;'
        f'background:{_meter_colour((i + 0.5) / len(histogram))}"></span><b>{count}</b></div></td></tr>'
        for i, count in enumerate(histogram))
    return ('<h2>Confidence</h2>\n<table id="confidence-histogram"><thead><tr><th>Confidence</th>'
            f"<th>Videos</th></tr></thead><tbody>{bars}</tbody></table>")


# --- The page ------------------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .3em; } h2 { font-size: 1.15em; margin: 1.4em 0 .4em; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; margin: 0; }
dl.summary dt { color: #666; } dl.summary dd { margin: 0; }
table { border-collapse: collapse; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e3e3e3; text-align: left; vertical-align: middle; }
thead th { position: sticky; top: 0; background: #f6f6f6; border-bottom: 2px solid #ccc; white-space: nowrap; }
th button { font: inherit; font-weight: bold; border: 0; background: none; padding: 0; cursor: pointer; }
th button::after { content: " \\2195"; color: #aaa; }
th[aria-sort="ascending"] button::after { content: " \\25B2"; color: #222; }
th[aria-sort="descending"] button::after { content: " \\25BC"; color: #222; }
td.strip img { height: %(side)dpx; display: block; image-rendering: auto; }
td.strip.none { color: #999; font-size: .85em; }
td.video { font-family: ui-monospace, monospace; font-size: .9em; overflow-wrap: anywhere; min-width: 10em;
           max-width: 28em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.confidence { min-width: 7em; }
.meter { position: relative; background: #eee; height: 1.3em; border-radius: 3px; }
.meter span { position: absolute; inset: 0 auto 0 0; border-radius: 3px; }
.meter b { position: relative; padding-left: .3em; font-weight: normal; font-variant-numeric: tabular-nums; }
tr.unknown td.label { color: #b00; font-style: italic; }
ol.topk { margin: 0; padding-left: 1.4em; white-space: nowrap; }
ol.topk li span { color: #555; font-variant-numeric: tabular-nums; }
.hint { color: #666; font-size: .9em; }
td.timeline { width: 18em; } td.timeline div { height: 1.1em; border-radius: 3px; background: #eee; }
td.timeline span { color: #777; font-size: .8em; } td.timeline span.end { float: right; }
.legend .swatch { display: inline-block; width: .9em; height: .9em; border-radius: 2px; vertical-align: -.1em;
                  margin: 0 .3em 0 .9em; }
"""

_SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("labels");
  if (!table) { return; }
  var body = table.tBodies[0];
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  function compare(x, y) { return x < y ? -1 : x > y ? 1 : 0; }
  headers.forEach(function (th, column) {
    var button = th.querySelector("button");
    if (!button) { return; }
    button.addEventListener("click", function () {
      var now = th.getAttribute("aria-sort");
      var direction = now === "ascending" ? "descending" : now === "descending" ? "ascending"
                                                                         : (th.dataset.first || "ascending");
      var sign = direction === "ascending" ? 1 : -1;
      var numeric = th.dataset.sort === "number";
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var value = row.cells[column].dataset.value;
        return numeric ? parseFloat(value) : value;
      }
      rows.sort(function (a, b) {
        // Ties keep video id order, whichever the direction.
        return sign * compare(key(a), key(b)) || compare(a.dataset.videoId, b.dataset.videoId);
      });
      headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", direction);
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
})();
"""


def parse_top_k(text: str) -> list[tuple[str, float]]:
    """labels.csv's `top_k` ("label:p;label:p") -> [(label, p)]; labels may themselves contain ':'."""
    pairs = []
    for pair in filter(None, text.split(";")):
        label, _, probability = pair.rpartition(":")
        pairs.append((label, float(probability)))
    return pairs


def video_link(uri: str) -> str | None:
    """Where a browser can open the video: file:// for local paths, the Cloud console for gs://."""
    if uri.startswith("gs://"):
        return "https://storage.cloud.google.com/" + urllib.parse.quote(uri[len("gs://"):], safe="/")
    if "://" in uri:
        return uri if uri.startswith(("http://", "https://")) else None
    path = pathlib.PurePosixPath(uri)
    return path.as_uri() if path.is_absolute() else None


def _meter_colour(confidence: float) -> str:
    # red (doubtful) through amber to green (confident)
    return f"hsl({round(120 * min(max(confidence, 0.0), 1.0))}, 65%, 62%)"


def _row_html(row: Mapping[str, str], thumbnail: bytes | None, no_thumbnail: str, unknown_label: str,
              colours: Mapping[str, str] | None = None) -> str:
    video_id, label = row["video_id"], row["label"]
    confidence = float(row["confidence"])
    if thumbnail:
        data = base64.b64encode(thumbnail).decode("ascii")
        strip = (f'<td class="strip"><img src="data:image/jpeg;base64,{data}" '
                 f'alt="sampled frames of {_e(video_id)}"></td>')
    else:
        strip = f'<td class="strip none">{_e(no_thumbnail)}</td>'
    link = video_link(row.get("video_uri", ""))
    name = f'<a href="{_e(link)}">{_e(video_id)}</a>' if link else _e(video_id)
    top = "".join(f"<li>{_e(l)} <span>{_percent(p)}</span></li>" for l, p in parse_top_k(row["top_k"]))
    classes = ' class="unknown"' if label == unknown_label else ""
    timeline = ""
    if colours is not None:
        blocks = row.get(TIMELINE)
        timeline = timeline_html(blocks, colours, unknown_label) if blocks else '<td class="timeline"></td>'
    return (
        f'<tr data-video-id="{_e(video_id)}"{classes}>{strip}'
        f'<td class="video" data-value="{_e(video_id)}" title="{_e(row.get("video_uri", ""))}">{name}</td>'
        f'<td class="label" data-value="{_e(label)}">{_e(label)}</td>'
        f'<td class="confidence" data-value="{confidence:.6f}"><div class="meter">'
        f'<span style="width:{100 * confidence:.1f}%;background:{_meter_colour(confidence)}"></span>'
        f"<b>{_percent(confidence)}</b></div></td>"
        f'<td><ol class="topk">{top}</ol></td>{timeline}</tr>'
    )


def _failure_section(failures: Sequence[tuple[str, str, str]], total: int) -> str:
    """The failures shown (the first ones by id), and a link to failures.csv when there are more."""
    if failures:
        failure_rows = "\n".join(
            f'<tr data-video-id="{_e(video_id)}"><td class="video">{_e(video_id)}</td>'
            f'<td class="video">{_e(uri)}</td><td class="reason">{_e(reason)}</td></tr>'
            for video_id, uri, reason in failures
        )
        failure_section = (
            '<table id="failures"><thead><tr><th>Video</th><th>URI</th><th>Reason</th></tr></thead>'
            f"<tbody>\n{failure_rows}\n</tbody></table>"
        )
        if total > len(failures):
            failure_section += (f'<p class="hint">The first {len(failures)} of {total} failures by video id; '
                                f'<a href="{FAILURES_LINK}">failures.csv</a> lists them all.</p>')
    elif total:
        failure_section = f'<p class="hint"><a href="{FAILURES_LINK}">failures.csv</a> lists them.</p>'
    else:
        failure_section = '<p id="no-failures">Every video could be read and labelled.</p>'
    return failure_section


def render_report(
    rows: Sequence[Mapping[str, str]],
    failures: Iterable[tuple[str, str, str]],
    thumbnails: Mapping[str, bytes],
    summary: Mapping[str, object],
    *,
    unknown_label: str = "unknown",
    no_thumbnail: str = "no frames",
    totals: "ReportTotals | None" = None,
    labels: Sequence[str] = (),
) -> str:
    """The report page. `rows` are the labels.csv rows shown (strings, as written), `failures` the
    (video_id, uri, reason) shown, `thumbnails` JPEG strips by video id (rows without one show
    `no_thumbnail`), `summary` the facts shown at the top, in order (name -> value). `totals` are the whole
    run's counts when `rows` and `failures` are only the part shown; by default they are counted from them.
    Rows with a `TIMELINE` give the table a timeline column, coloured by `labels` (the model's vocabulary)."""
    rows = sorted(rows, key=lambda r: r["video_id"])
    failures = sorted(failures)
    totals = totals or ReportTotals.of(rows, len(failures))
    counts = dict(totals.label_counts)
    top_k = max((len(parse_top_k(r["top_k"])) for r in rows), default=0)
    facts = "".join(f"<dt>{_e(name)}</dt><dd>{_e(value)}</dd>" for name, value in summary.items())
    labelled = max(sum(counts.values()), 1)
    count_rows = "".join(
        f'<tr><td>{_e(label)}</td><td class="num">{count}</td><td class="num">{_percent(count / labelled)}</td></tr>'
        for label, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    )
    colours = label_colours(labels or sorted({b[2] for r in rows for b in r.get(TIMELINE) or ()}))
    timelines = any(r.get(TIMELINE) for r in rows)
    body_rows = "\n".join(_row_html(r, thumbnails.get(r["video_id"]), no_thumbnail, unknown_label,
                                    colours if timelines else None) for r in rows)
    legend = legend_html(rows, colours, unknown_label) if timelines else ""
    timeline_header = "<th>Timeline</th>" if timelines else ""
    failure_section = _failure_section(failures, totals.failures)
    capped = totals.videos > len(rows)
    videos_heading = f"{len(rows)} least confident of {totals.videos}" if capped else f"{len(rows)}"
    shown_hint = (f"The {len(rows)} videos the model was least sure of; <a href=\"{LABELS_LINK}\">labels.csv</a> "
                  "has every video. " if capped else "")
    histogram = _histogram_html(totals.confidence_histogram) if totals.confidence_histogram else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Labelling report: {totals.videos} videos</title>
<style>{_STYLE % {"side": THUMBNAIL_SIDE}}</style>
</head>
<body>
<h1>Labelling report</h1>
<dl class="summary">{facts}</dl>
<h2>Labels given</h2>
<table id="label-counts"><thead><tr><th>Label</th><th>Videos</th><th>Share</th></tr></thead>
<tbody>{count_rows}</tbody></table>
{histogram}
<h2 id="videos-heading">Videos ({videos_heading})</h2>
<p class="hint">{shown_hint}Click a column header to sort by it; the first click on Confidence shows the least
confident videos first.</p>
{legend}
<table id="labels">
<thead><tr><th>Sampled frames</th>
<th data-sort="text" aria-sort="ascending"><button type="button">Video</button></th>
<th data-sort="text"><button type="button">Label</button></th>
<th data-sort="number" data-first="ascending"><button type="button">Confidence</button></th>
<th>Top {top_k}</th>{timeline_header}</tr></thead>
<tbody>
{body_rows}
</tbody>
</table>
<h2 id="failures-heading">Failures ({totals.failures})</h2>
{failure_section}
<script>{_SCRIPT}</script>
</body>
</html>
"""

