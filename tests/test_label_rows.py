"""beam_jobs.label_rows: labels.csv rows from class probabilities, FormatLabelRows, and the per-video CSVs."""

from __future__ import annotations

import csv
import io

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

import memfs
from beam_jobs.label_rows import (
    FormatLabelRows,
    RowFormat,
    describe_rows,
    format_label_row,
    label_columns,
    per_video_csv,
    per_video_path,
    read_rows,
    redecide,
    rows_to_csv,
    write_per_video,
)
from beam_jobs.matching import VideoRef
from common import fs

TestPipeline.__test__ = False  # a Beam class, not a test class for pytest to collect

LABELS = ("growing", "shrinking", "fading_in", "fading_out")
FMT = RowFormat(LABELS, model_id="model-123", top_k=2, min_confidence=0.0)


def test_label_columns():
    assert label_columns(["a", "b"]) == ["video_id", "video_uri", "label", "confidence", "top_k", "p_a", "p_b",
                                         "model_id"]


def test_format_label_row_normalises_and_orders_the_top_k():
    row = format_label_row("Class/v.avi", "/data/Class/v.avi", np.array([1.0, 3.0, 0.0, 4.0]), FMT)
    assert row == {
        "video_id": "Class/v.avi",
        "video_uri": "/data/Class/v.avi",
        "label": "fading_out",
        "confidence": "0.500000",
        "top_k": "fading_out:0.500000;shrinking:0.375000",
        "p_growing": "0.125000",
        "p_shrinking": "0.375000",
        "p_fading_in": "0.000000",
        "p_fading_out": "0.500000",
        "model_id": "model-123",
    }
    assert list(row) == ["video_id", "video_uri", "label", "confidence", "top_k", "model_id", "p_growing",
                         "p_shrinking", "p_fading_in", "p_fading_out"]
    assert sorted(row) == sorted(label_columns(LABELS))


def test_probabilities_of_a_row_sum_to_one():
    row = format_label_row("v", "u", np.array([0.2, 0.2, 0.2, 0.2], np.float32), FMT)
    assert sum(float(row[f"p_{label}"]) for label in LABELS) == pytest.approx(1.0, abs=1e-5)
    # A tie keeps the vocabulary's order.
    assert row["label"] == "growing" and row["top_k"] == "growing:0.250000;shrinking:0.250000"


def test_top_k_covers_every_class_when_asked():
    fmt = RowFormat(LABELS, "m", top_k=4, min_confidence=0.0)
    row = format_label_row("v", "u", [0.1, 0.2, 0.3, 0.4], fmt)
    assert row["top_k"] == "fading_out:0.400000;fading_in:0.300000;shrinking:0.200000;growing:0.100000"


def test_unknown_below_min_confidence():
    fmt = RowFormat(LABELS, "m", top_k=1, min_confidence=0.5)
    low = format_label_row("v", "u", [0.1, 0.2, 0.3, 0.4], fmt)
    assert (low["label"], low["confidence"], low["top_k"]) == ("unknown", "0.400000", "fading_out:0.400000")
    at = format_label_row("v", "u", [0.5, 0.25, 0.25, 0.0], fmt)
    assert at["label"] == "growing"  # at the threshold counts


def prediction(video_id: str, probabilities) -> tuple[str, PredictionResult]:
    return video_id, PredictionResult(example=None, inference=np.array(probabilities, np.float32), model_id="m")


def test_format_label_rows_joins_predictions_with_their_refs():
    predictions = [prediction("a.avi", [0.7, 0.1, 0.1, 0.1]), prediction("b.avi", [0.0, 0.0, 2.0, 2.0])]
    refs = [("a.avi", VideoRef("a.avi", "/in/a.avi", "growing")), ("b.avi", VideoRef("b.avi", "gs://x/b.avi")),
            ("never-classified.avi", VideoRef("never-classified.avi", "/in/n.avi"))]
    with TestPipeline() as pipeline:
        rows = ((pipeline | "Predictions" >> beam.Create(predictions), pipeline | "Refs" >> beam.Create(refs))
                | FormatLabelRows(FMT))
        assert_that(rows | beam.Map(lambda r: (r["video_id"], r["video_uri"], r["label"], r["confidence"], r["top_k"],
                                               r["model_id"])),
                    equal_to([
                        ("a.avi", "/in/a.avi", "growing", "0.700000", "growing:0.700000;shrinking:0.100000",
                         "model-123"),
                        ("b.avi", "gs://x/b.avi", "fading_in", "0.500000", "fading_in:0.500000;fading_out:0.500000",
                         "model-123"),
                    ]), label="Rows")
        assert_that(rows, equal_to([
            format_label_row("a.avi", "/in/a.avi", [0.7, 0.1, 0.1, 0.1], FMT),
            format_label_row("b.avi", "gs://x/b.avi", [0.0, 0.0, 0.5, 0.5], FMT),
        ]), label="WholeRows")


