"""Review in Label Studio without a server (beam_jobs.review, beam_jobs.reviewed_labels): the labelling config,
the tasks `predict --review` writes (URLs, predictions, timeline predictions, most uncertain first, only what
the run labelled anew), the bounded selection of tasks, and the importer's handling of exports, good and bad.
The round trip through a real Label Studio is tests/test_label_studio.py."""

from __future__ import annotations

import csv
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import apache_beam as beam
import pytest

from beam_jobs import review
from beam_jobs.reviewed_labels import run as import_review
from common.errors import UserError
from test_graph_size import built  # noqa: F401 (a fixture)
from test_predict_segments import colour_model, segment_args, write_colour_clip  # noqa: F401 (a fixture)

LABELS = ("blue", "green", "red")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_config_has_one_choice_per_class_and_timeline_labels_with_segments():
    plain = ET.fromstring(review.labelling_config(("a&b", "c"), segments=False))
    assert plain.find("Video").get("name") == review.VIDEO and plain.find("Video").get("value") == "$video"
    choices = plain.find("Choices")
    assert (choices.get("name"), choices.get("toName")) == (review.CHOICES, review.VIDEO)
    assert [c.get("value") for c in choices.findall("Choice")] == ["a&b", "c"]
    assert plain.find("TimelineLabels") is None
    timeline = ET.fromstring(review.labelling_config(LABELS, segments=True)).find("TimelineLabels")
    assert (timeline.get("name"), timeline.get("toName")) == (review.TIMELINE, review.VIDEO)
    assert [(label.get("value"), label.get("background")[0]) for label in timeline] == [(c, "#") for c in LABELS]


def test_video_urls_for_local_files_and_cloud_storage(tmp_path):
    clip = tmp_path / "a dir" / "v#1.avi"
    assert review.video_url(str(clip), str(tmp_path)) == "/data/local-files/?d=a%20dir/v%231.avi"
    assert review.video_url(clip.as_uri(), str(tmp_path)) == "/data/local-files/?d=a%20dir/v%231.avi"
    from_root = str(clip).lstrip("/").replace(" ", "%20").replace("#", "%23")
    assert review.video_url(str(clip), "/") == "/data/local-files/?d=" + from_root
    assert review.video_url("gs://bucket/x.mp4", str(tmp_path)) == "gs://bucket/x.mp4"
    assert review.video_url("/elsewhere/x.mp4", str(tmp_path)) is None


def test_seconds_become_label_studios_one_based_frames():
    assert review.frame_range(0.0, 2.4) == {"start": 1, "end": 60}
    assert review.frame_range(2.4, 4.0) == {"start": 61, "end": 100}
    assert review.frame_range(1.0, 1.0) == {"start": 26, "end": 26}


@pytest.mark.parametrize("extra, message", [
    (["--review-below", "0"], "--review-below must be within (0, 1], got 0.0"),
    (["--review-most", "0"], "--review-most must be at least 1, got 0"),
    (["--review-files-root", "gs://b/x"], "--review-files-root is a local folder"),
    (["--review-files-root", "/nowhere"], "is not under --review-files-root /nowhere"),
])
def test_bad_review_flags_are_user_errors(extra, message, tmp_path):
    from beam_jobs.predict import _parse

    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _parse(["--input", str(tmp_path), "--model", "m", "--output", "o", *extra])


def test_any_review_flag_turns_review_on(tmp_path):
    from beam_jobs.predict import _parse

    args, _ = _parse(["--input", str(tmp_path), "--model", "m", "--output", "o", "--review-most", "5"])
    assert (args.review, args.review_most, args.review_below, args.review_files_root) == (True, 5, None, "/")
    args, _ = _parse(["--input", str(tmp_path), "--model", "m", "--output", "o"])
    assert not args.review


def row(video_id: str, confidence: float, label: str = "red") -> dict:
    return {"video_id": video_id, "video_uri": f"/clips/{video_id}", "label": label, "confidence": f"{confidence:.6f}",
            "top_k": f"{label}:{confidence:.6f};blue:{1 - confidence:.6f}"}


