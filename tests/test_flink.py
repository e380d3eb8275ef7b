"""The jobs on a real Flink cluster: a JobManager and two TaskManagers on hosts of their own, each TaskManager with
an EXTERNAL SDK worker pool beside it, every input and output on gs://, submitted by the launcher with Beam's
FlinkRunner (`--flink_master`, `--flink_job_server_jar`).

The hosts are tests/hosts.py's network namespaces, as in tests/test_multihost.py (whose cluster this one
extends):

- storage-a: the Cloud Storage emulator and the TLS proxy TensorFlow's GCS filesystem needs;
- jobmanager-b: Flink's JobManager (its REST API on :8081);
- taskmanager-c, taskmanager-d: a TaskManager each, and in the same network namespace (the TaskManager's Fn API
  servers are reached on localhost) a worker pool (`apache_beam.runners.worker.worker_pool_main`) running the
  sdist Beam's stager builds, installed into a venv of the host's own, without the checkout;
- the launcher in the machine's own namespace: Beam's job server for Flink runs there, as `FlinkRunner` starts it.

What it proves: featurize (gs:// clips to gs:// records), model.train from them, predict twice (the second run
labels only a new clip) and predict --segments give what an in-process run gives; Flink's REST API lists every
job FINISHED and both TaskManagers ran decoding and embedding subtasks.

Flink and the job server come from `make flink` (tools/flink.py); without them the file skips, saying why.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gcp_storage_emulator", reason="test extra gcp-storage-emulator is not installed")

from hosts import (Host, Network, flink_rest, namespaces_or_skip, start_flink,  # noqa: E402
                   wait_for_taskmanagers)
from test_multihost import (BUCKET, EMULATOR_PORT, FEATURIZE, JOB_FLAGS, POOL_PORT, Cluster,  # noqa: E402
                            EmulatedBucket, Labelled, _records, _sdist, _upload_clips, assert_same_rows)
from tools import flink  # noqa: E402

TASKMANAGERS = ("taskmanager-c", "taskmanager-d")


class FlinkCluster(Cluster):
    """The storage host, the JobManager, the TaskManagers with their pools (`workers`), and the launcher."""

    def __init__(self, network: Network, work: Path):
        self.network, self.work = network, work
        tag = network.tag
        network.add_switch()
        keep = (str(flink.flink_home().parent),)
        self.launcher = self._host(work, socket.gethostname(), 1, None)
        self.storage = self._host(work, "storage-a", 2, f"{tag}-a")
        self.jobmanager = self._host(work, "jobmanager-b", 3, f"{tag}-b")
        self.taskmanagers = [self._host(work, name, 4 + i, f"{tag}-{name[-1]}") for i, name in enumerate(TASKMANAGERS)]
        for host in (self.jobmanager, *self.taskmanagers):
            host.keep = keep
        # Each pool in its TaskManager's network namespace and folder, but isolated: no checkout, no venv.
        self.workers = [Host(tm.name, tm.address, tm.disk, tm.netns, isolated=True) for tm in self.taskmanagers]
        self.hosts = [self.launcher, self.storage, self.jobmanager, *self.taskmanagers]
        names = "".join(f"{h.address} {h.name}\n" for h in self.hosts if h.netns)
        for host in self.hosts:
            (host.disk / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n" + names)
        self.bucket = EmulatedBucket(f"{self.storage.address}:{EMULATOR_PORT}", BUCKET)
        self._launches = 0
        self.premise = None
        self.flink_processes: list = []

    def start_flink(self) -> None:
        self.flink_processes = [(self.jobmanager, start_flink(self.jobmanager, "jobmanager", self.jobmanager),
                                 "flink-jobmanager.log")]
        self.flink_processes += [(tm, start_flink(tm, "taskmanager", self.jobmanager), "flink-taskmanager.log")
                                 for tm in self.taskmanagers]
        wait_for_taskmanagers(self.jobmanager, self.flink_processes, len(self.taskmanagers))

    @property
    def runner_args(self) -> list[str]:
        return ["--runner", "FlinkRunner", "--flink_master", f"{self.jobmanager.address}:8081",
                "--flink_job_server_jar", str(flink.job_server_jar()), "--environment_type", "EXTERNAL",
                "--environment_config", f"localhost:{POOL_PORT}", "--parallelism", "2"]

    def logs(self) -> str:
        parts = [f"--- {h.name} pool.log:\n{h.log('pool.log')[-3000:]}" for h in self.workers
                 if (h.disk / "pool.log").exists()]
        for host, _, log in self.flink_processes:
            parts.append(f"--- {host.name} {log}:\n{host.log(log)[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for host in [*self.workers, *reversed(self.hosts)]:
            host.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = flink.missing()
    if missing:
        pytest.skip(missing)
    tag = f"vf{os.getpid() % 100000}"
    namespaces_or_skip(tag)
    work = tmp_path_factory.mktemp("flink")
    sdist = _sdist(work)
    network = Network(tag)
    world = None
    try:
        try:
            world = FlinkCluster(network, work / "hosts")
        except OSError as exc:
            pytest.skip(f"cannot wire the hosts' network here: {exc}")
        world.start_storage()
        world.start_workers(sdist)
        world.start_flink()
        yield world
    finally:
        if world is not None:
            world.stop()
        network.close()


@pytest.fixture(scope="module")
def clips(cluster) -> list[str]:
    """Four tiny clips, one per class, under gs://BUCKET/clips/; their ids."""
    from tools.sample_videos import CLASSES, write_sample_set

    root = cluster.launcher.disk / "clips"
    write_sample_set(str(root), per_class=1, seed=5, classes=CLASSES[:4], min_frames=6, max_frames=10,
                     sizes=[(48, 40)])
    return _upload_clips(cluster, root)


