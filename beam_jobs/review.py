"""People check the labels: `predict --review` writes what Label Studio needs to review a run's labels.

    python -m beam_jobs.predict --input data/new --model models/run1 --output labels/new \\
        --review-below 0.6 --review-most 500

Outputs under --output, in `review/`:
- labelstudio_config.xml: the labelling config, the video and one choice per class of the model (with
  --segments also timeline labels, one per class);
- labelstudio_tasks.json: Label Studio's import format, one task per video the model labelled in this run
  (an incremental run's carried-over videos have had theirs), most uncertain first. Each task holds the
  video's URL, its id, the model's best class, confidence and top-k (`data`), and the model's label as a
  prediction (score = confidence, model_version = model id); with --segments, each event (a run of one label
  along the video, events.csv) is a timeline prediction.

`--review-below P` keeps the videos whose confidence is below P, `--review-most N` the N least confident;
with neither every video labelled in the run gets a task. Local videos are served by Label Studio's
local-files storage: their URL is `/data/local-files/?d=<path under --review-files-root>`, the folder the
server has as LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default /, Label Studio's default too). gs:// videos
keep their gs:// URI, which Label Studio's Google Cloud Storage connection serves.

At any size the tasks stream: they are written as sorted shards by the workers and merged into the one
JSON file by one step that holds no more than a line of each shard; `--review-most N` keeps N rows in one
combiner. The reviewed labels come back with `python -m beam_jobs.reviewed_labels` (see there).
"""

from __future__ import annotations

import argparse
import colorsys
import heapq
import io
import json
import logging
import math
import os
import urllib.parse
from typing import Iterable, Iterator, Sequence
from xml.sax.saxutils import quoteattr

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_jobs.events import EVENT_COLUMNS
from beam_jobs.publish_labels import PARTS_DIR
from beam_jobs.report import parse_top_k
from beam_jobs.sinks import WriteSortedShards
from common import fs
from common.errors import UserError

_LOG = logging.getLogger(__name__)

REVIEW_DIR = "review"
CONFIG_FILE = f"{REVIEW_DIR}/labelstudio_config.xml"
TASKS_FILE = f"{REVIEW_DIR}/labelstudio_tasks.json"
LOCAL_FILES_URL = "/data/local-files/?d="
# The names in the labelling config that the tasks' predictions and the reviewed labels refer to.
VIDEO, CHOICES, TIMELINE = "video", "label", "segments"
# Label Studio counts timeline ranges in frames of the config's frameRate; the events are in seconds, and
# the rows do not carry each video's rate, so one rate converts both ways (a frame here is 1/25 s).
FRAME_RATE = 25


def add_review_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("review in Label Studio (beam_jobs.review)")
    group.add_argument("--review", action="store_true",
                       help=f"write {CONFIG_FILE} and {TASKS_FILE}, one task per video labelled in this run, most "
                            "uncertain first (implied by the other --review flags)")
    group.add_argument("--review-below", type=float, default=None, metavar="P",
                       help="tasks only for videos whose confidence is below P")
    group.add_argument("--review-most", type=int, default=None, metavar="N",
                       help="tasks for the N least confident videos at most")
    group.add_argument("--review-files-root", default=None, metavar="DIR",
                       help="the folder Label Studio serves local files from (its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_"
                            "ROOT); local videos must be under it (default: /)")


def check_review_args(args) -> None:
    """Validate the --review flags; any of them turns --review on."""
    if args.review_below is not None and not 0.0 < args.review_below <= 1.0:
        raise UserError(f"--review-below must be within (0, 1], got {args.review_below}")
    if args.review_most is not None and args.review_most < 1:
        raise UserError(f"--review-most must be at least 1, got {args.review_most}")
    if args.review_files_root is not None and fs.is_remote(args.review_files_root):
        raise UserError(f"--review-files-root is a local folder, got {args.review_files_root}")
    args.review = args.review or any(value is not None for value in (args.review_below, args.review_most,
                                                                     args.review_files_root))
    if not args.review:
        return
    args.review_files_root = os.path.abspath(args.review_files_root or os.sep)
    for pattern in args.input or ():
        if not fs.is_remote(pattern) and not _under(os.path.abspath(pattern), args.review_files_root):
            raise UserError(f"--input {pattern} is not under --review-files-root {args.review_files_root}: Label "
                            "Studio serves local videos only from its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")


def _under(path: str, root: str) -> bool:
    return root == os.sep or path == root or path.startswith(root.rstrip(os.sep) + os.sep)


