"""`predict --segments` end to end (beam_jobs.segments): a clip of known colour pieces gives its events in
order and within one window of the true boundaries, segments.csv, events.csv, the WebVTT tracks and the
report's timeline; frames shared by overlapping windows are embedded once; a video shorter than a window
has one segment; every video ends in the outputs or failures.csv; incremental re-runs carry segments over;
and the join that drops the segments of videos that failed."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import apache_beam as beam
import cv2
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.label_rows import RowFormat
from beam_jobs.segments import FROM_MODEL, FROM_PREVIOUS, JoinSegmentsDoFn

SIZE, FRAMES, FPS = 32, 4, 10
COLOURS = {"blue": (220, 60, 40), "green": (60, 200, 40), "red": (40, 40, 220)}  # BGR
PIECES = (("red", 24), ("green", 16), ("blue", 20))  # 0-2.4 s, 2.4-4.0 s, 4.0-6.0 s
BOUNDARIES_S = (2.4, 4.0)
# 1 s windows (10 frames, every third sampled) every 0.3 s (3 frames): neighbours share three of four frames.
WINDOW_S, STRIDE_S = 1.0, 0.3
BACKBONE = "densenet121/random-seed1337"


def write_colour_clip(path: Path, pieces, seed: int) -> Path:
    """Pieces of solid colour with noise, MJPG at FPS: `pieces` is (colour, frames) in order."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (48, 36))
    for colour, count in pieces:
        for _ in range(count):
            noise = rng.normal(0, 20, size=(36, 48, 3))
            writer.write(np.clip(np.array(COLOURS[colour]) + noise, 0, 255).astype(np.uint8))
    writer.release()
    return path


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory) -> Path:
    """A classifier trained in a few seconds on sequences of FRAMES frames of one colour each, embedded by the
    engine predict uses for its backbone."""
    import keras

    from model import engines
    from model.classifier import ClassifierConfig, build_classifier
    from model.export import export_model_dir
    from tfrecords_schema import RecordSpec
    from video.frames import decode_and_sample

    scratch = tmp_path_factory.mktemp("colour_train")
    embed = engines.make_embedder(engines.options_for_backbone(BACKBONE, SIZE), 16)
    labels = sorted(COLOURS)
    features, label_ids = [], []
    for label_id, label in enumerate(labels):
        clip = write_colour_clip(scratch / f"{label}.avi", [(label, 48)], seed=label_id)
        frames = decode_and_sample(str(clip), 48, SIZE).frames
        features.append(embed(frames).reshape(12, FRAMES, -1))
        label_ids += [label_id] * 12
    keras.utils.set_random_seed(0)
    model = build_classifier(ClassifierConfig(num_classes=len(labels), max_seq_length=FRAMES))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    features = np.concatenate(features)
    model.fit({"features": features, "mask": np.ones(features.shape[:2], bool)}, np.array(label_ids), epochs=10,
              batch_size=12, verbose=0)
    path = scratch / "model"
    export_model_dir(model, labels, RecordSpec(1024, FRAMES, BACKBONE, SIZE), str(path), saved_model=False)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("segment_clips")
    write_colour_clip(root / "pieces.avi", PIECES, seed=7)
    write_colour_clip(root / "short.avi", [("red", 5)], seed=8)  # 0.5 s: shorter than one window
    (root / "broken.mp4").write_bytes(b"not a video" * 50)
    return root


def segment_args(inputs: Path, model: Path, output: Path, window_s: float = WINDOW_S,
                 stride_s: float = STRIDE_S) -> list[str]:
    return ["--input", str(inputs), "--model", str(model), "--output", str(output), "--batch-size", "8",
            "--runner", "DirectRunner", "--segments", str(window_s), "--segment-stride", str(stride_s),
            "--min-confidence", "0.5"]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def segmented(clips, colour_model, tmp_path_factory):
    """One predict --segments run over `clips`, counting the frames DenseNet121 embeds."""
    from beam_jobs import predict
    from beam_jobs.embed import EmbedFramesDoFn

    output = tmp_path_factory.mktemp("segments_out") / "labels"
    embedded, embed = [], EmbedFramesDoFn._embed
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EmbedFramesDoFn, "_embed", lambda self, frames: embedded.append(len(frames)) or embed(self, frames))
        predict.run(segment_args(clips, colour_model, output))
    return output, sum(embedded)


