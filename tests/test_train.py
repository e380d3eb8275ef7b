"""Training end to end: it learns frame order, is reproducible, resumes, publishes whole, and refuses bad input
clearly. The parts have their own tests: test_config, test_data, test_callbacks, test_averaging."""

import csv
import dataclasses
import io
import json
import os
import re
import subprocess
import sys

import keras
import memfs
import numpy as np
import pytest

from common import fs
from common.errors import UserError
from model import callbacks, export, train
from model.export import load_model_dir
from conftest import RECORD_DIM as DIM, make_records, write_records
from tfrecords_schema import RecordError, write_vocabulary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Fast settings: the small model learns the toy task in a few epochs at a higher learning rate. (The kept
# weights are the moving average, which trails the raw ones by a few steps: 12 epochs were enough without it.)
# Every epoch is judged (no warm-up), so a short run keeps its best epoch; batch 16 (the default is 32) gives
# the ~50 training clips 4 steps an epoch.
FAST = ["--epochs", "16", "--learning-rate", "0.01", "--seed", "1", "--start-from-epoch", "0", "--batch-size", "16"]


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
            "training_curves.png", "test_confusion_matrix.png", "README.md", "metrics.json", "logs"} <= names
    assert not os.path.exists(output + ".partial")
    assert not {"checkpoints", "train_state.json"} & names
    with open(os.path.join(output, "metrics.json")) as f:
        assert json.load(f) == metrics
    for key in ("train", "val", "test"):
        assert 0.0 <= metrics[f"{key}_accuracy"] <= 1.0 and metrics[f"{key}_loss"] >= 0.0
    assert metrics["seed"] == 1 and metrics["labels"] == ["down", "up"]
    # Eight attention heads by default, in the exported model as in the metrics.
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


def test_early_stopping_stops_after_patience_epochs_and_overwrite_replaces_the_old_model(data, tmp_path):
    output = tmp_path / "stop"
    output.mkdir()
    (output / "notes.txt").write_text("not a model")
    args = ["--train", str(data / "train"), "--output", str(output), "--epochs", "50", "--patience", "1",
            "--learning-rate", "0.5", "--seed", "2", "--start-from-epoch", "0"]
    with pytest.raises(UserError, match=f"^--output {output} exists and is not empty; pass --overwrite"):
        train.run(args)
    (output / "metrics.json").write_text("{}")  # an older finished model, with a file this run does not write
    with pytest.raises(UserError, match=r"already holds a trained model \(metrics.json\); pass --overwrite"):
        train.run(args)
    stopped = train.run(args + ["--overwrite"])
    assert stopped["stopped_early"] and stopped["epochs_run"] == stopped["best_epoch"] + 1 < 50
    assert "notes.txt" not in os.listdir(output) and json.loads((output / "metrics.json").read_text()) == stopped
    assert not os.path.exists(str(output) + ".partial")