@pytest.mark.parametrize("below, most, expected", [
    (None, None, ["d", "b", "c", "a", "e"]),
    (0.5, None, ["d", "b"]),
    (None, 3, ["d", "b", "c"]),
    (0.7, 1, ["d"]),
])
def test_tasks_are_chosen_and_ordered_most_uncertain_first(below, most, expected, tmp_path):
    rows = [row("a", 0.9), row("b", 0.4), row("c", 0.6), row("d", 0.35), row("e", 1.0)]
    events = [("b", ["b", "red", "", "", "1.000", "2.000", "0.7", "2"]),
              ("b", ["b", "blue", "", "", "0.000", "1.000", "0.6", "1"]),
              ("x", ["x", "red", "", "", "0.000", "1.000", "0.9", "1"])]  # a video without a task
    with beam.Pipeline() as pipeline:
        counts = ({"rows": pipeline | "Rows" >> beam.Create(rows), "events": pipeline | "Events" >> beam.Create(events)}
                  | review.WriteReviewTasks(str(tmp_path), "model-1", "/clips", below, most))
        _ = counts | beam.Map(lambda n: (tmp_path / "count").write_text(str(n)))
    tasks = json.loads((tmp_path / review.TASKS_FILE).read_text())
    assert [t["data"]["video_id"] for t in tasks] == expected and (tmp_path / "count").read_text() == str(len(expected))
    for task in tasks:
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "model-1" and prediction["score"] == task["data"]["confidence"]
        assert prediction["result"][0]["value"] == {"choices": ["red"]} and task["data"]["model_label"] == "red"
        assert task["data"]["video"] == f"/data/local-files/?d={task['data']['video_id']}"
    if "b" in expected:
        timeline = [r for r in tasks[expected.index("b")]["predictions"][0]["result"] if r["type"] == "timelinelabels"]
        assert [(r["value"]["timelinelabels"], r["value"]["ranges"], r["score"]) for r in timeline] == [
            (["blue"], [{"start": 1, "end": 25}], 0.6), (["red"], [{"start": 26, "end": 50}], 0.7)]


def test_no_tasks_is_an_empty_list(tmp_path):
    with beam.Pipeline() as pipeline:
        _ = ({"rows": pipeline | "Rows" >> beam.Create([])}
             | review.WriteReviewTasks(str(tmp_path), "model-1", "/", 0.5, 10))
    assert json.loads((tmp_path / review.TASKS_FILE).read_text()) == []


# --- predict --review end to end ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reviewed_run(colour_model, tmp_path_factory):  # noqa: F811
    """predict --segments --review-most 2 over three clips and a broken file."""
    from beam_jobs import predict

    root = tmp_path_factory.mktemp("review")
    clips = root / "clips"
    clips.mkdir()
    write_colour_clip(clips / "pieces.avi", (("red", 12), ("blue", 12)), seed=7)
    write_colour_clip(clips / "red.avi", [("red", 10)], seed=8)
    write_colour_clip(clips / "blue.avi", [("blue", 10)], seed=9)
    (clips / "broken.mp4").write_bytes(b"not a video" * 50)
    output = root / "labels"
    predict.run(segment_args(clips, colour_model, output, 1.0, 1.0)
                + ["--review-most", "2", "--review-files-root", str(root)])
    return root, clips, output


def test_predict_writes_the_config_and_the_least_confident_tasks(reviewed_run):
    _, _, output = reviewed_run
    manifest = json.loads((output / "manifest.json").read_text())
    config = ET.fromstring((output / review.CONFIG_FILE).read_text())
    assert [c.get("value") for c in config.find("Choices")] == manifest["labels"] == list(LABELS)
    assert [label.get("value") for label in config.find("TimelineLabels")] == list(LABELS)
    rows = sorted(read_csv(output / "labels.csv"), key=lambda r: (float(r["confidence"]), r["video_id"]))
    tasks = json.loads((output / review.TASKS_FILE).read_text())
    assert len(rows) == 3 and [t["data"]["video_id"] for t in tasks] == [r["video_id"] for r in rows[:2]]
    events = read_csv(output / "events.csv")
    for task, labelled in zip(tasks, rows):
        (prediction,) = task["predictions"]
        assert prediction["score"] == float(labelled["confidence"])
        assert prediction["model_version"] == manifest["model_id"]
        assert prediction["result"][0]["value"]["choices"] == [labelled["top_k"].split(":")[0]]
        assert task["data"]["video"] == f"/data/local-files/?d=clips/{labelled['video_id']}"
        timeline = [(r["value"]["timelinelabels"][0], r["value"]["ranges"][0]) for r in prediction["result"][1:]]
        assert timeline == [(e["label"], review.frame_range(float(e["start_s"]), float(e["end_s"])))
                            for e in events if e["video_id"] == labelled["video_id"]]
        assert timeline


