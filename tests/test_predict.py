"""beam_jobs.predict as a module: its flags and FinishPredict's accounting (the job end to end is in
test_report.py and test_runners.py)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from beam_jobs.predict import _parse, build_parser, segment_options
from beam_jobs.publish_labels import Counts, FinishPredict
from beam_jobs.segments import SegmentOptions
from beam_jobs.sinks import csv_key, csv_line
from common.errors import UserError


def finish() -> FinishPredict:
    return FinishPredict(output="out", staging="out/.staging-x", run_id="run-x", columns=("video_id",),
                         manifest={"job": "predict"})


def summary(videos: int, failures: int) -> dict:
    return {"videos": videos, "failures": failures}


def test_accounting_passes_when_every_video_is_labelled_or_failed_once():
    counts = Counts(matched=5, by_model=2, reused_content=1, carried=1, failed=1)
    finish()._check_accounting(counts, summary(4, 1), [("labels-0", 3), ("labels-1", 1)])
    finish()._check_accounting(Counts(0, 0, 0, 0, 0), summary(0, 0), [])


@pytest.mark.parametrize("counts, rows, message", [
    (Counts(matched=4, by_model=2, reused_content=0, carried=0, failed=1), 2, "4 matched, 2 labelled (2 rows), 1 failed"),
    (Counts(matched=1, by_model=2, reused_content=0, carried=0, failed=0), 2, "1 matched, 2 labelled (2 rows), 0 failed"),
    (Counts(matched=3, by_model=3, reused_content=0, carried=0, failed=0), 4, "3 matched, 3 labelled (4 rows), 0 failed"),
])
def test_lost_or_extra_videos_are_an_accounting_error(counts, rows, message):
    with pytest.raises(RuntimeError, match=rf"^accounting error: {re.escape(message)}$"):
        finish()._check_accounting(counts, summary(counts.labelled, counts.failed), [("labels-0", rows)])


def test_with_segments_every_labelled_video_must_have_segments():
    finish_segments = FinishPredict(output="out", staging="out/.staging-x", run_id="run-x", columns=("video_id",),
                                    manifest={"job": "predict"}, segment_columns=("video_id", "segment"))
    counts = Counts(matched=3, by_model=2, reused_content=0, carried=1, failed=0, segments=7, segment_videos=3)
    finish_segments._check_accounting(counts, summary(3, 0), [("labels-0", 3)])
    with pytest.raises(RuntimeError, match=r"^accounting error: 3 videos labelled, 2 of them with segments$"):
        finish_segments._check_accounting(dataclasses.replace(counts, segment_videos=2), summary(3, 0),
                                          [("labels-0", 3)])


def test_csv_lines_and_their_sort_key():
    line = csv_line(["a,b/c.mp4", "x", 'say "hi"'])
    assert line == '"a,b/c.mp4",x,"say ""hi"""\n' and csv_key(line) == "a,b/c.mp4"


def test_parser_defaults_and_shared_frame_flags():
    args, beam_args = build_parser().parse_known_args(
        ["--input", "videos", "--model", "models/run1", "--output", "labels", "--runner", "DirectRunner"])
    assert beam_args == ["--runner", "DirectRunner"]
    assert (args.input, args.features, args.model, args.output) == (["videos"], None, "models/run1", "labels")
    assert (args.top_k, args.min_confidence, args.per_video, args.classifier_batch_size) == (3, 0.0, False, 64)
    assert (args.weights, args.show, args.large_model) == (None, 0, False)
    assert (args.batch_size, args.decode_timeout, args.overwrite) == (32, 120.0, False)  # from beam_jobs.flags
    assert (args.segments, args.segment_stride, segment_options(args)) == (None, None, None)


def test_segment_stride_defaults_to_the_window():
    args, _ = _parse(["--input", "v", "--model", "m", "--output", "o", "--segments", "10"])
    assert segment_options(args) == SegmentOptions(10.0, 10.0)
    args, _ = _parse(["--input", "v", "--model", "m", "--output", "o", "--segments", "10", "--segment-stride", "2.5"])
    assert segment_options(args) == SegmentOptions(10.0, 2.5) and segment_options(args).manifest() == {
        "window_s": 10.0, "stride_s": 2.5}