def test_events_follow_the_pieces_within_one_window(segmented):
    output, _ = segmented
    pieces = [e for e in read_csv(output / "events.csv") if e["video_id"] == "pieces.avi"]
    assert [e["label"] for e in pieces] == ["red", "green", "blue"]
    assert float(pieces[0]["start_s"]) == 0.0 and float(pieces[-1]["end_s"]) == pytest.approx(6.0)
    for before, after, boundary in zip(pieces, pieces[1:], BOUNDARIES_S):
        assert before["end_s"] == after["start_s"] and abs(float(before["end_s"]) - boundary) <= WINDOW_S
    assert pieces[0]["start"] == "00:00:00.000" and pieces[-1]["end"] == "00:00:06.000"
    track = (output / "tracks" / "pieces.avi.vtt").read_text()
    assert track.startswith("WEBVTT\n\n1\n00:00:00.000 --> ") and track.count(" --> ") == 3
    assert [line.split(" (")[0] for line in track.splitlines() if line.endswith("%)")] == ["red", "green", "blue"]


def test_segments_csv_has_every_window_with_its_times_and_distribution(segmented, colour_model):
    output, _ = segmented
    rows = read_csv(output / "segments.csv")
    assert list(rows[0]) == ["video_id", "segment", "start_s", "end_s", "label", "confidence", "top_k", "p_blue",
                             "p_green", "p_red", "model_id"]
    pieces = [r for r in rows if r["video_id"] == "pieces.avi"]
    assert [int(r["segment"]) for r in pieces] == list(range(18))
    assert [float(r["start_s"]) for r in pieces] == pytest.approx([STRIDE_S * k for k in range(18)])
    assert [float(r["end_s"]) for r in pieces] == pytest.approx([min(STRIDE_S * k + WINDOW_S, 6.0) for k in range(18)])
    inside = {"red": (0.0, 2.4), "green": (2.4, 4.0), "blue": (4.0, 6.0)}
    for row in pieces:
        start, end = float(row["start_s"]), float(row["end_s"])
        for colour, (low, high) in inside.items():
            if low <= start and end <= high:
                assert row["label"] == colour, row
        assert sum(float(row[f"p_{c}"]) for c in COLOURS) == pytest.approx(1.0, abs=1e-5)
    (short,) = [r for r in rows if r["video_id"] == "short.avi"]
    assert (short["segment"], short["start_s"], short["end_s"], short["label"]) == ("0", "0.000", "0.500", "red")
    manifest = json.loads((output / "manifest.json").read_text())
    assert {r["model_id"] for r in rows} == {manifest["model_id"]}
    assert manifest["segments"] == {"window_s": WINDOW_S, "stride_s": STRIDE_S}
    assert (manifest["videos_matched"], manifest["videos_labelled"], manifest["failures"]) == (3, 2, 1)
    assert (manifest["segments_written"], manifest["events_written"]) == (19, 4)
    assert [f["video_id"] for f in read_csv(output / "failures.csv")] == ["broken.mp4"]
    assert {r["video_id"] for r in read_csv(output / "labels.csv")} == {"pieces.avi", "short.avi"}


def test_frames_shared_by_overlapping_windows_are_embedded_once(segmented):
    # Counted by hand from the clips. pieces.avi: 60 frames at 10 fps, 18 windows (starts 0, 0.3, ... 5.1 s).
    # Windows 0-16 hold 10 frames each and sample 4 spread evenly, positions 3k, 3k+3, 3k+6, 3k+9: every third
    # frame, 0 ... 57 (20 frames). Window 17 holds frames 51-59 and samples 51, 54, 56, 59: 2 more. The whole
    # video's 4 frames are embedded apart from the windows': 20 + 2 + 4 = 26. short.avi: 5 frames, one window
    # sampling 4 of them, and the whole video's 4: 8. Without sharing, 18 * 4 + 4 + 4 + 4 = 84 frames.
    _, embedded = segmented
    assert embedded == 26 + 8
def test_the_report_shows_each_videos_timeline(segmented):
    output, _ = segmented
    page = (output / "report.html").read_text()
    assert "<th>Timeline</th>" in page and page.count('<td class="timeline"><div style="background:') == 2
    assert '<p class="legend">Timeline: ' in page and "Segments</dt><dd>19 windows of 1 s every 0.3 s" in page