# --- The labelling config ---------------------------------------------------------------------------------

def _hex_colours(labels: Sequence[str]) -> dict[str, str]:
    """The report's colours (hues by the golden angle, in vocabulary order), as #rrggbb for Label Studio."""
    colours = {}
    for i, label in enumerate(labels):
        r, g, b = colorsys.hls_to_rgb(((137.508 * i) % 360) / 360, 0.55, 0.60)
        colours[label] = f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"
    return colours


def labelling_config(labels: Sequence[str], segments: bool) -> str:
    """Label Studio's labelling config: the video, the model's top-k as text, one choice per class, and with
    `segments` a timeline label per class."""
    choices = "".join(f'\n    <Choice value={quoteattr(label)}/>' for label in labels)
    lines = ["<View>",
             '  <Header value="$video_id"/>',
             f'  <Video name="{VIDEO}" value="$video" frameRate="{FRAME_RATE}" height="360" timelineHeight="80"/>',
             '  <Text name="model" value="$model_says"/>',
             f'  <Choices name="{CHOICES}" toName="{VIDEO}" choice="single-radio" showInline="true" required="true">'
             f"{choices}\n  </Choices>"]
    if segments:
        colours = _hex_colours(labels)
        timeline = "".join(f"\n    <Label value={quoteattr(label)} background={quoteattr(colours[label])}/>"
                           for label in labels)
        lines.append(f'  <TimelineLabels name="{TIMELINE}" toName="{VIDEO}">{timeline}\n  </TimelineLabels>')
    return "\n".join([*lines, "</View>", ""])


# --- Tasks ------------------------------------------------------------------------------------------------

def video_url(uri: str, files_root: str) -> str | None:
    """What Label Studio opens for a video: local files through its local-files storage, relative to the
    folder it serves; gs:// (and other remote) URIs as they are. None for a local file outside the root."""
    if uri.startswith("file://"):
        uri = urllib.parse.unquote(urllib.parse.urlparse(uri).path)
    elif fs.is_remote(uri):
        return uri
    path = os.path.abspath(uri)
    if not _under(path, files_root):
        return None
    relative = os.path.relpath(path, files_root).replace(os.sep, "/")
    return LOCAL_FILES_URL + urllib.parse.quote(relative, safe="/")


def frame_range(start_s: float, end_s: float) -> dict[str, int]:
    """A stretch of seconds as Label Studio's 1-based frames at FRAME_RATE (frame n is [(n-1)/rate, n/rate))."""
    start = math.floor(start_s * FRAME_RATE + 1e-6) + 1
    return {"start": start, "end": max(start, math.ceil(end_s * FRAME_RATE - 1e-6))}


def make_task(row: dict, events: Iterable[Sequence[str]], model_id: str, files_root: str) -> dict:
    """One Label Studio task from a labels.csv row and its video's events.csv values (possibly none)."""
    top_k = parse_top_k(row["top_k"])
    best, confidence = top_k[0][0], float(row["confidence"])
    result = [{"id": "video-label", "from_name": CHOICES, "to_name": VIDEO, "type": "choices",
               "value": {"choices": [best]}}]
    column = {name: i for i, name in enumerate(EVENT_COLUMNS)}
    ordered = sorted(events, key=lambda values: float(values[column["start_s"]]))
    for i, values in enumerate(ordered):
        result.append({
            "id": f"segment-{i}", "from_name": TIMELINE, "to_name": VIDEO, "type": "timelinelabels",
            "value": {"ranges": [frame_range(float(values[column["start_s"]]), float(values[column["end_s"]]))],
                      "timelinelabels": [values[column["label"]]]},
            "score": float(values[column["mean_confidence"]]),
        })
    says = ", ".join(f"{label} {100 * p:.0f}%" for label, p in top_k)
    data = {"video": video_url(row["video_uri"], files_root) or row["video_uri"], "video_id": row["video_id"],
            "video_uri": row["video_uri"], "model_label": best, "confidence": confidence,
            "model_says": f"the model says: {says}"}
    return {"data": data, "predictions": [{"model_version": model_id, "score": confidence, "result": result}]}


def task_sort_key(row: dict) -> str:
    """Most uncertain first, then by video id: the order of the tasks file (confidence is 0.dddddd or 1.0...)."""
    return f"{float(row['confidence']):.6f}\x00{row['video_id']}"


