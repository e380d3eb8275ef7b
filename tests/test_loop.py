"""The training loop's parts that test_train's end-to-end runs do not pin: the resume fingerprint, which
weights are kept, scores without a set, the curves, and training on several devices."""

import json
import logging
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from model import loop
from model.classifier import ClassifierConfig, build_classifier, compile_classifier
from model.config import TrainConfig
from model.data import load_training_data
from model.datasets import model_datasets
from conftest import make_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    make_records(str(root / "train"), per_class=10, seed=1, shards=1)
    make_records(str(root / "validation"), per_class=2, seed=2, shards=1)
    return load_training_data([str(root / "train")], [str(root / "validation")])


def test_the_fingerprint_holds_what_a_resumed_run_must_share(data):
    config = TrainConfig(train=("train",), validation=("validation",), output="m")
    found = loop.fingerprint(config, data)
    assert set(found) == {"train_files", "validation_files", "validation_split", "batch_size", "learning_rate",
                          "lr_patience", "ema_momentum", "start_from_epoch", "num_heads", "seed", "labels",
                          "record_spec", "split_by"}
    assert found["train_files"] == list(data.train.files) and found["validation_files"] == list(data.validation.files)
    assert found["validation_split"] is None and found["labels"] == ["down", "up"] and found["split_by"] == ""
    assert found["record_spec"]["feature_dim"] == 16 and found["num_heads"] == 8
    # What may change on --resume: the epoch budget, patience, caching (it never changes the order) and where
    # the model goes.
    relaxed = TrainConfig(train=("train",), validation=("validation",), output="elsewhere", epochs=7, patience=2,
                          cache="none", resume=True)
    assert loop.fingerprint(relaxed, data) == found
    assert loop.fingerprint(TrainConfig(train=("t",), validation=("v",), output="m", seed=5), data)["seed"] == 5


def small_model():
    return compile_classifier(build_classifier(ClassifierConfig(num_classes=2, max_seq_length=8, feature_dim=16)))


def test_keep_best_loads_the_best_epoch_or_keeps_the_last(tmp_path, caplog):
    best, model = small_model(), small_model()
    best.save_weights(str(tmp_path / "best.weights.h5"))
    last = model.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(best.get_weights(), last))
    tracker = types.SimpleNamespace(best_epoch=0, epochs_done=3, best_weights_path=str(tmp_path / "best.weights.h5"))
    with caplog.at_level(logging.WARNING, logger="model.loop"):
        loop.keep_best(model, tracker, start_from_epoch=5)
        loop.keep_best(model, types.SimpleNamespace(**{**vars(tracker), "epochs_done": 8}), start_from_epoch=5)
    assert [r.getMessage() for r in caplog.records] == [
        "all 3 epochs were warm-up (--start-from-epoch 5), none was judged; keeping the last epoch's weights",
        "the validation loss was never finite; keeping the last epoch's weights"]
    for kept, before in zip(model.get_weights(), last):
        np.testing.assert_array_equal(kept, before)
    loop.keep_best(model, types.SimpleNamespace(**{**vars(tracker), "best_epoch": 2}), start_from_epoch=0)
    for kept, wanted in zip(model.get_weights(), best.get_weights()):
        np.testing.assert_array_equal(kept, wanted)


def test_scores_of_a_missing_set_are_none(data):
    assert loop.evaluate(small_model(), None, batch_size=4) == {"loss": None, "accuracy": None}
    datasets = model_datasets(data, batch_size=4, seed=0)
    scores = loop.evaluate(small_model(), datasets.validation, batch_size=4)
    assert 0.0 <= scores["accuracy"] <= 1.0 and scores["loss"] > 0


def test_training_curves_are_drawn_from_the_history(tmp_path, monkeypatch):
    from model import plots
    from model.callbacks import write_history

    rows = [{"epoch": e, "loss": 1.0 / e, "accuracy": 0.1 * e, "val_loss": 1.2 / e, "val_accuracy": 0.05 * e,
             "learning_rate": 1e-3} for e in range(1, 6)]
    write_history(str(tmp_path / "history.csv"), rows)
    figures, png = [], plots._png  # the figure as drawn, before it becomes PNG bytes
    monkeypatch.setattr(plots, "_png", lambda figure: figures.append(figure) or png(figure))
    loop.write_training_curves(str(tmp_path), best_epoch=4)
    with open(os.path.join(tmp_path, "training_curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    (figure,) = figures
    assert [axes.get_title() for axes in figure.axes] == ["Loss", "Accuracy"]
    for axes, metric in zip(figure.axes, ("loss", "accuracy")):
        lines = {line.get_label(): line for line in axes.get_lines()}
        assert set(lines) == {"training", "validation", "kept (epoch 4)"}
        for name, key in (("training", metric), ("validation", f"val_{metric}")):
            assert list(lines[name].get_xdata()) == [1, 2, 3, 4, 5]
            np.testing.assert_allclose(lines[name].get_ydata(), [row[key] for row in rows], rtol=1e-6)
        assert list(lines["kept (epoch 4)"].get_xdata()) == [4, 4]  # a vertical line at the kept epoch
        assert "kept (epoch 4)" in [text.get_text() for text in axes.get_legend().get_texts()]


# Two logical CPU devices stand in for two GPUs; they must be set up before TensorFlow starts, so in a child.
MIRRORED = """
import json, sys
import tensorflow as tf

cpu, = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from model import loop, train

devices = [device.name for device in tf.config.list_logical_devices("CPU")]
loop.distribution_strategy = lambda: tf.distribute.MirroredStrategy(devices)
print(json.dumps(train.run(sys.argv[1:])))
"""


def test_mirrored_strategy_on_two_devices_trains_and_exports_a_model_that_loads_and_labels(tmp_path):
    from model.evaluate import predict_records
    from model.export import load_model_dir

    make_records(str(tmp_path / "train"), per_class=30, seed=1)
    make_records(str(tmp_path / "test"), per_class=10, seed=2)
    output = tmp_path / "model"
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED, "--train", str(tmp_path / "train"), "--test", str(tmp_path / "test"),
         "--output", str(output), "--epochs", "16", "--learning-rate", "0.01", "--seed", "1",
         "--start-from-epoch", "0", "--batch-size", "16", "--cache", "none"],
        cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}, capture_output=True,
        text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert metrics["replicas"] == 2 and metrics["epochs_run"] == 16
    loaded = load_model_dir(str(output))
    probabilities, video_ids, _, labels = predict_records(loaded, [str(tmp_path / "test")])
    assert probabilities.shape == (20, 2) and len(video_ids) == 20
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    predicted = [loaded.labels[i] for i in probabilities.argmax(axis=1)]
    accuracy = np.mean([p == t for p, t in zip(predicted, labels)])
    assert accuracy == pytest.approx(metrics["test_accuracy"]) and accuracy >= 0.8