def test_parser_values():
    args = build_parser().parse_args([
        "--features", "a/*.tfrecord", "--features", "b/*.tfrecord", "--model", "m", "--output", "o", "--top-k", "5",
        "--min-confidence", "0.5", "--per-video", "--classifier-batch-size", "8", "--show", "2", "--large-model",
        "--weights", "w.h5", "--overwrite"])
    assert args.features == ["a/*.tfrecord", "b/*.tfrecord"] and args.input is None
    assert (args.top_k, args.min_confidence, args.per_video, args.classifier_batch_size) == (5, 0.5, True, 8)
    assert (args.show, args.large_model, args.weights, args.overwrite) == (2, True, "w.h5", True)


@pytest.mark.parametrize("missing", ["--model", "--output"])
def test_model_and_output_are_required(missing, capsys):
    argv = {"--input": "v", "--model": "m", "--output": "o"}
    del argv[missing]
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args([item for pair in argv.items() for item in pair])
    assert caught.value.code == 2 and missing in capsys.readouterr().err


EITHER = "give either --input (videos) or --features (records), not both and not neither"


@pytest.mark.parametrize("extra, message", [
    ([], EITHER),
    (["--input", "v", "--features", "f"], EITHER),
    (["--input", "v", "--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["--input", "v", "--min-confidence", "1.5"], "--min-confidence must be within 0..1, got 1.5"),
    (["--input", "v", "--min-confidence", "-0.1"], "--min-confidence must be within 0..1, got -0.1"),
    (["--input", "v", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--features", "f", "--segments", "10"], "--segments labels windows of videos, and feature records hold no "
                                              "frames: give --input videos, or drop --segments"),
    (["--input", "v", "--segment-stride", "5"], "--segment-stride needs --segments SECONDS"),
    (["--input", "v", "--segments", "0"], "--segments must be a positive number of seconds, got 0"),
    (["--input", "v", "--segments", "10", "--segment-stride", "-1"],
     "--segment-stride must be a positive number of seconds, got -1"),
    (["--input", "v", "--segments", "nan"], "--segments must be a positive number of seconds, got nan"),
])
def test_bad_flag_values_are_user_errors(extra, message):
    with pytest.raises(UserError) as caught:
        _parse(["--model", "m", "--output", "o", *extra])
    assert str(caught.value) == message


def test_parse_hands_unknown_flags_to_beam():
    args, beam_args = _parse(["--input", "v", "--model", "m", "--output", "o", "--runner", "DirectRunner",
                              "--direct_num_workers=2"])
    assert args.input == ["v"] and beam_args == ["--runner", "DirectRunner", "--direct_num_workers=2"]


def upstream_labels(pipeline, label: str) -> set[str]:
    """The full labels of every transform whose output reaches the transform `label` (as input or side input)."""
    from apache_beam.pipeline import PipelineVisitor

    class Find(PipelineVisitor):
        found = None

        def visit_transform(self, node):
            if node.full_label == label:
                Find.found = node

    pipeline.visit(Find())
    assert Find.found is not None, f"no transform {label}"
    seen, todo = set(), [Find.found]
    while todo:
        node = todo.pop()
        for pcoll in [*node.inputs, *(side.pvalue for side in node.side_inputs)]:
            producer = getattr(pcoll, "producer", None)
            if producer is not None and producer.full_label not in seen:
                seen.add(producer.full_label)
                todo.append(producer)
    return seen


@pytest.mark.parametrize("extra", [[], ["--per-video", "--segments", "1"]])
def test_publishing_takes_every_output_it_publishes_as_an_input(extra, tmp_path, monkeypatch):
    """No runner can publish before the files are written: each write is upstream of the publishing step
    (Beam orders steps only by their data; the order they are written in means nothing)."""
    import apache_beam as beam

    from beam_jobs import predict
    from test_report import make_model_dir, predict_args, write_clips

    model = make_model_dir(tmp_path / "model")
    clips = write_clips(tmp_path / "clips", per_class=1, seed=1)
    built = []

    class Built(Exception):
        pass

    def capture(pipeline, *args, **kwargs):
        built.append(pipeline)
        raise Built

    monkeypatch.setattr(beam.Pipeline, "run", capture)
    with pytest.raises(Built):
        predict.run(predict_args(clips, model, tmp_path / "out", *extra))
    upstream = upstream_labels(built[0], "PublishOutputs/Publish")
    writers = ["WriteIndex", "WriteLabelShards", "WriteFailureShards", "WriteRemoved", "StageThumbnails"]
    if extra:
        writers += ["WritePerVideo", "StageTracks", "WriteSegmentShards", "WriteEventShards"]
    for writer in writers:
        assert any(label.split("/")[0] == writer for label in upstream), f"{writer} is not an input of publishing"
