"""The same inputs, options and seed give the same records and the same labels, run after run.

Each job runs twice into separate outputs. Records are compared by video id (which shard holds a record is
the runner's choice), features within 1e-5, everything else exactly; labels.csv row by row.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from beam_jobs import featurize, predict
from tools.sample_videos import write_sample_set
from conftest import read_csv, read_records

FRAMES, IMAGE_SIZE = 4, 32
RUN_SPECIFIC = {"finished_at", "output", "seconds", "run_id"}  # manifest fields that name the run, not the data


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    write_sample_set(str(root), per_class=1, seed=9, min_frames=10, max_frames=40, sizes=[(64, 48), (80, 60)])
    (root / "labels.csv").unlink()
    return root


@pytest.fixture(scope="module")
def featurized_twice(clips, tmp_path_factory):
    outputs = []
    for attempt in ("first", "second"):
        output = tmp_path_factory.mktemp(attempt) / "features"
        featurize.run(["--input", str(clips), "--output", str(output), "--weights", "random:7",
                       "--max-seq-length", str(FRAMES), "--image-size", str(IMAGE_SIZE), "--batch-size", "5",
                       "--num-shards", "2", "--runner", "DirectRunner"])
        outputs.append(output)
    return outputs


def test_featurize_twice_gives_the_same_records(featurized_twice):
    first, second = (read_records(output) for output in featurized_twice)
    assert len(first) == 6 and first.keys() == second.keys()
    for video_id, record in first.items():
        again = second[video_id]
        np.testing.assert_allclose(again.features, record.features, atol=1e-5, rtol=0)
        assert dataclasses.replace(again, features=None) == dataclasses.replace(record, features=None)
        assert record.backbone_id == "densenet121/random-seed7" and record.num_valid_frames == FRAMES


def test_featurize_twice_gives_the_same_side_files(featurized_twice):
    first, second = featurized_twice
    for name in ("labels.txt", "failures.csv"):
        assert (first / name).read_text() == (second / name).read_text()
    manifests = [json.loads((output / "manifest.json").read_text()) for output in featurized_twice]
    for manifest in manifests:
        manifest["options"].pop("output", None)
    assert {k: v for k, v in manifests[0].items() if k not in RUN_SPECIFIC} == {
        k: v for k, v in manifests[1].items() if k not in RUN_SPECIFIC}


@pytest.fixture(scope="module")
def labelled_twice(clips, featurized_twice, tmp_path_factory):
    import keras

    from model.classifier import ClassifierConfig, build_classifier
    from model.export import export_model_dir
    from tfrecords_schema import RecordSpec

    labels = (featurized_twice[0] / "labels.txt").read_text().split()
    keras.utils.set_random_seed(3)
    model = build_classifier(ClassifierConfig(num_classes=len(labels), max_seq_length=FRAMES))
    model_dir = tmp_path_factory.mktemp("model") / "model"
    export_model_dir(model, labels, RecordSpec(1024, FRAMES, "densenet121/random-seed7", IMAGE_SIZE),
                     str(model_dir), saved_model=False)
    outputs = []
    for attempt in ("first", "second"):
        output = tmp_path_factory.mktemp(f"labels-{attempt}") / "labels"
        predict.run(["--input", str(clips), "--model", str(model_dir), "--output", str(output),
                     "--batch-size", "5", "--runner", "DirectRunner"])
        outputs.append(output)
    return labels, outputs


def test_predict_twice_gives_the_same_labels(labelled_twice):
    labels, (first, second) = labelled_twice
    rows, again = read_csv(first / "labels.csv"), read_csv(second / "labels.csv")
    assert len(rows) == 6 and [r["video_id"] for r in rows] == [r["video_id"] for r in again]
    probability_columns = [f"p_{label}" for label in labels] + ["confidence"]
    for row, other in zip(rows, again):
        assert {k: v for k, v in row.items() if k not in probability_columns and k != "top_k"} == {
            k: v for k, v in other.items() if k not in probability_columns and k != "top_k"}
        np.testing.assert_allclose([float(other[c]) for c in probability_columns],
                                   [float(row[c]) for c in probability_columns], atol=1e-5, rtol=0)
        assert [pair.split(":")[0] for pair in row["top_k"].split(";")] == [
            pair.split(":")[0] for pair in other["top_k"].split(";")]
    assert (first / "failures.csv").read_text() == (second / "failures.csv").read_text()