@pytest.fixture(scope="module")
def featurized(cluster, clips) -> str:
    """featurize on Flink, then in process (the reference); the Flink run's output."""
    output = f"gs://{BUCKET}/features"
    cluster.run("beam_jobs.featurize", *FEATURIZE, "--output", output, *cluster.runner_args)
    cluster.run("beam_jobs.featurize", *FEATURIZE, "--output", f"gs://{BUCKET}/reference/features",
                "--runner", "DirectRunner")
    return output


def test_featurize_on_flink_matches_in_process(cluster, clips, featurized, tmp_path):
    found = _records(cluster, "features/", tmp_path / "found")
    expected = _records(cluster, "reference/features/", tmp_path / "expected")
    assert sorted(found) == sorted(expected) == clips
    for video_id, record in found.items():
        reference = expected[video_id]
        assert (record.uri, record.label, record.fingerprint) == (reference.uri, reference.label, reference.fingerprint)
        assert (record.num_valid_frames, list(record.frame_indices)) == (reference.num_valid_frames,
                                                                         list(reference.frame_indices))
        np.testing.assert_allclose(record.features, reference.features, atol=1e-5)
    for name in ("labels.txt", "failures.csv"):
        assert cluster.bucket.text(f"features/{name}") == cluster.bucket.text(f"reference/features/{name}")
    manifest = json.loads(cluster.bucket.text("features/manifest.json"))
    assert (manifest["videos_matched"], manifest["records_written"], manifest["failures"]) == (4, 4, 0)
    assert not [n for n in cluster.bucket.list("features/") if "/.staging-" in n or n.endswith(".lease.json")]


def _subtask_hosts(cluster, job_id: str, step: str) -> set[str]:
    """The hosts of the TaskManagers that ran the subtasks of the job's vertices whose name holds `step`."""
    hosts = set()
    for vertex in flink_rest(cluster.jobmanager, f"jobs/{job_id}")["vertices"]:
        if step in vertex["name"]:
            for entry in flink_rest(cluster.jobmanager, f"jobs/{job_id}/vertices/{vertex['id']}/taskmanagers")[
                    "taskmanagers"]:
                if entry["status"] == "FINISHED" and entry["metrics"]["read-records"] + entry["metrics"][
                        "write-records"] > 0:
                    hosts.add(entry["host"])
    return hosts