def test_rows_to_csv_sorts_by_video_id_and_reads_back(tmp_path):
    rows = [format_label_row(vid, f"/in/{vid}", p, FMT) for vid, p in
            [("b.avi", [1, 0, 0, 0]), ("A/z.avi", [0, 1, 0, 0]), ("a.avi", [0, 0, 1, 0])]]
    rows[0]["extra"] = "ignored"
    text = rows_to_csv(rows, label_columns(LABELS))
    lines = text.splitlines()
    assert lines[0] == ("video_id,video_uri,label,confidence,top_k,p_growing,p_shrinking,p_fading_in,p_fading_out,"
                        "model_id")
    assert [line.split(",")[0] for line in lines[1:]] == ["A/z.avi", "a.avi", "b.avi"]
    assert lines[3] == ("b.avi,/in/b.avi,growing,1.000000,growing:1.000000;shrinking:0.000000,1.000000,0.000000,"
                        "0.000000,0.000000,model-123")
    assert text.endswith("\n") and "\r" not in text
    path = tmp_path / "labels.csv"
    path.write_text(text)
    assert [r["video_id"] for r in read_rows(str(path))] == ["A/z.avi", "a.avi", "b.avi"]
    assert read_rows(str(path))[2]["top_k"] == "growing:1.000000;shrinking:0.000000"
    assert rows_to_csv([], label_columns(LABELS)) == lines[0] + "\n"


def test_a_comma_in_a_video_id_is_quoted():
    row = format_label_row("a, b.avi", "/in/a, b.avi", [1, 0, 0, 0], FMT)
    (read,) = csv.DictReader(io.StringIO(rows_to_csv([row], label_columns(LABELS))))
    assert read["video_id"] == "a, b.avi" and read["label"] == "growing"


def test_carried_rows_are_decided_again_as_the_model_would_decide_them():
    cases = ([0.1, 0.4, 0.3, 0.2], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1], [0.3000001, 0.3, 0.2, 0.2])
    for probabilities in cases:
        old = format_label_row("v", "u", probabilities, FMT)
        for top_k, min_confidence in ((1, 0.0), (4, 0.0), (3, 0.35), (2, 1.0)):
            fmt = RowFormat(LABELS, "model-123", top_k, min_confidence)
            assert redecide(old, fmt) == format_label_row("v", "u", probabilities, fmt)
    assert FMT.decisions() == {"min_confidence": 0.0, "top_k": 2}


@pytest.mark.parametrize("video_id, path", [
    ("v.avi", "per_video/v.avi.csv"),
    ("Class/sub/v.avi", "per_video/Class/sub/v.avi.csv"),
    ("gs://bucket/in/v.mp4", "per_video/bucket/in/v.mp4.csv"),
    ("/abs/v.avi", "per_video/abs/v.avi.csv"),
    ("../../etc/x.avi", "per_video/%2E%2E/%2E%2E/etc/x.avi.csv"),
    ("a\nb.avi", "per_video/a%0Ab.avi.csv"),
])
def test_per_video_path(video_id, path):
    assert per_video_path(video_id) == path


def test_per_video_csv_is_most_likely_first():
    row = format_label_row("v", "u", [0.1, 0.4, 0.1, 0.4], FMT)
    assert per_video_csv(row, LABELS) == ("class,probability\nshrinking,0.400000\nfading_out,0.400000\n"
                                          "growing,0.100000\nfading_in,0.100000\n")


def test_per_video_csv_quotes_class_names():
    labels = ("a, b", 'say "x"')
    row = format_label_row("v", "u", [0.75, 0.25], RowFormat(labels, "m", 1, 0.0))
    assert list(csv.reader(io.StringIO(per_video_csv(row, labels)))) == [
        ["class", "probability"], ["a, b", "0.750000"], ['say "x"', "0.250000"]]


@pytest.mark.parametrize("where", ["local", "mem"])
def test_write_per_video_stages_under_the_mirrored_path(where, tmp_path, bucket):
    staging = str(tmp_path / ".staging-x") if where == "local" else f"{bucket}/out/.staging-x"
    row = format_label_row("gs://b/Class/v.avi", "gs://b/Class/v.avi", [0, 0, 1, 0], FMT)
    path = write_per_video(row, staging, LABELS)
    assert path == fs.join(staging, "per_video/b/Class/v.avi.csv")
    assert fs.read_text(path).splitlines()[:2] == ["class,probability", "fading_in,1.000000"]


def test_describe_rows(tmp_path):
    rows = [format_label_row("b.avi", "u", [0.25, 0.75, 0, 0], FMT), format_label_row("a.avi", "u", [1, 0, 0, 0], FMT)]
    path = tmp_path / "labels.csv"
    path.write_text(rows_to_csv(rows, label_columns(LABELS)))
    assert describe_rows(str(path), 1) == "a.avi: growing\n           growing: 100.00%\n         shrinking:   0.00%"
    assert describe_rows(str(path), 5).splitlines()[3:] == ["b.avi: shrinking", "         shrinking:  75.00%",
                                                           "           growing:  25.00%"]
