"""Training from feature records: it learns frame order, is reproducible, and refuses bad input clearly."""

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import train
from model.cli import UserError
from model.export import load_model_dir
from tfrecords_schema import RecordError, VideoRecord, encode_video_record, write_vocabulary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES, DIM = 8, 16
# Fast settings: the small model learns the toy task in a few epochs at a higher learning rate. (The kept
# weights are the moving average, which trails the raw ones by a few steps: 12 epochs were enough without it.)
# Every epoch is judged (no warm-up), so a short run keeps its best epoch; batch 16 (the default is 32) gives
# the ~50 training clips 4 steps an epoch.
FAST = ["--epochs", "16", "--learning-rate", "0.01", "--seed", "1", "--start-from-epoch", "0", "--batch-size", "16"]


def make_records(directory, per_class, seed, shards=2, dim=DIM, backbone="test-net", order=1):
    """Order-dependent clips: "up" features ramp up along one direction over the valid frames, "down" is the
    same ramp reversed, so only frame order tells them apart. 3..8 valid frames, the rest padding.
    Returns the records written (in write order)."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(0).normal(size=dim).astype("float32")
    records = []
    for label in ("down", "up"):
        for i in range(per_class):
            valid = int(rng.integers(3, FRAMES + 1))
            ramp = np.linspace(0.0, 1.0, valid, dtype="float32")
            features = np.zeros((FRAMES, dim), "float32")
            features[:valid] = (ramp if label == "up" else ramp[::-1])[:, None] * direction
            features[:valid] += 0.3 * rng.normal(size=(valid, dim))
            records.append(VideoRecord(
                video_id=f"{label}-{seed}-{i}", uri=f"file:///clips/{label}/{seed}-{i}.mp4", label=label,
                features=features, num_valid_frames=valid, frame_indices=list(range(valid)), source_fps=25.0,
                decoded_frame_count=valid, frame_height=64, frame_width=64, backbone_id=backbone, image_size=224))
    write_records(directory, records[::order], shards)
    return records


def write_records(directory, records, shards):
    os.makedirs(directory, exist_ok=True)
    writers = [tf.io.TFRecordWriter(os.path.join(directory, f"features-{i:05d}-of-{shards:05d}.tfrecord"))
               for i in range(shards)]
    for i, record in enumerate(records):
        writers[i % shards].write(encode_video_record(record))
    for writer in writers:
        writer.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    make_records(str(root / "train"), per_class=30, seed=1)
    make_records(str(root / "test"), per_class=15, seed=2)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("runs") / "model")
    metrics = train.run(["--train", str(data / "train"), "--test", str(data / "test"), "--output", output, *FAST])
    return output, metrics


def read_history(output):
    with open(os.path.join(output, "history.csv")) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_training_lowers_the_loss_and_beats_chance(trained):
    output, metrics = trained
    history = read_history(output)
    assert len(history) == metrics["epochs_run"] == 16
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert min(row["val_loss"] for row in history) < history[0]["val_loss"]
    # Two classes: chance is 50%. Held-out clips the model never saw.
    assert metrics["test_accuracy"] >= 0.9
    assert metrics["val_accuracy"] >= 0.8
    assert metrics["num_test_examples"] == 30
    assert metrics["num_train_examples"] + metrics["num_val_examples"] == 60


def test_model_directory_is_complete(trained, data):
    output, metrics = trained
    names = set(os.listdir(output))
    assert {"model.keras", "labels.txt", "preprocessing.json", "saved_model", "history.csv",
            "training_curves.png", "metrics.json", "logs"} <= names
    assert not os.path.exists(output + ".partial")
    assert not {"checkpoints", "train_state.json"} & names
    with open(os.path.join(output, "metrics.json")) as f:
        assert json.load(f) == metrics
    for key in ("train", "val", "test"):
        assert 0.0 <= metrics[f"{key}_accuracy"] <= 1.0 and metrics[f"{key}_loss"] >= 0.0
    assert metrics["seed"] == 1 and metrics["labels"] == ["down", "up"]
    # Eight attention heads by default (bench/ANALYSIS.md 7h), in the exported model as in the metrics.
    assert metrics["classifier"]["num_heads"] == metrics["config"]["num_heads"] == 8
    loaded = load_model_dir(output)
    assert loaded.model_id == metrics["model_id"]
    assert loaded.labels == ["down", "up"]
    assert dataclasses.asdict(loaded.spec)["feature_dim"] == DIM and loaded.spec.backbone_id == "test-net"
    assert loaded.model.get_layer("transformer_layer").attention.key_dim == DIM // 8
    # The kept weights are the best epoch's by validation loss.
    history = read_history(output)
    best = min(range(len(history)), key=lambda i: history[i]["val_loss"])
    assert metrics["best_epoch"] == best + 1
    assert metrics["best_val_loss"] == pytest.approx(history[best]["val_loss"], rel=1e-6)
    assert metrics["val_loss"] == pytest.approx(metrics["best_val_loss"], rel=1e-3, abs=1e-5)
    with open(os.path.join(output, "training_curves.png"), "rb") as f:
        png = f.read()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    assert os.listdir(os.path.join(output, "logs", "train")) and os.listdir(os.path.join(output, "logs", "validation"))


def test_same_seed_same_model(trained, data, tmp_path):
    output, metrics = trained
    again = train.run(["--train", str(data / "train"), "--test", str(data / "test"),
                       "--output", str(tmp_path / "again"), *FAST])
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
                "best_epoch", "epochs_run"):
        assert again[key] == metrics[key], key
    first, second = load_model_dir(output).model, load_model_dir(str(tmp_path / "again")).model
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_validation_split_depends_on_the_video_id_only(data, tmp_path):
    records = make_records(str(tmp_path / "resharded"), per_class=30, seed=1, shards=3, order=-1)
    ids = [r.video_id for r in records]
    held_out = train.in_validation_split(tf.constant(ids), 0.15).numpy()
    scanned = {}
    for name in ("train", "resharded"):
        pattern = str(data / "train") if name == "train" else str(tmp_path / "resharded")
        found = train._scan("training", [pattern])
        split = train.in_validation_split(tf.constant(found.video_ids.astype(str)), 0.15).numpy()
        scanned[name] = set(found.video_ids[split])
    assert scanned["train"] == scanned["resharded"] == {i for i, h in zip(ids, held_out) if h}
    many = train.in_validation_split(tf.constant([f"clip-{i}" for i in range(4000)]), 0.15).numpy()
    assert 0.12 < many.mean() < 0.18


def test_early_stopping_stops_after_patience_epochs(data, tmp_path):
    stopped = train.run(["--train", str(data / "train"), "--output", str(tmp_path / "stop"), "--epochs", "50",
                         "--patience", "1", "--learning-rate", "0.5", "--seed", "2", "--start-from-epoch", "0"])
    assert stopped["stopped_early"] and stopped["epochs_run"] == stopped["best_epoch"] + 1 < 50


def test_resume_continues_an_interrupted_run(data, tmp_path, monkeypatch):
    output = str(tmp_path / "model")
    args = ["--train", str(data / "train"), "--output", output, "--epochs", "4", "--patience", "0", *FAST[2:]]
    original = train.TrainingState.on_epoch_end

    def crash_after_two(self, epoch, logs=None):
        original(self, epoch, logs)
        if self.epochs_done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train.TrainingState, "on_epoch_end", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        train.run(args)
    monkeypatch.undo()
    assert not os.path.exists(output) and os.path.exists(output + ".partial")
    with pytest.raises(UserError, match="batch_size"):
        train.run(args + ["--resume", "--batch-size", "8"])
    # The interrupted run's moving average of the weights is in its optimizer, so it goes on averaging.
    last = keras.saving.load_model(os.path.join(output + ".partial", "checkpoints", "last.keras"))
    assert last.optimizer.use_ema and int(last.optimizer.iterations) > 0
    averages = [keras.ops.convert_to_numpy(v) for v in last.optimizer._model_variables_moving_average]
    assert all(np.any(a) for a in averages)
    assert any(not np.allclose(a, w) for a, w in zip(averages, last.get_weights()))
    metrics = train.run(args + ["--resume"])
    # --patience 0: no early stopping, all --epochs run (the reference recipe is --epochs 5 --patience 0 --lr-patience 0
    # --ema-momentum 0 --start-from-epoch 0 --num-heads 1).
    assert metrics["epochs_run"] == 4 and not metrics["stopped_early"]
    assert [row["epoch"] for row in read_history(output)] == [1, 2, 3, 4]


def test_remote_output_is_staged_locally_then_copied(data, monkeypatch):
    # ram:// stands in for gs://: the run is staged locally and copied, metrics.json last.
    output = "ram://test-train/model"
    args = ["--train", str(data / "train"), "--output", output, "--epochs", "2"]
    copy_file = tf.io.gfile.copy

    def network_down(source, destination, overwrite=False):
        if destination.endswith("saved_model.pb"):
            raise tf.errors.UnavailableError(None, None, "network down")
        copy_file(source, destination, overwrite=overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", network_down)
    with pytest.raises(tf.errors.UnavailableError):
        train.run(args)
    monkeypatch.undo()
    assert tf.io.gfile.exists(output + "/model.keras") and not tf.io.gfile.exists(output + "/metrics.json")
    # The copy is retried from the staged run; training is not repeated.
    metrics = train.run(args + ["--resume"])
    assert metrics["epochs_run"] == 2 and metrics["train_seconds"] == 0.0
    assert tf.io.gfile.exists(output + "/metrics.json") and tf.io.gfile.exists(output + "/saved_model")
    assert not tf.io.gfile.exists(output + "/checkpoints") and not tf.io.gfile.exists(output + "/train_state.json")
    assert load_model_dir(output).model_id == metrics["model_id"]
    assert not os.path.exists(train.staging_dir(output))
    with pytest.raises(UserError, match="--overwrite"):
        train.run(["--train", str(data / "train"), "--output", output])


def test_user_mistakes_are_refused(trained, data, tmp_path):
    output, _ = trained
    with pytest.raises(UserError, match="--overwrite"):
        train.run(["--train", str(data / "train"), "--output", output])
    with pytest.raises(RecordError, match="no feature records match"):
        train.run(["--train", str(tmp_path / "nothing-*.tfrecord"), "--output", str(tmp_path / "m")])
    # A vocabulary next to the records that lacks a label of the records.
    make_records(str(tmp_path / "vocab"), per_class=3, seed=5)
    write_vocabulary(str(tmp_path / "vocab" / "labels.txt"), ["down", "left"])
    with pytest.raises(UserError, match="'up', which is not in the vocabulary"):
        train.run(["--train", str(tmp_path / "vocab"), "--output", str(tmp_path / "m")])
    # One shard whose later records have another feature dim than its first.
    mixed = make_records(str(tmp_path / "a"), 2, seed=6)[:2] + make_records(str(tmp_path / "b"), 2, seed=6, dim=8)
    write_records(str(tmp_path / "mixed"), mixed, shards=1)
    with pytest.raises(UserError, match=r"training records: a record does not fit the others \(feature_dim 16"):
        train.run(["--train", str(tmp_path / "mixed"), "--output", str(tmp_path / "m")])
    with pytest.raises(UserError, match="--validation-split"):
        train.run(["--train", str(data / "train"), "--output", str(tmp_path / "m"), "--validation-split", "1.5"])
    with pytest.raises(UserError, match=r"--num-heads must divide the records' feature dim \(16\), got 3"):
        train.run(["--train", str(data / "train"), "--output", str(tmp_path / "m"), "--num-heads", "3"])
    with pytest.raises(UserError, match="--num-heads must be at least 1"):
        train.run(["--train", str(data / "train"), "--output", str(tmp_path / "m"), "--num-heads", "0"])
    assert not os.path.exists(tmp_path / "m") and not os.path.exists(tmp_path / "m.partial")


def test_cli_refuses_mismatched_records_with_one_line(data, tmp_path):
    make_records(str(tmp_path / "narrow"), per_class=3, seed=3, dim=8)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}
    done = subprocess.run(
        [sys.executable, "-m", "model.train", "--train", str(data / "train"), "--validation",
         str(tmp_path / "narrow"), "--output", str(tmp_path / "model")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    # TensorFlow's C++ start-up logging (absl format) is not ours; everything else is the one error line.
    ours = [line for line in done.stderr.splitlines()
            if line.strip() and not re.match(r"^(WARNING: All log messages before absl|[IWEF]\d{4} )", line)]
    assert ours == [f"error: validation records ({tmp_path / 'narrow'}) do not match the training records: "
                    "feature_dim 8 (expected 16)"]
    assert not os.path.exists(tmp_path / "model") and not os.path.exists(tmp_path / "model.partial")


def test_learning_rate_halves_when_the_validation_loss_stalls_and_survives_resume(tmp_path):
    import keras

    from model.classifier import ClassifierConfig, build_classifier, compile_classifier

    staging = str(tmp_path / "run.partial")
    model = compile_classifier(build_classifier(ClassifierConfig(num_classes=2, max_seq_length=4, feature_dim=8)))
    state = train.TrainingState(staging, patience=0, fingerprint={}, lr_patience=2)
    state.set_model(model)
    # Best at epoch 1, then no improvement: halved after epochs 3 and 5; a new best at 6 restarts the count.
    for epoch, val_loss in enumerate([1.0, 1.1, 1.2, 1.3, 1.4, 0.9, 1.0]):
        state.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5, "val_loss": val_loss, "val_accuracy": 0.5})
    rates = [row["learning_rate"] for row in read_history(staging)]
    assert rates == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])
    assert state.best_epoch == 6 and state.last_lr_change == 5
    # --resume takes the lowered rate from the last model and the count from the state file.
    with open(os.path.join(staging, train.STATE_FILE)) as f:
        resumed = train.TrainingState(staging, patience=0, fingerprint={}, state=json.load(f), lr_patience=2)
    reloaded = keras.saving.load_model(resumed.last_model_path)
    assert float(keras.ops.convert_to_numpy(reloaded.optimizer.learning_rate)) == pytest.approx(2.5e-4)
    resumed.set_model(reloaded)
    resumed.on_epoch_end(7, {"loss": 1.0, "val_loss": 1.0})  # two epochs since the best (6): halved again
    assert float(keras.ops.convert_to_numpy(reloaded.optimizer.learning_rate)) == pytest.approx(1.25e-4)
    assert train.MIN_LEARNING_RATE < 1.25e-4


def test_warm_up_epochs_are_not_judged(tmp_path):
    from model.classifier import ClassifierConfig, build_classifier, compile_classifier

    staging = str(tmp_path / "run.partial")
    model = compile_classifier(build_classifier(ClassifierConfig(num_classes=2, max_seq_length=4, feature_dim=8)))
    state = train.TrainingState(staging, patience=3, fingerprint={}, lr_patience=1, start_from_epoch=3)
    state.set_model(model)
    # Epoch 1 has the lowest loss but is warm-up: the best is epoch 4, the first judged one. The rate then
    # halves after each epoch without a lower loss (history logs the rate an epoch ran at), and the run
    # stops 3 epochs after epoch 4.
    for epoch, val_loss in enumerate([0.1, 0.5, 0.6, 1.0, 1.1, 1.2, 1.3, 1.4]):
        state.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5, "val_loss": val_loss, "val_accuracy": 0.5})
        if state.model.stop_training:
            break
    assert state.best_epoch == 4 and state.best_val_loss == pytest.approx(1.0)
    assert state.stopped_early and state.epochs_done == 7
    rates = [row["learning_rate"] for row in read_history(staging)]
    assert rates == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 2.5e-4])
    with pytest.raises(UserError, match="--start-from-epoch"):
        train.parse_args(["--train", "x", "--output", "y", "--start-from-epoch", "-1"])


def test_a_run_shorter_than_the_warm_up_keeps_its_last_averaged_weights(data, tmp_path):
    output = str(tmp_path / "model")
    metrics = train.run(["--train", str(data / "train"), "--output", output, "--epochs", "3",
                         "--start-from-epoch", "5", *FAST[2:6]])
    assert metrics["best_epoch"] == 0 and metrics["best_val_loss"] is None and metrics["epochs_run"] == 3
    # The exported weights are the last epoch's moving average, the weights validated after that epoch.
    assert metrics["val_loss"] == pytest.approx(read_history(output)[-1]["val_loss"], rel=1e-4)


def test_lr_patience_zero_keeps_the_learning_rate(tmp_path):
    from model.classifier import ClassifierConfig, build_classifier, compile_classifier

    model = compile_classifier(build_classifier(ClassifierConfig(num_classes=2, max_seq_length=4, feature_dim=8)))
    state = train.TrainingState(str(tmp_path / "run.partial"), patience=0, fingerprint={}, lr_patience=0)
    state.set_model(model)
    for epoch in range(5):
        state.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0 + epoch, "val_accuracy": 0.5})
    assert [row["learning_rate"] for row in read_history(str(tmp_path / "run.partial"))] == pytest.approx([1e-3] * 5)
    with pytest.raises(UserError, match="--lr-patience"):
        train.parse_args(["--train", "x", "--output", "y", "--lr-patience", "-1"])


def test_averaged_weights_are_swapped_in_and_back():
    from model.classifier import ClassifierConfig, build_classifier, compile_classifier

    model = compile_classifier(build_classifier(ClassifierConfig(num_classes=2, max_seq_length=FRAMES, feature_dim=DIM)),
                               learning_rate=0.01, ema_momentum=0.9)
    x = {"features": np.random.default_rng(0).normal(size=(4, FRAMES, DIM)).astype("float32"),
         "mask": np.ones((4, FRAMES), bool)}
    for _ in range(5):
        model.train_on_batch(x, np.array([0, 1, 0, 1]))
    raw = model.get_weights()
    averages = [keras.ops.convert_to_numpy(v) for v in model.optimizer._model_variables_moving_average]
    with train.averaged_weights(model):
        for inside, average in zip(model.get_weights(), averages):
            np.testing.assert_array_equal(inside, average)
    for after, before in zip(model.get_weights(), raw):
        np.testing.assert_array_equal(after, before)
    assert any(not np.allclose(a, r) for a, r in zip(averages, raw))


def test_ema_momentum_is_checked():
    with pytest.raises(UserError, match="--ema-momentum"):
        train.parse_args(["--train", "x", "--output", "y", "--ema-momentum", "1"])
    assert train.parse_args(["--train", "x", "--output", "y"]).ema_momentum == 0.99


def test_feature_noise_multiplies_training_features_afresh_each_epoch():
    features = np.full((64, FRAMES, DIM), 2.0, "float32")
    features[:, -1] = 0.0  # e.g. padding: stays zero
    mask = np.ones((64, FRAMES), bool)
    source = tf.data.Dataset.from_tensor_slices(({"features": features, "mask": mask}, np.arange(64)))

    def epoch(ds):
        items = list(ds.as_numpy_iterator())
        assert [label for _, label in items] == list(range(64))
        assert all((inputs["mask"] == mask[0]).all() for inputs, _ in items)
        return np.stack([inputs["features"] for inputs, _ in items])

    noisy = train.with_feature_noise(source, 0.2, seed=3)
    first, second = epoch(noisy), epoch(noisy)
    factors = first[:, :-1] / 2.0
    assert (factors > 0).all() and (first[:, -1] == 0).all()
    assert abs(factors.mean() - 1.0) < 0.01 and abs(np.log(factors).std() - 0.2) < 0.01
    assert not np.allclose(first, second)  # fresh noise every epoch
    np.testing.assert_array_equal(epoch(train.with_feature_noise(source, 0.2, seed=3)), first)
    assert not np.allclose(epoch(train.with_feature_noise(source, 0.2, seed=4)), first)
    with pytest.raises(UserError, match="--feature-noise"):
        train.parse_args(["--train", "x", "--output", "y", "--feature-noise", "-0.1"])
