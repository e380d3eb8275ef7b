"""The jobs on a real Spark standalone cluster: a master and two workers, each on a host of its own, Beam's Spark
job server (`--runner SparkRunner --spark_job_server_jar`) as the driver, SDK workers from a worker pool beside
each Spark worker (environment EXTERNAL, `localhost:50000` as each executor sees it), every input and output on
gs:// (the Cloud Storage emulator on its storage host).

The hosts are test_multihost.py's (network namespaces on one bridge, tests/hosts.py), and so are the clips, the
training, the labelling fixtures and the checks against an in-process run: this file swaps Beam's local job
service for Spark. Hosts:

- storage-a: the emulator and the TLS proxy TensorFlow's GCS filesystem needs;
- spark-b: the Spark master (its REST/JSON UI on SPARK_UI_PORT);
- worker-c, worker-d: a Spark worker (one core) and a worker pool each, on isolated hosts: the product is the
  sdist installed there, not the launcher's checkout;
- the launcher, in the machine's own network namespace: `python -m beam_jobs.*`, whose SparkRunner starts the
  job server (the Spark driver) there.

What it proves: featurize, model.train and predict (labelling, then one new clip incrementally) on Spark give
the records, labels.txt, failures.csv and labels.csv rows of an in-process run; both Spark workers ran
executors and both worker hosts embedded videos; a worker host killed mid-featurize leaves the previous output
byte for byte, nothing half-published, and the next run accounts for every video.

Spark and the job server come from `make spark` (tools/spark.py); without them the job tests skip and say why,
and the cluster test (master and two workers up) still runs where Java and Spark are there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("gcp_storage_emulator", reason="test extra gcp-storage-emulator is not installed")

import test_multihost as multihost  # noqa: E402
from hosts import (SPARK_WORKER_UI_PORT, Host, Network, base_env, namespaces_or_skip,  # noqa: E402
                   spark_state, start_spark)
from test_gcs import EmulatedBucket  # noqa: E402
from test_multihost import (BUCKET, EMULATOR_PORT, FEATURIZE, JOB_TIMEOUT_S, POOL_PORT,  # noqa: E402,F401
                            clips, labelled, model)  # clips, labelled, model: fixtures, here on Spark

from tools import spark as spark_install  # noqa: E402

WORKER_HOSTS = ("worker-c", "worker-d")
EXECUTOR_MEMORY = "512m"  # a Spark worker offers 640m; its own JVM and the master's take 192m each


class SparkCluster(multihost.Cluster):
    """test_multihost's hosts with a Spark master host in place of the job service host and no second launcher;
    its storage, worker pools, launches and runs as there."""

    def __init__(self, network: Network, work: Path):  # not super().__init__(): it makes the other hosts
        self.network, self.work = network, work
        tag = network.tag
        network.add_switch()
        spark = (str(spark_install.spark_home().parent),)
        self.launcher = self._host(work, socket.gethostname(), 1, None)
        self.storage = self._host(work, "storage-a", 2, f"{tag}-a")
        self.master = self._host(work, "spark-b", 3, f"{tag}-b")
        self.master.keep = spark
        self.workers = [self._host(work, name, 4 + i, f"{tag}-{name[-1]}", isolated=True)
                        for i, name in enumerate(WORKER_HOSTS)]
        for host in self.workers:
            host.keep = spark
        self.hosts = [self.launcher, self.storage, self.master, *self.workers]
        names = "".join(f"{h.address} {h.name}\n" for h in self.hosts if h.netns)
        for host in self.hosts:
            (host.disk / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n" + names)
        self.bucket = EmulatedBucket(f"{self.storage.address}:{EMULATOR_PORT}", BUCKET)
        self._launches = 0
        self.master_url = ""

    def env(self, host: Host) -> dict[str, str]:
        env = super().env(host)
        if host is self.launcher:  # the driver (the job server's JVM) is reached by the executors at this address
            env.update(SPARK_LOCAL_IP=host.address, SPARK_LOCAL_HOSTNAME=host.address)
        return env

    @property
    def runner_args(self) -> list[str]:
        return ["--runner", "SparkRunner", "--spark_master_url", self.master_url,
                "--spark_job_server_jar", str(spark_install.job_server_jar()),
                f"--job_server_jvm_properties=-Dspark.executor.memory={EXECUTOR_MEMORY}",
                "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{POOL_PORT}"]

    def logs(self) -> str:
        parts = []
        for host, log in [(self.master, "spark-master.log"), *((h, n) for h in self.workers
                                                              for n in ("spark-worker.log", "pool.log"))]:
            if (host.disk / log).exists():
                parts.append(f"--- {host.name} {log}:\n{host.log(log)[-2000:]}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The hosts and the Spark cluster (master and both workers registered); storage and pools in `hosts`."""
    if spark_install.missing():
        pytest.skip("; ".join(spark_install.missing()))
    tag = f"vs{os.getpid() % 100000}"
    namespaces_or_skip(tag)
    network = Network(tag)
    world = None
    try:
        try:
            world = SparkCluster(network, tmp_path_factory.mktemp("spark") / "hosts")
        except OSError as exc:
            pytest.skip(f"cannot wire the hosts' network here: {exc}")
        world.master_url = start_spark(world.master, world.workers, base_env())
        yield world
    finally:
        if world is not None:
            world.stop()
        network.close()


