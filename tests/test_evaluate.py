"""Evaluation of a model directory on labelled records: metrics, confusion matrix, misclassified videos."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from common.errors import UserError
from model import evaluate
from model.classifier import ClassifierConfig, build_classifier, compile_classifier
from model.export import export_model_dir, load_model_dir
from tfrecords_schema import VideoRecord, encode_video_record

FRAMES, DIM = 8, 16
LABELS = ["flat", "rise", "sink"]


def clip(label, index, seed, dim=DIM):
    """A labelled record: "rise"/"sink" ramp up/down over the valid frames, "flat" stays level."""
    rng = np.random.default_rng([seed, index, LABELS.index(label) if label in LABELS else 9])
    valid = int(rng.integers(3, FRAMES + 1))
    ramp = {"rise": np.linspace(0, 1, valid), "sink": np.linspace(1, 0, valid)}.get(label, np.full(valid, 0.5))
    features = np.zeros((FRAMES, dim), "float32")
    features[:valid] = ramp[:, None] * np.linspace(-1, 1, dim)[None, :] + 0.3 * rng.normal(size=(valid, dim))
    return VideoRecord(video_id=f"{label}-{seed}-{index}", uri=f"file:///{label}/{index}.mp4", label=label,
                       features=features, num_valid_frames=valid, frame_indices=list(range(valid)),
                       source_fps=30.0, decoded_frame_count=valid, frame_height=48, frame_width=64,
                       backbone_id="test-net", image_size=224)


def write_records(path, records):
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(encode_video_record(record))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    train = [clip(label, i, seed=1) for label in LABELS for i in range(20)]
    keras_inputs = {"features": np.stack([r.features for r in train]), "mask": np.stack([r.mask for r in train]) > 0}
    config = ClassifierConfig(num_classes=3, max_seq_length=FRAMES, feature_dim=DIM)
    model = compile_classifier(build_classifier(config), learning_rate=0.01)
    model.fit(keras_inputs, np.array([LABELS.index(r.label) for r in train]), epochs=4, batch_size=16, verbose=0)
    export_model_dir(model, LABELS, train[0].spec, str(root / "model"), saved_model=False)
    held_out = [clip(label, i, seed=2) for label in LABELS for i in range(8)]
    write_records(str(root / "test-00000-of-00002.tfrecord"), held_out[::2])
    write_records(str(root / "test-00001-of-00002.tfrecord"), held_out[1::2])
    return root, held_out


def test_classification_report_by_hand():
    true_ids = np.array([0, 0, 0, 1, 1, 2])
    probabilities = np.eye(3)[[0, 0, 1, 1, 1, 1]] * 0.8 + 0.2 / 3  # predictions 0 0 1 1 1 1
    report = evaluate.classification_report(true_ids, probabilities, ["a", "b", "c"])
    assert report["num_examples"] == 6 and report["accuracy"] == pytest.approx(4 / 6)
    assert report["confusion_matrix"] == {"labels": ["a", "b", "c"], "matrix": [[2, 1, 0], [0, 2, 0], [0, 1, 0]]}
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (1.0, pytest.approx(2 / 3), 3)
    assert a["f1"] == pytest.approx(0.8)
    assert (b["precision"], b["recall"]) == (0.5, 1.0) and b["f1"] == pytest.approx(2 / 3)
    assert c == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # never predicted: 0, not NaN
    assert report["macro_avg"]["recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert report["loss"] == pytest.approx(-np.mean(np.log(probabilities[np.arange(6), true_ids])))


def test_evaluation_outputs(setup, capsys):
    root, held_out = setup
    output = root / "results"
    result = evaluate.run(["--model", str(root / "model"), "--data", str(root / "test-*.tfrecord"),
                           "--output", str(output), "--batch-size", "5"])
    with open(output / "evaluation.json") as f:
        assert json.load(f) == result
    matrix = np.array(result["confusion_matrix"]["matrix"])
    assert result["confusion_matrix"]["labels"] == LABELS
    assert matrix.shape == (3, 3) and matrix.sum() == result["num_examples"] == len(held_out)
    assert matrix.sum(axis=1).tolist() == [8, 8, 8]
    assert result["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    for label, scores in result["per_class"].items():
        assert all(0.0 <= scores[k] <= 1.0 for k in ("precision", "recall", "f1")), label
        assert scores["support"] == 8
    assert result["model_id"] == load_model_dir(str(root / "model")).model_id
    wrong = result["misclassified"]
    assert len(wrong) == matrix.sum() - np.trace(matrix)
    by_id = {r.video_id: r.label for r in held_out}
    for item in wrong:
        assert by_id[item["video_id"]] == item["label"] != item["predicted"] and 0 < item["confidence"] <= 1
    with open(output / "confusion_matrix.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"accuracy {result['accuracy']:.4f}" in printed
    assert all(label in printed for label in LABELS) and "confusion matrix" in printed


def test_default_output_is_inside_the_model_directory(setup):
    root, _ = setup
    evaluate.run(["--model", str(root / "model"), "--data", str(root / "test-00000-of-00002.tfrecord")])
    assert os.path.exists(root / "model" / "evaluation" / "evaluation.json")
    # A model directory without a model card (not written by model.train) does not get one.
    assert not os.path.exists(root / "model" / "README.md")


def test_records_that_do_not_fit_are_refused(setup, tmp_path):
    root, _ = setup
    write_records(str(tmp_path / "wide.tfrecord"), [clip("rise", 0, seed=3, dim=32)])
    with pytest.raises(UserError, match=r"do not match the model .*feature_dim 32 \(expected 16\)"):
        evaluate.run(["--model", str(root / "model"), "--data", str(tmp_path / "wide.tfrecord")])
    write_records(str(tmp_path / "unknown.tfrecord"), [clip("spin", 0, seed=3)])
    with pytest.raises(UserError, match="label 'spin', which the model does not know"):
        evaluate.run(["--model", str(root / "model"), "--data", str(tmp_path / "unknown.tfrecord")])
    with pytest.raises(UserError, match="is not a model directory: it has no model.keras"):
        evaluate.run(["--model", str(tmp_path), "--data", str(tmp_path / "unknown.tfrecord")])


def test_cli_reports_a_missing_model_in_one_line(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-m", "model.evaluate", "--model", str(tmp_path / "none"), "--data", str(tmp_path)],
        cwd=repo, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": repo},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    # TensorFlow's C++ start-up logging (absl format) is not ours; everything else is the one error line.
    ours = [line for line in done.stderr.splitlines()
            if line.strip() and not re.match(r"^(WARNING: All log messages before absl|[IWEF]\d{4} )", line)]
    assert ours == [f"error: model directory {tmp_path / 'none'} does not exist"]