def test_flink_ran_featurize_finished_on_both_taskmanagers(cluster, featurized):
    """The one job so far, FINISHED; its decoding and embedding subtasks ran on both TaskManagers (Beam names
    Flink's vertices after the fused transforms they run)."""
    (job,) = flink_rest(cluster.jobmanager, "jobs/overview")["jobs"]
    assert job["state"] == "FINISHED", job
    for step in ("DecodeFrames", "EmbedFrames"):
        ran = _subtask_hosts(cluster, job["jid"], step)  # "host:port" as each TaskManager named itself
        assert {host.split(":")[0] for host in ran} == set(TASKMANAGERS), (step, ran)


@pytest.fixture(scope="module")
def model(cluster, featurized) -> str:
    cluster.run("model.train", "--train", featurized, "--output", f"gs://{BUCKET}/model",
                "--epochs", "2", "--patience", "0", "--validation-split", "0.25", "--seed", "3")
    return f"gs://{BUCKET}/model"


def _rows(cluster, name: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(cluster.bucket.text(name))))


@pytest.fixture(scope="module")
def labelled(cluster, clips, model) -> dict:
    """predict on Flink on the four clips, again after a fifth is added (incrementally), and with --segments;
    then in process, the references."""
    from tools.sample_videos import CLASSES, write_sample_set

    args = ["--input", f"gs://{BUCKET}/clips/", "--model", model, "--per-video", *JOB_FLAGS]
    cluster.run("beam_jobs.predict", *args, "--output", f"gs://{BUCKET}/labels", *cluster.runner_args)
    first = Labelled.read(cluster.bucket, "labels")
    root = cluster.launcher.disk / "new_clip"
    write_sample_set(str(root), per_class=1, seed=6, classes=CLASSES[:1], min_frames=6, max_frames=10,
                     sizes=[(48, 40)])
    (new,) = _upload_clips(cluster, root, rename=lambda video_id: video_id.replace("_0000.", "_0001."))
    cluster.run("beam_jobs.predict", *args, "--output", f"gs://{BUCKET}/labels", *cluster.runner_args)
    second = Labelled.read(cluster.bucket, "labels")
    segments = ["--segments", "0.2"]
    cluster.run("beam_jobs.predict", *args, *segments, "--output", f"gs://{BUCKET}/segments", *cluster.runner_args)
    cluster.run("beam_jobs.predict", *args, "--output", f"gs://{BUCKET}/reference/labels", "--runner", "DirectRunner")
    cluster.run("beam_jobs.predict", *args, *segments, "--output", f"gs://{BUCKET}/reference/segments",
                "--runner", "DirectRunner")
    return {"first": first, "second": second, "reference": Labelled.read(cluster.bucket, "reference/labels"),
            "new": new}


def test_predict_on_flink_matches_in_process_and_reruns_incrementally(labelled, clips):
    first, second, reference = labelled["first"], labelled["second"], labelled["reference"]
    assert [r["video_id"] for r in reference.rows] == sorted([*clips, labelled["new"]])
    assert_same_rows(first.rows, [r for r in reference.rows if r["video_id"] in clips])
    assert (first.manifest["videos_matched"], first.manifest["labelled_this_run"]) == (4, 4)
    assert_same_rows(second.rows, reference.rows)
    assert [r for r in second.rows if r["video_id"] != labelled["new"]] == first.rows
    assert (second.manifest["labelled_this_run"], second.manifest["reused_from_previous_run"]) == (1, 4)
    assert second.failures == reference.failures and second.per_video == reference.per_video


def test_predict_segments_on_flink_matches_in_process(cluster, labelled):
    found, expected = _rows(cluster, "segments/segments.csv"), _rows(cluster, "reference/segments/segments.csv")
    assert len(found) == len(expected) > 5
    assert [(r["video_id"], r["start_s"]) for r in found] == [(r["video_id"], r["start_s"]) for r in expected]
    assert [r["label"] for r in found] == [r["label"] for r in expected]
    assert_same_rows(Labelled.read(cluster.bucket, "segments").rows, labelled["reference"].rows)


def test_flink_lists_every_job_finished(cluster, labelled):
    jobs = flink_rest(cluster.jobmanager, "jobs/overview")["jobs"]
    assert len(jobs) == 4 and {job["state"] for job in jobs} == {"FINISHED"}, jobs
