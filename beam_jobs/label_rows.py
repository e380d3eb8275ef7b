"""labels.csv rows: the best label (or `unknown` below --min-confidence), its confidence, the top-k pairs and
every class's probability, and the per-video CSVs."""

from __future__ import annotations

import csv
import dataclasses
import io
import posixpath
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np

from beam_jobs.sinks import csv_line
from common import fs
from common.errors import UserError

LABELS_FILE = "labels.csv"
PER_VIDEO_DIR = "per_video"
UNKNOWN_LABEL = "unknown"
BASE_COLUMNS = ("video_id", "video_uri", "label", "confidence", "top_k")


def probability_column(label: str) -> str:
    return f"p_{label}"


def label_columns(labels: Sequence[str]) -> list[str]:
    return [*BASE_COLUMNS, *(probability_column(label) for label in labels), "model_id"]


@dataclasses.dataclass(frozen=True)
class RowFormat:
    labels: tuple[str, ...]
    model_id: str
    top_k: int
    min_confidence: float

    def decisions(self) -> dict:
        """What a row's label and top_k depend on besides its probabilities: a run whose previous run decided
        otherwise decides its carried rows again (`redecide`)."""
        return {"min_confidence": self.min_confidence, "top_k": self.top_k}


def decide(printed: Sequence[str], fmt: RowFormat) -> dict[str, str]:
    """label, confidence and top_k from the class probabilities as printed (6 decimals, in label order): most
    likely first, a tie in the printed value in label order, `unknown` when the printed confidence is below
    --min-confidence. Deciding from the printed values makes a row decided again from labels.csv alone
    (`redecide`) the row the model's output would give."""
    values = [float(p) for p in printed]
    order = sorted(range(len(values)), key=lambda i: -values[i])
    best = order[0]
    return {
        "label": fmt.labels[best] if values[best] >= fmt.min_confidence else UNKNOWN_LABEL,
        "confidence": printed[best],
        "top_k": ";".join(f"{fmt.labels[i]}:{printed[i]}" for i in order[: fmt.top_k]),
    }


def format_label_row(video_id: str, uri: str, probabilities: np.ndarray, fmt: RowFormat) -> dict[str, str]:
    """One labels.csv row from a video's class probabilities (normalised to sum to one)."""
    probabilities = np.asarray(probabilities, np.float64)
    printed = [f"{p:.6f}" for p in probabilities / probabilities.sum()]
    row = {"video_id": video_id, "video_uri": uri, **decide(printed, fmt), "model_id": fmt.model_id}
    row.update((probability_column(label), p) for label, p in zip(fmt.labels, printed))
    return row


def redecide(row: dict, fmt: RowFormat) -> dict:
    """A labels.csv (or segments.csv) row of an earlier run of the same model, with the label and top_k this
    run's --min-confidence and --top-k give it."""
    return dict(row, **decide([row[probability_column(label)] for label in fmt.labels], fmt))


def _format_joined(joined, fmt: RowFormat):
    video_id, parts = joined
    refs = list(parts["ref"])
    if len(refs) > 1:  # only feature records can name one video twice: a listing keeps one file per id
        uris = sorted({ref.uri for ref in refs})
        raise UserError(f"video id {video_id!r} is in {len(refs)} feature records (from {' and '.join(uris)}): give "
                        "--features records that hold each video once")
    for result in parts["prediction"]:
        yield format_label_row(video_id, refs[0].uri, result.inference, fmt)


class FormatLabelRows(beam.PTransform):
    """(video_id, PredictionResult) joined with (video_id, VideoRef) -> labels.csv row dicts."""

    def __init__(self, fmt: RowFormat):
        super().__init__()
        self._fmt = fmt

    def expand(self, inputs):
        predictions, refs = inputs
        return (
            {"prediction": predictions, "ref": refs}
            | "JoinRefs" >> beam.CoGroupByKey()
            | "Format" >> beam.FlatMap(_format_joined, self._fmt)
        )


def rows_to_csv(rows: Iterable[dict], columns: Sequence[str]) -> str:
    """labels.csv: a header and the rows sorted by video id."""
    ordered = sorted(rows, key=lambda r: r["video_id"])
    return csv_line(columns) + "".join(csv_line([row.get(c, "") for c in columns]) for row in ordered)


def read_rows(path: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(fs.read_text(path), newline="")))


def per_video_csv(row: dict, labels: Sequence[str]) -> str:
    """One video's class distribution, most likely first."""
    pairs = sorted(((label, float(row[probability_column(label)])) for label in labels), key=lambda p: -p[1])
    return csv_line(["class", "probability"]) + "".join(csv_line([label, f"{p:.6f}"]) for label, p in pairs)


def per_video_path(video_id: str) -> str:
    """per_video/<video id>.csv: the id as `fs.mirrored_name` makes it safe (a URI without its scheme; `..`,
    `%` and control characters escaped), so that no id names a file outside the folder."""
    return posixpath.join(PER_VIDEO_DIR, fs.mirrored_name(video_id) + ".csv")


def write_per_video(row: dict, staging: str, labels: Sequence[str]) -> str:
    """Stage one video's per-video CSV; returns its staged path."""
    path = fs.join(staging, per_video_path(row["video_id"]))
    fs.write_text(path, per_video_csv(row, labels))
    return path


def describe_rows(labels_csv: str, count: int) -> str:
    """The first `count` rows of a labels.csv, the way the Keras reference prints predictions."""
    lines = []
    for row in read_rows(labels_csv)[:count]:
        lines.append(f"{row['video_id']}: {row['label']}")
        for pair in row["top_k"].split(";"):
            label, _, probability = pair.rpartition(":")
            lines.append(f"  {label:>16}: {100 * float(probability):6.2f}%")
    return "\n".join(lines)