def test_spark_master_has_both_workers(cluster):
    """The premise of the rest: the master on spark-b lists a worker on each worker host, ALIVE, one core each,
    and each worker says it answers to that master."""
    state = spark_state(cluster.master)
    assert state["status"] == "ALIVE" and state["url"] == cluster.master_url
    workers = sorted((w["host"], w["state"], w["cores"]) for w in state["workers"])
    assert workers == [(h.address, "ALIVE", 1) for h in cluster.workers]
    for host in cluster.workers:
        assert spark_state(host, SPARK_WORKER_UI_PORT)["masterurl"] == cluster.master_url


@pytest.fixture(scope="module")
def hosts(cluster, tmp_path_factory):
    """The cluster with its storage and worker pools."""
    cluster.start_storage()
    cluster.start_workers(multihost._sdist(tmp_path_factory.mktemp("sdist")))
    return cluster


@pytest.fixture(scope="module")
def featurized(hosts, clips) -> str:
    """featurize on Spark, then in process (the reference); the Spark run's output."""
    cluster = hosts
    output = cluster.run("beam_jobs.featurize", *FEATURIZE, "--output", f"gs://{BUCKET}/features",
                         *cluster.runner_args)
    cluster.run("beam_jobs.featurize", *FEATURIZE, "--output", f"gs://{BUCKET}/reference/features",
                "--runner", "DirectRunner")
    return output


def test_featurize_on_spark_matches_in_process(hosts, clips, featurized, tmp_path):
    """Records (ids, labels, fingerprints, frames, features within 1e-5), labels.txt, failures.csv and the
    manifest as in process; nothing staged left (test_multihost's checks)."""
    multihost.test_featurize_across_hosts_matches_in_process(hosts, clips, featurized, tmp_path)


def _executor_apps(host: Host) -> set[str]:
    """The Spark applications a worker has run (or runs) executors for."""
    state = spark_state(host, SPARK_WORKER_UI_PORT)
    return {e["appid"] for e in state["executors"] + state["finishedexecutors"]}


def test_both_spark_workers_ran_executors_that_embedded_videos(hosts, featurized):
    """Each Spark worker ran an executor of the job, and the SDK workers beside it embedded videos: each worker
    host converted DenseNet121 into its own OpenVINO cache, which a worker does at the first frames it embeds."""
    for host in hosts.workers:
        assert _executor_apps(host), f"no executor ran on {host.name}:\n{hosts.logs()}"
        assert list((host.disk / "home" / ".cache" / "video-annotation" / "openvino").glob("*/model.xml")), host.name


def test_training_reads_the_records_spark_wrote(model, hosts):
    multihost.test_training_reads_the_records_the_workers_wrote(hosts, model)


def test_predict_on_spark_matches_in_process_and_reruns_incrementally(labelled, clips):
    multihost.test_predict_across_hosts_matches_in_process_and_reruns_incrementally(labelled, clips)


def kill_host(host: Host) -> None:
    """Every process in `host`'s network namespace, SIGKILLed: the machine is lost."""
    pids = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _published(bucket: EmulatedBucket, prefix: str) -> dict[str, bytes]:
    """The objects under `prefix` a reader sees as the output: not the lease, not a staging folder."""
    return {name: bucket.download(name) for name in bucket.list(prefix)
            if "/.staging-" not in name and not name.endswith(".lease.json")}


def test_a_worker_host_lost_mid_featurize_keeps_the_output_and_the_rerun_accounts_for_every_video(
        hosts, clips, labelled):
    """Runs last: worker-d is killed (its Spark worker, executor and pool) while it embeds frames of a featurize
    that replaces gs://BUCKET/features (five clips now, four records there). Whether Spark finishes the job on
    worker-c or the job fails, nothing half-published is seen: the output is the old one byte for byte or a
    whole new one. The next run, on the worker left, accounts for every video."""
    cluster = hosts
    lost = cluster.workers[1]
    videos = sorted([*clips, labelled["new"]])
    before = _published(cluster.bucket, "features/")
    cache = lost.disk / "home" / ".cache" / "video-annotation" / "openvino"
    for converted in cache.glob("*/model.xml"):  # its reappearance marks worker-d embedding frames of this run
        converted.unlink()
    args = [*FEATURIZE, "--output", f"gs://{BUCKET}/features", "--overwrite", *cluster.runner_args]
    process, log = cluster.launch(cluster.launcher, "beam_jobs.featurize", *args)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not list(cache.glob("*/model.xml")):
        assert process.poll() is None, f"featurize ended before {lost.name} embedded:\n" \
                                       f"{cluster.launcher.log(log)[-3000:]}\n{cluster.logs()}"
        assert time.monotonic() < deadline, f"{lost.name} did not embed within {JOB_TIMEOUT_S}s\n{cluster.logs()}"
        time.sleep(0.05)
    kill_host(lost)
    status = process.wait(timeout=JOB_TIMEOUT_S)
    after = _published(cluster.bucket, "features/")
    if status == 0:  # Spark ran worker-d's tasks again on worker-c: a whole new output
        manifest = json.loads(after["features/manifest.json"])
        assert (manifest["videos_matched"], manifest["records_written"], manifest["failures"]) == (5, 5, 0)
    else:
        assert after == before, cluster.launcher.log(log)[-3000:]
    cluster.run("beam_jobs.featurize", *args)
    manifest = json.loads(cluster.bucket.text("features/manifest.json"))
    assert (manifest["videos_matched"], manifest["records_written"], manifest["failures"]) == (5, 5, 0)
    found = multihost._records(cluster, "features/", cluster.work / "after-loss")
    assert sorted(found) == videos
    assert not [n for n in cluster.bucket.list("features/") if "/.staging-" in n or n.endswith(".lease.json")]
