"""A featurize run killed midway (SIGKILL: no cleanup code runs) leaves nothing under the final names that a
reader could take for a finished output, and the same command run again completes normally."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from beam_jobs import featurize
from beam_jobs.records import BUNDLES_DIR
from tools.sample_videos import write_sample_set
from tfrecords_schema import decode_video_record


def staged_bundle_files(output) -> list[str]:
    """The files the records' writer opens in the staging folder, one a bundle, once records are written."""
    return [str(p) for p in output.glob(f".staging-*/{BUNDLES_DIR}/*")]


def child_processes(pid: int) -> list[int]:
    """Children of `pid` (Linux): the frame decoder, once the first video is being decoded."""
    children = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(task) as f:
                children += [int(c) for c in f.read().split()]
        except OSError:  # the thread ended
            pass
    return children


def midway(job, output) -> bool:
    """The pipeline is writing into the staging folder and decoding videos."""
    return bool(staged_bundle_files(output)) and bool(child_processes(job.pid))


LEASE_TTL_S = 2.0  # the killed run's lease on the output expires this long after its last renewal


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds the decoder process through Linux /proc")
def test_killed_run_leaves_no_finished_looking_output_and_a_rerun_completes(tmp_path):
    clips, output = tmp_path / "clips", tmp_path / "out"
    written = write_sample_set(str(clips), per_class=2, seed=5, min_frames=12, max_frames=24,
                               sizes=[(64, 48)], codecs=["MJPG"])
    args = ["--input", str(clips), "--output", str(output), "--weights", "random", "--image-size", "32",
            "--max-seq-length", "4", "--runner", "DirectRunner", "--lease-ttl", str(LEASE_TTL_S)]
    job = subprocess.Popen([sys.executable, "-m", "beam_jobs.featurize", *args], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not midway(job, output) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.poll() is None, "the run ended before it could be killed:\n" + job.stderr.read().decode()
        assert midway(job, output), "the pipeline did not start decoding within 240 s"
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)  # the job and its decoder child, like a lost machine
        job.wait()
        job.stderr.close()
    assert job.returncode == -signal.SIGKILL

    final_names = sorted(p.name for p in output.iterdir() if not p.name.startswith(".staging-"))
    assert final_names == [".lease.json"]  # no manifest.json, features-*.tfrecord, labels.txt or failures.csv
    assert len(list(output.glob(".staging-*"))) == 1

    time.sleep(LEASE_TTL_S + 0.5)  # the dead run's lease expires; the next run takes it over
    featurize.run(args)  # no --overwrite needed: nothing finished is there
    assert not (output / ".lease.json").exists()
    manifest = json.loads((output / "manifest.json").read_text())
    assert (manifest["videos_matched"], manifest["records_written"], manifest["failures"]) == (
        len(written), len(written), 0)
    assert not list(output.glob(".staging-*"))  # the killed run's staging folder is gone too
    shards = sorted(str(p) for p in output.glob("features-*.tfrecord"))
    assert [p.rsplit("/", 1)[-1] for p in shards] == manifest["shards"]
    ids = sorted(decode_video_record(raw).video_id for shard in shards
                 for raw in tf.data.TFRecordDataset(shard).as_numpy_iterator())
    assert ids == sorted(path for path, _ in written)