def test_incremental_runs_write_tasks_only_for_videos_labelled_anew(reviewed_run, colour_model, tmp_path):  # noqa: F811
    from beam_jobs import predict

    root, clips, first = reviewed_run
    output = tmp_path / "labels"
    shutil.copytree(first, output)
    write_colour_clip(clips.parent / "green.avi", [("green", 10)], seed=10)
    more = root / "more"
    shutil.copytree(clips, more, dirs_exist_ok=True)
    shutil.move(clips.parent / "green.avi", more / "green.avi")
    predict.run(segment_args(more, colour_model, output, 1.0, 1.0) + ["--review", "--review-files-root", str(root)])
    assert json.loads((output / "manifest.json").read_text())["labelled_this_run"] == 1
    tasks = json.loads((output / review.TASKS_FILE).read_text())
    assert [(t["data"]["video_id"], t["data"]["video"]) for t in tasks] == [
        ("green.avi", "/data/local-files/?d=more/green.avi")]
    predict.run(segment_args(more, colour_model, output, 1.0, 1.0))  # without --review: no stale tasks are left
    assert not (output / review.REVIEW_DIR).exists()


# --- Reading an export back ----------------------------------------------------------------------------------

def export_task(video_id, model_label, *annotations, data=None):
    return {"id": hash(video_id) % 1000, "data": data or {"video_id": video_id, "model_label": model_label},
            "annotations": list(annotations)}


def chose(label, cancelled=False, when="2026-01-01T00:00:00Z", from_name=review.CHOICES, **extra):
    result = [{"from_name": from_name, "to_name": review.VIDEO, "type": "choices", "value": {"choices": [label]}}]
    return {"result": [] if label is None else result, "was_cancelled": cancelled, "updated_at": when, **extra}


