"""A job whose lease is taken over before it publishes refuses to publish (issue 40, item 5): another run took
the output over while this one stalled, so the output is the other run's. Whole jobs, in this process, with
the takeover made at the start of their publishing step; and training, which holds the same lease.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from common.errors import EXIT_LEASE_HELD, LeaseHeld
from common.lease import LEASE_FILE
from test_report import FRAMES, IMAGE_SIZE, make_model_dir, predict_args, write_clips

TAKER = {"run_id": "taker0000000", "job": "predict", "host": "elsewhere", "pid": 1, "token": "taker-token",
         "started_at": "2026-01-01T00:00:00+00:00", "renewed_at": 0, "expires_at": 4_000_000_000.0}


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def take_over(output: Path):
    """What a run that took the lease over does to the lease file, while this one is stalled."""

    def before_publishing(*args, _real, **kwargs):
        (output / LEASE_FILE).write_text(json.dumps(TAKER))
        return _real(*args, **kwargs)

    return before_publishing


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("fencing_clips"), per_class=1, seed=4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("fencing_model") / "model")


def test_predict_whose_lease_was_taken_over_does_not_publish(clips, model_dir, tmp_path, monkeypatch):
    from beam_jobs import predict, publish_labels

    output = tmp_path / "labels"
    predict.run(predict_args(clips, model_dir, output))
    before = tree(output)
    real = publish_labels.merge_sorted_shards
    monkeypatch.setattr(publish_labels, "merge_sorted_shards", lambda *a, **k: take_over(output)(*a, _real=real, **k))
    with pytest.raises(Exception, match="no longer holds the lease"):
        predict.run(predict_args(clips, model_dir, output, "--overwrite"))
    after = tree(output)
    assert json.loads(after.pop(LEASE_FILE))["run_id"] == TAKER["run_id"]  # the taker's lease is left to it
    assert after == before  # the previous output untouched: not a file removed, moved or written


def test_featurize_whose_lease_was_taken_over_does_not_publish(clips, tmp_path, monkeypatch):
    from beam_jobs import featurize

    output = tmp_path / "features"
    args = ["--input", str(clips), "--output", str(output), "--weights", "random", "--image-size", str(IMAGE_SIZE),
            "--max-seq-length", str(FRAMES), "--runner", "DirectRunner"]
    featurize.run(args)
    before = tree(output)
    real = featurize.merge_sorted_shards
    monkeypatch.setattr(featurize, "merge_sorted_shards", lambda *a, **k: take_over(output)(*a, _real=real, **k))
    with pytest.raises(Exception, match="no longer holds the lease"):
        featurize.run([*args, "--overwrite"])
    after = tree(output)
    assert json.loads(after.pop(LEASE_FILE))["run_id"] == TAKER["run_id"]
    assert after == before


def test_training_holds_the_lease_on_its_output(tmp_path, monkeypatch):
    """A second training run on the same output, while the first runs, is refused with exit 75."""
    from conftest import make_records
    from model import train

    records = tmp_path / "records"
    make_records(records, per_class=4, seed=1)
    output = tmp_path / "model"
    args = ["--train", str(records), "--output", str(output), "--epochs", "1", "--patience", "0",
            "--validation-split", "0.25", "--seed", "1"]
    second = []
    real_promote = train.promote

    def promote_with_another_run_starting(*a, **k):  # the first run is still running here
        with pytest.raises(LeaseHeld) as refused:
            train.run(args + ["--overwrite"])
        second.append(refused.value)
        real_promote(*a, **k)

    monkeypatch.setattr(train, "promote", promote_with_another_run_starting)
    train.run(args)
    (refused,) = second
    assert refused.exit_code == EXIT_LEASE_HELD and "is being written by another run" in str(refused)
    assert os.path.exists(output / "metrics.json") and not os.path.exists(output / LEASE_FILE)
    # A run whose lease was taken over while it trained does not publish.
    shutil.rmtree(output)
    monkeypatch.setattr(train, "promote", lambda *a, _real=real_promote, **k: (
        (output / LEASE_FILE).write_text(json.dumps(TAKER)), _real(*a, **k)))
    with pytest.raises(Exception, match="no longer holds the lease"):
        train.run(args)
    assert sorted(os.listdir(output)) == [LEASE_FILE]