def test_resume_continues_an_interrupted_run(data, tmp_path, monkeypatch):
    output = str(tmp_path / "model")
    args = ["--train", str(data / "train"), "--output", output, "--epochs", "4", "--patience", "0", *FAST[2:]]
    original = callbacks.TrainingState.on_epoch_end

    def crash_after_two(self, epoch, logs=None):
        original(self, epoch, logs)
        if self.epochs_done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.TrainingState, "on_epoch_end", crash_after_two)
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
    # The resumed run trains only the epochs the interrupted one did not finish (training is deterministic, so a
    # run that started over would end with the same weights and history: count the epochs that run).
    ran = []

    def counting(self, epoch, logs=None):
        ran.append(epoch + 1)
        original(self, epoch, logs)

    monkeypatch.setattr(callbacks.TrainingState, "on_epoch_end", counting)
    metrics = train.run(args + ["--resume"])
    monkeypatch.undo()
    assert ran == [3, 4]
    # --patience 0: no early stopping, all --epochs run (the reference recipe is --epochs 5 --patience 0 --lr-patience 0
    # --ema-momentum 0 --start-from-epoch 0 --num-heads 1).
    assert metrics["epochs_run"] == 4 and not metrics["stopped_early"]
    assert [row["epoch"] for row in read_history(output)] == [1, 2, 3, 4]
    # The epochs after the restart read the records in the order, and drop the frames, an uninterrupted run's
    # would: the same model.
    whole = str(tmp_path / "whole")
    uninterrupted = train.run(["--train", str(data / "train"), "--output", whole, "--epochs", "4", "--patience", "0",
                               *FAST[2:]])
    assert read_history(output) == read_history(whole)
    assert (metrics["val_loss"], metrics["best_epoch"]) == (uninterrupted["val_loss"], uninterrupted["best_epoch"])
    for a, b in zip(load_model_dir(output).model.get_weights(), load_model_dir(whole).model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_streaming_reaches_the_accuracy_of_the_cached_path(trained, data, tmp_path):
    # `trained` ran with --cache auto, which keeps these few records in memory and permutes all of them every
    # epoch; streamed, the shards are read from random starting points and permuted in blocks (a disk cache
    # reads what they give: test_datasets). The same seed draws other orders, so the models differ, within
    # what another seed gives.
    _, cached = trained
    assert cached["cache"] == "memory"
    streamed = train.run(["--train", str(data / "train"), "--test", str(data / "test"), "--output",
                          str(tmp_path / "streamed"), "--cache", "none", *FAST])
    other_seed = train.run(["--train", str(data / "train"), "--test", str(data / "test"), "--output",
                            str(tmp_path / "seed"), *FAST[:4], "--seed", "2", *FAST[6:]])
    assert streamed["cache"] == "none" and streamed["test_accuracy"] >= 0.9
    spread = max(abs(other_seed["test_accuracy"] - cached["test_accuracy"]), 2 / 30)  # at least two clips
    assert abs(streamed["test_accuracy"] - cached["test_accuracy"]) <= spread


def uploaded(output):
    """{name under `output`: content} of the mem:// objects there."""
    return {path[len(output) + 1:]: content for path, (content, _) in memfs.OBJECTS.items()
            if path.startswith(output + "/")}


def test_remote_output_is_staged_locally_then_uploaded(data, monkeypatch):
    # mem:// (tests/memfs.py) stands in for gs://: the run is staged locally and uploaded, metrics.json last.
    output = "mem://test-train/model"
    args = ["--train", str(data / "train"), "--output", output, "--epochs", "2"]
    copy_file = fs.copy_file

    def network_down(source, destination):
        if fs.is_remote(destination) and destination.endswith("saved_model.pb"):
            raise OSError("network down")
        copy_file(source, destination)

    monkeypatch.setattr(fs, "copy_file", network_down)
    with pytest.raises(OSError, match="network down"):
        train.run(args)
    monkeypatch.undo()
    assert "model.keras" in uploaded(output) and "metrics.json" not in uploaded(output)
    staging = train.staging_dir(output)
    assert not fs.is_remote(staging) and {"checkpoints", "history.csv", "train_state.json"} <= set(os.listdir(staging))
    # The upload is retried from the staged run, which the failure left whole; training is not repeated.
    metrics = train.run(args + ["--resume"])
    assert metrics["epochs_run"] == 2 and metrics["train_seconds"] == 0.0
    objects = uploaded(output)
    assert {"metrics.json", "model.keras", "labels.txt", "preprocessing.json", "saved_model/saved_model.pb",
            "history.csv", "training_curves.png", "README.md"} <= set(objects)
    assert f"--model {output} " in objects["README.md"].decode()  # the card names the published directory
    assert not {name for name in objects if name.startswith(("checkpoints/", "train_state.json"))}
    assert json.loads(objects["metrics.json"]) == metrics
    assert [row["epoch"] for row in csv.DictReader(io.StringIO(objects["history.csv"].decode()))] == ["1", "2"]
    assert export.model_id(output) == metrics["model_id"]
    assert not os.path.exists(staging)
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


def test_a_run_shorter_than_the_warm_up_keeps_its_last_averaged_weights(data, tmp_path):
    output = str(tmp_path / "model")
    metrics = train.run(["--train", str(data / "train"), "--output", output, "--epochs", "3",
                         "--start-from-epoch", "5", *FAST[2:6]])
    assert metrics["best_epoch"] == 0 and metrics["best_val_loss"] is None and metrics["epochs_run"] == 3
    # The exported weights are the last epoch's moving average, the weights validated after that epoch.
    assert metrics["val_loss"] == pytest.approx(read_history(output)[-1]["val_loss"], rel=1e-4)




# --- Training on featurize's output ----------------------------------------------------------------------


class ShardOpens:
    """The opens of `*.tfrecord` files in a folder, as the kernel reports them (inotify): whoever opens them,
    TensorFlow's readers included."""

    IN_OPEN = 0x20

    def __init__(self, directory):
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or self._libc.inotify_add_watch(self.fd, os.fsencode(directory), self.IN_OPEN) < 0:
            pytest.skip(f"inotify is not available here (errno {ctypes.get_errno()})")

    def drain(self) -> list[str]:
        """The shard names opened since the last drain."""
        import struct

        names = []
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return names
            offset = 0
            while offset < len(chunk):
                _, mask, _, length = struct.unpack_from("iIII", chunk, offset)
                name = chunk[offset + 16: offset + 16 + length].rstrip(b"\0").decode()
                if mask & self.IN_OPEN and name.endswith(".tfrecord"):
                    names.append(name)
                offset += 16 + length

    def close(self):
        os.close(self.fd)


@pytest.fixture(scope="module")
def trained_on_featurize_output(featurized, tmp_path_factory):
    """A short run on the session's featurize output (real records, with their manifest), streamed, noting
    which shards were opened before its first step and after."""
    from model import loop

    opens = ShardOpens(featurized)
    seen = {}

    class FirstStep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.setdefault("before", opens.drain())

    fit = loop.fit
    loop.fit = lambda *args, **kwargs: fit(*args, **kwargs, extra_callbacks=(FirstStep(),))
    try:
        output = str(tmp_path_factory.mktemp("featurized-model") / "model")
        metrics = train.run(["--train", str(featurized), "--output", output, "--cache", "none", "--epochs", "1",
                             "--validation-split", "0.3", "--start-from-epoch", "0", "--batch-size", "8"])
        seen["after"] = opens.drain()
    finally:
        loop.fit = fit
        opens.close()
    return output, metrics, seen


def test_with_featurize_split_counts_training_reads_no_record_before_its_first_step(trained_on_featurize_output):
    _, metrics, seen = trained_on_featurize_output
    assert seen["before"] == []  # no counting pass, no first record for the spec
    assert set(seen["after"]) == {"features-00000-of-00002.tfrecord", "features-00001-of-00002.tfrecord"}
    assert metrics["num_train_examples"] + metrics["num_val_examples"] == 18


def test_the_card_names_the_engine_and_precision_of_featurize_records(featurized, trained_on_featurize_output):
    from conftest import read_records

    output, _, _ = trained_on_featurize_output
    made = {(r.engine, r.engine_version, r.precision) for r in read_records(featurized).values()}
    assert len(made) == 1 and all(made.pop())  # one engine made them, and the records say which
    (engine, version, precision), = {(r.engine, r.engine_version, r.precision)
                                     for r in read_records(featurized).values()}
    with open(os.path.join(output, "README.md"), encoding="utf-8") as f:
        card_text = f.read()
    assert f"| feature engine and precision | {engine} {version}, {precision} |" in card_text
    assert "not recorded" not in card_text
