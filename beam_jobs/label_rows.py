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

from common import fs

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


def format_label_row(video_id: str, uri: str, probabilities: np.ndarray, fmt: RowFormat) -> dict[str, str]:
    """One labels.csv row from a video's class probabilities (normalised to sum to one)."""
    probabilities = np.asarray(probabilities, np.float64)
    probabilities = probabilities / probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")
    best = int(order[0])
    confidence = float(probabilities[best])
    row = {
        "video_id": video_id,
        "video_uri": uri,
        "label": fmt.labels[best] if confidence >= fmt.min_confidence else UNKNOWN_LABEL,
        "confidence": f"{confidence:.6f}",
        "top_k": ";".join(f"{fmt.labels[i]}:{probabilities[i]:.6f}" for i in order[: fmt.top_k]),
        "model_id": fmt.model_id,
    }
    for label, p in zip(fmt.labels, probabilities):
        row[probability_column(label)] = f"{p:.6f}"
    return row


def _format_joined(joined, fmt: RowFormat):
    video_id, parts = joined
    for result in parts["prediction"]:
        (ref,) = parts["ref"]
        yield format_label_row(video_id, ref.uri, result.inference, fmt)


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
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["video_id"]))
    return buffer.getvalue()


def read_rows(path: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(fs.read_text(path))))


def per_video_csv(row: dict, labels: Sequence[str]) -> str:
    """One video's class distribution, most likely first."""
    pairs = sorted(((label, float(row[probability_column(label)])) for label in labels), key=lambda p: -p[1])
    return "class,probability\n" + "".join(f"{label},{p:.6f}\n" for label, p in pairs)


def per_video_path(video_id: str) -> str:
    """per_video/<video id>.csv; ids that are URIs keep only their path part."""
    return posixpath.join(PER_VIDEO_DIR, fs.path_part(video_id) + ".csv")


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
