"""Training speed (benchmark 4 of issue 6): `python -m model.train` on ~600 videos of synthetic feature
records (random features, 6 labels; speed does not depend on what the features mean).

Seconds per epoch come from the wall times of the per-epoch TensorBoard summaries the trainer writes
(`logs/train`): the gap between consecutive epochs is one whole epoch as a user waits for it (the training
pass, the validation pass, the per-epoch checkpoints). The first epoch, which includes tracing, is left out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from bench.data import write_records
from bench.harness import TRAIN_SOURCES, WORK_DIR, cached, log, median, python_module, run_job

CLASSES = 6
FRAMES = 20
FEATURE_DIM = 1024
BACKBONE_ID = "densenet121/random-seed1337"


def synthetic_records(videos: int, seed: int = 0) -> Path:
    """`videos` records of random features (10-20 valid frames of 20), labels spread over 6 classes."""
    def build(directory: Path) -> None:
        from tfrecords_schema import VideoRecord, encode_video_record

        rng = np.random.default_rng(seed)
        records, labels = [], []
        for i in range(videos):
            label = f"class_{i % CLASSES}"
            valid = int(rng.integers(10, FRAMES + 1))
            features = np.zeros((FRAMES, FEATURE_DIM), np.float32)
            features[:valid] = rng.standard_normal((valid, FEATURE_DIM)).astype(np.float32)
            record = VideoRecord(
                video_id=f"{label}/video_{i:04d}.mp4", uri=f"synthetic/{label}/video_{i:04d}.mp4", label=label,
                features=features, num_valid_frames=valid, frame_indices=list(range(valid)), source_fps=25.0,
                decoded_frame_count=valid, frame_height=128, frame_width=128, backbone_id=BACKBONE_ID,
                image_size=128,
            )
            records.append(encode_video_record(record))
            labels.append(label)
        write_records(directory / "records", records, labels)

    directory, _ = cached("synthetic", {"videos": videos, "seed": seed}, TRAIN_SOURCES, build)
    return directory / "records"


def epoch_wall_times(model_dir: Path) -> list[float]:
    """Wall time at the end of each epoch, from the trainer's TensorBoard event files."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    times: dict[int, float] = {}
    for path in sorted((model_dir / "logs" / "train").glob("events.out.tfevents.*")):
        for raw in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(raw.numpy())
            if event.summary.value:
                times.setdefault(event.step, event.wall_time)
    return [times[step] for step in sorted(times)]


def training_speed(videos: int = 600, epochs: int = 6, runs: int = 1) -> dict:
    records = synthetic_records(videos)
    results = []
    for run in range(runs):
        output = WORK_DIR / "runs" / f"train-speed-{run}"
        shutil.rmtree(output, ignore_errors=True)
        job = run_job(f"train-speed-{run}", python_module(
            "model.train", "--train", str(records), "--output", str(output), "--epochs", str(epochs),
            "--patience", "0", "--seed", str(run), "--overwrite")).check()
        metrics = json.loads((output / "metrics.json").read_text())
        ends = epoch_wall_times(output)
        per_epoch = list(np.diff(ends)) if len(ends) >= 2 else [metrics["train_seconds"] / metrics["epochs_run"]]
        results.append({
            "wall_s": round(job.wall_s, 2), "cpu_s": round(job.cpu_s, 2),
            "train_seconds": metrics["train_seconds"], "epochs": metrics["epochs_run"],
            "num_train_examples": metrics["num_train_examples"], "num_val_examples": metrics["num_val_examples"],
            "seconds_per_epoch_each": [round(float(x), 3) for x in per_epoch],
            "batch_size": metrics["config"]["batch_size"],
            "peak_rss_mb": round(job.peak_rss_mb, 1), "load_before": job.load_before,
        })
        log(f"train-speed-{run}: {metrics['epochs_run']} epochs in {metrics['train_seconds']}s of fit, "
            f"{job.wall_s:.1f}s in all")
    seconds_per_epoch = median(x for r in results for x in r["seconds_per_epoch_each"])
    examples = results[0]["num_train_examples"]
    return {
        "videos": videos,
        "num_train_examples": examples,
        "num_val_examples": results[0]["num_val_examples"],
        "batch_size": results[0]["batch_size"],  # the trainer's default
        "seconds_per_epoch": round(seconds_per_epoch, 3),
        "train_examples_per_s": round(examples / seconds_per_epoch, 1),
        "whole_command_s": round(median(r["wall_s"] for r in results), 2),
        "epochs_per_run": epochs,
        "runs": results,
    }