def test_reruns_carry_segments_over_and_new_windows_relabel(segmented, clips, colour_model, tmp_path):
    from beam_jobs import predict

    output = tmp_path / "labels"
    shutil.copytree(segmented[0], output)
    before = {name: (output / name).read_text() for name in ("segments.csv", "events.csv")}
    more = tmp_path / "more"
    shutil.copytree(clips, more)
    write_colour_clip(more / "green.avi", [("green", 15)], seed=9)
    predict.run(segment_args(more, colour_model, output))
    manifest = json.loads((output / "manifest.json").read_text())
    assert (manifest["labelled_this_run"], manifest["reused_from_previous_run"]) == (1, 2)
    segments = read_csv(output / "segments.csv")
    old = "".join(line for line in (output / "segments.csv").read_text().splitlines(True)
                  if not line.startswith("green.avi,"))
    assert old == before["segments.csv"] and [r["label"] for r in segments if r["video_id"] == "green.avi"] == ["green"] * 3
    assert sorted(p.name for p in (output / "tracks").iterdir()) == ["green.avi.vtt", "pieces.avi.vtt", "short.avi.vtt"]

    predict.run(segment_args(more, colour_model, output, 2.0, 2.0))  # other windows: every video again
    manifest = json.loads((output / "manifest.json").read_text())
    assert (manifest["labelled_this_run"], manifest["segments"]) == (3, {"window_s": 2.0, "stride_s": 2.0})
    assert [r["segment"] for r in read_csv(output / "segments.csv") if r["video_id"] == "pieces.avi"] == list("012")


JOIN_LABELS = ("a", "b", "z")


def segment_row(index: int, label: str, confidence: float) -> dict:
    others = {f"p_{other}": f"{(1 - confidence) / 2:.6f}" for other in JOIN_LABELS if other != label}
    return {"video_id": "v", "segment": str(index), "start_s": f"{index:.3f}", "end_s": f"{index + 1:.3f}",
            "label": label, "confidence": f"{confidence:.6f}", "top_k": f"{label}:{confidence:.6f}",
            f"p_{label}": f"{confidence:.6f}", **others}


def test_the_join_keeps_segments_of_labelled_videos_only():
    columns = ("video_id", "segment", "label")
    joined = [
        ("new", {"row": [(FROM_MODEL, {"video_id": "new"})], "new": [segment_row(1, "b", 0.9), segment_row(0, "a", 0.8)],
                 "old": [segment_row(0, "z", 0.9)]}),
        ("kept", {"row": [(FROM_PREVIOUS, {"video_id": "kept"})], "new": [], "old": [segment_row(0, "a", 0.4)]}),
        ("failed", {"row": [], "new": [segment_row(0, "a", 0.9)], "old": []}),  # decoded some chunks, then failed
    ]
    with TestPipeline() as pipeline:
        out = (pipeline | beam.Create(joined)
               | beam.ParDo(JoinSegmentsDoFn(columns, RowFormat(JOIN_LABELS, "m", 1, 0.5), 1.0,
                                             redo=True)).with_outputs(
                   "segment_lines", "event_lines", "tracks", "covered", main="rows"))
        assert_that(out["segment_lines"] | "Values" >> beam.Map(lambda kv: kv[1]),
                    equal_to([["v", "0", "a"], ["v", "1", "b"], ["v", "0", "unknown"]]), label="Segments")
        assert_that(out["covered"], equal_to(["new", "kept"]), label="Covered")
        # Decided again (the previous run's --min-confidence differs), a carried video's track is written again.
        assert_that(out["tracks"] | "TrackIds" >> beam.Map(lambda kv: kv[0]), equal_to(["new", "kept"]), label="Tracks")
        assert_that(out["event_lines"] | "EventLabels" >> beam.Map(lambda kv: (kv[1][0], kv[1][1])),
                    equal_to([("new", "a"), ("new", "b")]), label="Events")
        assert_that(out.rows | "Timelines" >> beam.Map(lambda r: (r["video_id"], [b[2] for b in r["timeline"]])),
                    equal_to([("new", ["a", "b"]), ("kept", ["unknown"])]), label="Rows")


def test_with_the_same_decisions_carried_segments_and_tracks_stay_as_they_were():
    joined = [("kept", {"row": [(FROM_PREVIOUS, {"video_id": "kept"})], "new": [], "old": [segment_row(0, "a", 0.4)]})]
    with TestPipeline() as pipeline:
        out = (pipeline | beam.Create(joined)
               | beam.ParDo(JoinSegmentsDoFn(("video_id", "segment", "label"), RowFormat(JOIN_LABELS, "m", 1, 0.5),
                                             1.0)).with_outputs("segment_lines", "event_lines", "tracks", "covered",
                                                                main="rows"))
        assert_that(out["segment_lines"] | "Values" >> beam.Map(lambda kv: kv[1]), equal_to([["v", "0", "a"]]),
                    label="Segments")
        assert_that(out["tracks"], equal_to([]), label="Tracks")  # its track in the output is still right