def _task_line_key(line: str) -> str:
    data = json.loads(line)["data"]
    return f"{data['confidence']:.6f}\x00{data['video_id']}"


def _read_lines(path: str) -> Iterator[str]:
    with fs.open_read(path) as raw:
        yield from io.TextIOWrapper(raw, encoding="utf-8", newline="")


def merge_task_shards(shards: Sequence[tuple[str, int]], destination: str) -> int:
    """The sorted shards of task lines -> one JSON array of tasks at `destination`, streaming; returns how
    many tasks it holds."""
    count = 0
    with fs.open_write(destination, "application/json") as raw:
        out = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        out.write("[")
        for line in heapq.merge(*(_read_lines(path) for path, _ in sorted(shards)), key=_task_line_key):
            out.write(("," if count else "") + "\n" + line.rstrip("\n"))
            count += 1
        out.write("\n]\n" if count else "]\n")
        out.flush()
        out.detach()
    _LOG.info("review: %d Label Studio task(s) for %s, most uncertain first", count, TASKS_FILE)
    return count


class MakeTaskDoFn(beam.DoFn):
    """(video_id, {"row": [row], "events": [event values...]}) -> (sort key, task JSON line); videos without
    a row (events of videos not to be reviewed) give nothing."""

    def __init__(self, model_id: str, files_root: str):
        self._model_id, self._files_root = model_id, files_root
        self._outside = Metrics.counter("review", "videos_outside_files_root")

    def process(self, joined):
        _, parts = joined
        for row in parts["row"]:
            task = make_task(row, parts["events"], self._model_id, self._files_root)
            if not task["data"]["video"].startswith(LOCAL_FILES_URL) and not fs.is_remote(task["data"]["video"]):
                self._outside.inc()
            yield task_sort_key(row), json.dumps(task, ensure_ascii=False) + "\n"


class WriteReviewTasks(beam.PTransform):
    """{"rows": the rows labelled in this run, "events": their events.csv lines (sort key, values), with
    --segments} -> the tasks file written into staging; a PCollection of one int, the number of tasks
    (publishing waits for it)."""

    def __init__(self, staging: str, model_id: str, files_root: str, below: float | None = None,
                 most: int | None = None):
        super().__init__()
        self._staging, self._model_id, self._files_root = staging, model_id, files_root
        self._below, self._most = below, most

    def expand(self, inputs):
        rows, event_lines = inputs["rows"], inputs.get("events")
        if self._below is not None:
            below = self._below
            rows = rows | "BelowConfidence" >> beam.Filter(lambda row: float(row["confidence"]) < below)
        if self._most is not None:
            rows = (rows | "LeastConfident" >> beam.combiners.Top.Smallest(self._most, key=task_sort_key)
                    | "EachLeastConfident" >> beam.FlatMap(lambda chosen: chosen))
        parts = {"row": rows | "KeyRows" >> beam.Map(lambda row: (row["video_id"], row))}
        if event_lines is not None:
            parts["events"] = event_lines | "KeyEvents" >> beam.Map(lambda kv: (kv[1][0], kv[1]))
        else:
            parts["events"] = rows.pipeline | "NoEvents" >> beam.Create([])
        staging = self._staging
        return (parts
                | "JoinEvents" >> beam.CoGroupByKey()
                | "MakeTasks" >> beam.ParDo(MakeTaskDoFn(self._model_id, self._files_root))
                | "WriteTaskShards" >> WriteSortedShards(fs.join(staging, PARTS_DIR, "review-tasks"))
                | "AllTaskShards" >> beam.combiners.ToList()
                | "MergeTasks" >> beam.Map(merge_task_shards, fs.join(staging, TASKS_FILE)))


def write_review_files(args, rows, segments, labels: Sequence[str], model_id: str, staging: str) -> dict:
    """predict's hook: with --review, stage the labelling config now and add the steps that stage the tasks
    of `rows` (the rows the model made in this run), with `segments` (SegmentOutputs or None) giving their
    events. Returns {"review_tasks": PCollection of one int} for publishing's counts ({} without --review)."""
    if not getattr(args, "review", False):
        return {}
    fs.write_text(fs.join(staging, CONFIG_FILE), labelling_config(labels, segments is not None))
    inputs = {"rows": rows, **({"events": segments.event_lines} if segments is not None else {})}
    tasks = inputs | "WriteReviewTasks" >> WriteReviewTasks(staging, model_id, args.review_files_root,
                                                            args.review_below, args.review_most)
    return {"review_tasks": tasks}
