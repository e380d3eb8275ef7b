"""Labelling end to end (benchmark 5 of issue 6): `python -m beam_jobs.predict` from a folder of videos to
labels.csv, on the same clips as the featurize benchmark, with a model trained by the accuracy benchmark.

Its steady-state rate comes, like featurize's, from its output growing while it runs: the report's
thumbnail strips (one JPEG per video, staged as each video is decoded) are counted against time. As a check
that the labels mean something, the share of clips labelled with their folder's class is reported too.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np

from bench.harness import WORK_DIR, JobRun, log, python_module, run_job


def _thumbnails(output: Path) -> int:
    return sum(1 for p in output.rglob("*.jpg"))


def label_videos(name: str, clips: Path, model: Path, batch_size: int = 32) -> dict:
    output = WORK_DIR / "runs" / name
    shutil.rmtree(output, ignore_errors=True)
    job = run_job(name, python_module(
        "beam_jobs.predict", "--runner", "DirectRunner", "--input", str(clips), "--model", str(model),
        "--output", str(output), "--batch-size", str(batch_size), "--overwrite"),
        probe=lambda: _thumbnails(output)).check()
    with open(output / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    correct = sum(row["label"] == row["video_id"].split("/", 1)[0] for row in rows)
    steady = _steady_videos_per_s(job, len(rows))
    log(f"{name}: {len(rows)} videos labelled in {job.wall_s:.1f}s, {correct} with their folder's class")
    return {
        "videos": len(rows), "wall_s": round(job.wall_s, 2), "cpu_s": round(job.cpu_s, 2),
        "whole_job_videos_per_s": round(len(rows) / job.wall_s, 3),
        "steady_state_videos_per_s": round(steady, 3) if steady == steady else None,
        "labelled_as_folder_class": round(correct / len(rows), 4),
        "peak_rss_mb": round(job.peak_rss_mb, 1), "peak_pss_mb": round(job.peak_pss_mb, 1),
        "load_before": job.load_before,
    }


def _steady_videos_per_s(job: JobRun, videos: int, low: float = 0.1, high: float = 0.9) -> float:
    samples = np.array(job.samples)
    t, done = samples[:, 0], samples[:, 2]
    window = (done >= low * videos) & (done <= high * videos)
    if window.sum() < 3 or done.max() < videos:
        return float("nan")
    return float(np.polyfit(t[window], done[window], 1)[0])
