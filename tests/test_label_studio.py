"""The review round trip through a real Label Studio (`make labelstudio`; tools/label_studio.py): the labelling
job's config and tasks go into a project through the REST API, the server shows the model's predictions and
serves the videos, a reviewer's annotations correct one video and accept another, and the export, read back by
beam_jobs.reviewed_labels, is the labels CSV featurize takes; the model trained on it knows the correction."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import read_records

from test_predict_segments import colour_model, write_colour_clip  # noqa: F401 (a fixture)
from tools.label_studio import LabelStudioServer, installed

pytestmark = pytest.mark.skipif(bool(installed()), reason=installed() or "")


def read_csv(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row.get("video_id") or row["video_name"]: row for row in csv.DictReader(f)}


def choose(label: str) -> dict:
    """A reviewer's annotation: `label` chosen for the whole video."""
    return {"result": [{"from_name": "label", "to_name": "video", "type": "choices", "value": {"choices": [label]}}],
            "was_cancelled": False}


def test_a_review_round_trip_through_label_studio(colour_model, tmp_path):  # noqa: F811
    from beam_jobs import featurize, predict, review
    from beam_jobs.reviewed_labels import run as import_review
    from model import train

    clips = tmp_path / "clips"
    clips.mkdir()
    write_colour_clip(clips / "red.avi", [("red", 10)], seed=1)
    write_colour_clip(clips / "blue.avi", [("blue", 10)], seed=2)
    labels = tmp_path / "labels"
    predict.run(["--input", str(clips), "--model", str(colour_model), "--output", str(labels), "--batch-size", "8",
                 "--runner", "DirectRunner", "--review", "--review-files-root", str(tmp_path)])
    rows = read_csv(labels / "labels.csv")
    assert {v: r["label"] for v, r in rows.items()} == {"red.avi": "red", "blue.avi": "blue"}
    model_id = json.loads((labels / "manifest.json").read_text())["model_id"]
    tasks = json.loads((labels / review.TASKS_FILE).read_text())

    with LabelStudioServer(tmp_path / "label-studio", files_root=tmp_path) as server:
        project = server.create_review_project("Review of the labels", (labels / review.CONFIG_FILE).read_text(), clips)
        task_ids = server.import_tasks(project, tasks)
        shown = {task["data"]["video_id"]: task for task in (server.api("GET", f"/api/tasks/{i}") for i in task_ids)}
        assert set(shown) == {"red.avi", "blue.avi"}
        for video_id, task in shown.items():
            (prediction,) = task["predictions"]
            assert prediction["score"] == pytest.approx(float(rows[video_id]["confidence"]))
            assert prediction["model_version"] == model_id
            assert prediction["result"][0]["value"]["choices"] == [rows[video_id]["label"]]
            # The video plays from the local-files storage: the task's URL gives the clip's bytes.
            assert server.api("GET", task["data"]["video"], raw=True) == (clips / video_id).read_bytes()
        server.api("POST", f"/api/tasks/{shown['red.avi']['id']}/annotations", choose("red"))  # accepted
        server.api("POST", f"/api/tasks/{shown['blue.avi']['id']}/annotations", choose("green"))  # corrected
        export = tmp_path / "export.json"
        export.write_bytes(server.export(project))

    counts = import_review([str(export), "--run", str(labels), "--output", str(tmp_path / "reviewed.csv")])
    assert (counts["accepted"], counts["corrected"], counts["unreviewed"]) == (1, 1, 0)
    assert {v: r["tag"] for v, r in read_csv(tmp_path / "reviewed.csv").items()} == {"red.avi": "red",
                                                                                     "blue.avi": "green"}

    features, retrained = tmp_path / "features", tmp_path / "retrained"
    featurize.run(["--input", str(clips), "--labels", str(tmp_path / "reviewed.csv"), "--output", str(features),
                   "--weights", "random", "--image-size", "32", "--max-seq-length", "4", "--runner", "DirectRunner"])
    assert {r.video_id: r.label for r in read_records(features).values()} == {"red.avi": "red", "blue.avi": "green"}
    # Training's validation set: the same two clips under other ids (sets given apart may not share an id).
    validation_clips = tmp_path / "validation_clips"
    validation_clips.mkdir()
    for name in ("red.avi", "blue.avi"):
        shutil.copy(clips / name, validation_clips / f"again_{name}")
    (tmp_path / "validation.csv").write_text("video_name,tag\nagain_red.avi,red\nagain_blue.avi,green\n")
    featurize.run(["--input", str(validation_clips), "--labels", str(tmp_path / "validation.csv"), "--output",
                   str(tmp_path / "validation"), "--weights", "random", "--image-size", "32", "--max-seq-length", "4",
                   "--runner", "DirectRunner"])
    train.run(["--train", str(features), "--validation", str(tmp_path / "validation"), "--output", str(retrained),
               "--epochs", "30", "--patience", "0", "--start-from-epoch", "0", "--learning-rate", "0.01",
               "--ema-momentum", "0", "--batch-size", "2", "--seed", "1"])
    relabelled = tmp_path / "relabelled"
    predict.run(["--features", str(features / "features-*.tfrecord"), "--model", str(retrained), "--output",
                 str(relabelled), "--runner", "DirectRunner"])
    assert {v: r["label"] for v, r in read_csv(relabelled / "labels.csv").items()} == {"red.avi": "red",
                                                                                      "blue.avi": "green"}
