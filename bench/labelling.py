"""Labelling end to end (benchmark 5 of issue 6): `python -m beam_jobs.predict` from a folder of videos to
labels.csv, on the same clips as the featurize benchmark, with a model trained by the accuracy benchmark.

It writes nothing until the end, so its steady-state rate comes from the progress lines it logs every 10 s
(frames embedded, seconds since start). As a check that the labels mean something, the share of clips
labelled with their folder's class is reported too.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from bench.harness import WORK_DIR, log, progress_frames_per_s, python_module, run_job
from bench.throughput import FRAMES_PER_VIDEO


def label_videos(name: str, clips: Path, model: Path, batch_size: int = 32) -> dict:
    output = WORK_DIR / "runs" / name
    shutil.rmtree(output, ignore_errors=True)
    job = run_job(name, python_module(
        "beam_jobs.predict", "--runner", "DirectRunner", "--input", str(clips), "--model", str(model),
        "--output", str(output), "--batch-size", str(batch_size), "--overwrite")).check()
    with open(output / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    correct = sum(row["label"] == row["video_id"].split("/", 1)[0] for row in rows)
    steady = progress_frames_per_s(job.log_path) / FRAMES_PER_VIDEO
    log(f"{name}: {len(rows)} videos labelled in {job.wall_s:.1f}s, {correct} with their folder's class")
    return {
        "videos": len(rows), "wall_s": round(job.wall_s, 2), "cpu_s": round(job.cpu_s, 2),
        "whole_job_videos_per_s": round(len(rows) / job.wall_s, 3),
        "steady_state_videos_per_s": round(steady, 3) if steady == steady else None,
        "labelled_as_folder_class": round(correct / len(rows), 4),
        "peak_rss_mb": round(job.peak_rss_mb, 1), "peak_pss_mb": round(job.peak_pss_mb, 1),
        "load_before": job.load_before,
    }