@pytest.fixture
def run_dir(tmp_path):
    """A finished labelling run's manifest and labels.csv (what the importer reads of it)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"job": "predict", "labels": list(LABELS), "model_id": "m"}))
    (run / "labels.csv").write_text("video_id,video_uri,label,confidence\n"
                                    + "".join(f"{v},/c/{v},red,0.5\n" for v in ("a.avi", "b.avi", "c.avi", "d.avi")))
    return run


def write_export(tmp_path, tasks) -> str:
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    return str(path)


def test_accepted_and_corrected_labels_become_a_labels_csv(run_dir, tmp_path, capsys):
    export = write_export(tmp_path, [
        export_task("a.avi", "red", chose("red")),
        export_task("b.avi", "red", chose("red", when="2026-01-01T00:00:00Z"),
                    chose("blue", when="2026-01-02T00:00:00Z")),
        export_task("c.avi", "blue", chose("blue", cancelled=True)),  # skipped
        export_task("d.avi", "blue", chose(None)),  # opened, nothing chosen
        export_task("d.avi", "blue"),  # imported twice, never annotated
        export_task("c.avi", "green", chose("red"), chose("green", ground_truth=True, when="2025-01-01T00:00:00Z")),
    ])
    counts = import_review([export, "--run", str(run_dir), "--output", str(tmp_path / "reviewed.csv")])
    assert read_csv(tmp_path / "reviewed.csv") == [{"video_name": "a.avi", "tag": "red"},
                                                   {"video_name": "b.avi", "tag": "blue"},
                                                   {"video_name": "c.avi", "tag": "green"}]
    assert counts == {"reviewed": 3, "accepted": 2, "corrected": 1, "unreviewed": 3, "left_out": 0}
    out = capsys.readouterr()
    assert "3 reviewed labels" in out.out and "2 accepted as the model labelled them, 1 corrected" in out.out
    assert [line.split() for line in out.out.splitlines()[1:]] == [["model", "\\", "reviewed", "blue"], ["red", "1"]]
    assert out.err == ""

    from beam_jobs.matching import read_labels_csv

    assert read_labels_csv(str(tmp_path / "reviewed.csv")) == {"a.avi": "red", "b.avi": "blue", "c.avi": "green"}


def test_bad_parts_of_an_export_get_one_line_each_and_the_rest_is_kept(run_dir, tmp_path, capsys):
    export = write_export(tmp_path, [
        export_task("a.avi", "red", chose("red")),
        export_task("b.avi", "red", chose("purple")),
        export_task("e.avi", "red", chose("red")),
        export_task("f.avi", "red", chose("blue")),
        export_task("c.avi", "red", chose("pos", from_name="sentiment")),
        {"id": 9, "data": {"text": "hello"}, "annotations": [chose("red")]},
    ])
    counts = import_review([export, "--run", str(run_dir), "--output", str(tmp_path / "reviewed.csv")])
    assert counts["reviewed"] == 1 and counts["left_out"] == 5
    assert read_csv(tmp_path / "reviewed.csv") == [{"video_name": "a.avi", "tag": "red"}]
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "warning: 1 left out, classes the model does not know: purple (b.avi)",
        "warning: 1 left out, tasks annotated with another labelling config: c.avi (choices:sentiment)",
        "warning: 1 left out, tasks of another labelling config (no video_id in their data): task 9",
        f"warning: 2 left out, videos not in the run {run_dir}: e.avi, f.avi",
    ]


@pytest.mark.parametrize("content, message", [
    ([export_task("a.avi", "red", chose("red", cancelled=True))], "no reviewed labels in .*: 1 task.s. skipped"),
    ([export_task("z.avi", "red", chose("red"))], "no reviewed labels .* 1 left out; nothing written"),
    ({"tasks": []}, "is not a list of tasks"),
    ("not json", "is not JSON"),
])
def test_an_export_with_nothing_usable_fails_and_writes_nothing(content, message, run_dir, tmp_path):
    path = tmp_path / "export.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(UserError, match=message):
        import_review([str(path), "--run", str(run_dir), "--output", str(tmp_path / "reviewed.csv")])
    assert not (tmp_path / "reviewed.csv").exists()


def test_the_run_must_be_a_finished_labelling_run(tmp_path):
    export = write_export(tmp_path, [])
    with pytest.raises(UserError, match="holds no finished labelling run"):
        import_review([export, "--run", str(tmp_path), "--output", str(tmp_path / "r.csv")])
    (tmp_path / "manifest.json").write_text(json.dumps({"job": "featurize"}))
    with pytest.raises(UserError, match="the output of a featurize job"):
        import_review([export, "--run", str(tmp_path), "--output", str(tmp_path / "r.csv")])


def test_the_command_exits_2_with_one_line_when_nothing_is_usable(run_dir, tmp_path):
    import subprocess
    import sys

    export = write_export(tmp_path, [export_task("a.avi", "red")])
    done = subprocess.run([sys.executable, "-m", "beam_jobs.reviewed_labels", export, "--run", str(run_dir),
                           "--output", str(tmp_path / "r.csv")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: no reviewed labels in {export}: 1 task(s) skipped or not "
                                                "labelled, 0 left out; nothing written"]


def test_the_review_steps_do_not_grow_the_graph_with_the_videos(tmp_path, built):  # noqa: F811
    from beam_jobs import predict
    from test_graph_size import make_model_dir, previous_run, videos

    model_dir = make_model_dir(tmp_path / "model")
    for count in (10, 5000):
        clips = videos(tmp_path / f"clips_{count}", count)
        output = tmp_path / f"labels_{count}"
        previous_run(output, model_dir, clips, count)
        predict.run(["--input", str(clips), "--model", str(model_dir), "--output", str(output), "--review-most", "100",
                     "--review-below", "0.9", "--review-files-root", str(tmp_path), "--runner", "DirectRunner"])
    small, large = built
    assert abs(large - small) <= 0.01 * small, (small, large)
