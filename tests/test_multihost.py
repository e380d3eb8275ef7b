"""The jobs across separate hosts: SDK workers on other machines, every input and output on gs://, and a second
launcher on another host refused while the first runs.

Six hosts on this one machine, each a Linux network namespace wired to one bridge by a veth pair, with its
own address, hostname (a UTS namespace), /etc/hosts and disk:

- storage-a: the Cloud Storage emulator (tests/gcs_emulator.py, with generation preconditions) and the TLS
  proxy TensorFlow's own GCS filesystem needs (as in tests/test_gcs.py), both on the host's address;
- jobs-b: Beam's local job service (the Job API that Flink's and Spark's job servers speak), made reachable
  from other hosts, running each job on `--direct_num_workers` SDK workers (a cluster's parallelism; the stock
  service runs every job on one), and the worker-pool endpoint jobs name in `--environment_config`, which
  hands each SDK worker to the next worker host's pool in turn, as a cluster's scheduler places workers;
- worker-c, worker-d: one SDK worker pool each (environment EXTERNAL);
- launcher-e: a second launcher;
- and the first launcher in the machine's own network namespace, where this test runs.

How the hosts are kept apart: each namespaced host runs in a private mount namespace with its own folder
mounted over /tmp and a tmpfs over the launcher's home (its caches and credentials; only the Python
interpreter under it is mounted back), so no launcher-local path (pytest's folders, the jobs' listing
scratch, the launcher's OpenVINO cache) exists there. The worker hosts also get a tmpfs over the checkout:
their code is the sdist Beam's stager builds from `--setup_file`, pip-installed (`--no-deps`) into a venv of
the host's own, with the project venv's site-packages mounted read-only in place of the dependencies a
worker image holds; HOME, the working directory and the OpenVINO cache are the host's own.
`test_worker_hosts_see_only_their_own_files` checks that. Everything a worker reads or writes therefore
travels over the network: gRPC from the job service, HTTP to the storage host.

What it proves: featurize, model.train and predict (labelling, then one new clip incrementally) with every
input and output on gs:// and their DoFns on SDK workers of two other hosts: the records (ids, labels,
fingerprints, features within 1e-5), labels.txt, failures.csv and labels.csv rows equal an in-process run
(DirectRunner, on the launcher), both worker hosts embedded videos, and the output's lease (Cloud Storage's
generation preconditions) holds across hosts: of two launchers on two hosts that start the same featurize at
once, one runs (renewing its lease while the workers publish, whose last step checks it) and the other is
refused while it runs, with a line naming the holder's host and pid.

What it does not prove: the hosts share one kernel, clock and CPU, and the interpreter and dependencies of
the project venv, so clock skew, workers whose CPU differs from the launcher's (`--engine auto` and
`--precision auto` are decided on the launcher), installs from PyPI and real network faults are out of its
reach; the job service is Beam's local one, not Flink's, Spark's or Dataflow's; and the storage is the
emulator, not Cloud Storage.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gcp_storage_emulator", reason="test extra gcp-storage-emulator is not installed")

from hosts import (DEPENDENCIES, REPO, START_S, Host, Network, base_env, namespaces_or_skip,  # noqa: E402
                   premise_failure, wait_for_port)
from test_gcs import EmulatedBucket, _make_certificate  # noqa: E402

BUCKET = "annotation-test"
IMAGE_SIZE, FRAMES = 32, 4
# Every host has its own ports: the well-known ones, as on separate machines.
EMULATOR_PORT, PROXY_PORT, JOB_PORT, POOL_PORT = 9023, 8443, 8099, 50000
WORKER_HOSTS = ("worker-c", "worker-d")
JOB_TIMEOUT_S = 300
WORKER_PYTHON = "/tmp/venv/bin/python"  # on a worker host


class Cluster:
    """The hosts, the storage host's services, and the environment every client of the storage runs with."""

    def __init__(self, network: Network, work: Path):
        self.network, self.work = network, work
        tag = network.tag
        network.add_switch()
        self.launcher = self._host(work, socket.gethostname(), 1, None)
        self.storage = self._host(work, "storage-a", 2, f"{tag}-a")
        self.jobs = self._host(work, "jobs-b", 3, f"{tag}-b")
        self.workers = [self._host(work, name, 4 + i, f"{tag}-{name[-1]}", isolated=True)
                        for i, name in enumerate(WORKER_HOSTS)]
        self.second_launcher = self._host(work, "launcher-e", 6, f"{tag}-e")
        self.hosts = [self.launcher, self.storage, self.jobs, *self.workers, self.second_launcher]
        names = "".join(f"{h.address} {h.name}\n" for h in self.hosts if h.netns)
        for host in self.hosts:
            (host.disk / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n" + names)
        self.bucket = EmulatedBucket(f"{self.storage.address}:{EMULATOR_PORT}", BUCKET)
        self._launches = 0
        self.premise: str | None = None  # why the hosts cannot run the product, if they cannot

    def _host(self, work: Path, name: str, number: int, netns: str | None, isolated: bool = False) -> Host:
        disk = work / name
        disk.mkdir(parents=True)
        return Host(name, self.network.attach(number, netns), disk, netns, isolated)

    def start_storage(self) -> None:
        certificate = _make_certificate(self.work)
        if certificate is None:
            pytest.skip("openssl is needed to point TensorFlow's GCS filesystem at the emulator")
        credentials = json.dumps({
            "type": "authorized_user", "client_id": "emulator", "client_secret": "emulator",
            "refresh_token": "emulator", "token": "emulator-token", "expiry": "2099-01-01T00:00:00Z"})
        for host in self.hosts:
            (host.disk / "credentials.json").write_text(credentials)
            shutil.copy(certificate[0], host.disk / "storage-ca.pem")
        shutil.copy(certificate[1], self.storage.disk / "storage-key.pem")
        emulator = [sys.executable, str(REPO / "tests" / "gcs_emulator.py")]
        services = [
            (self.storage.start([*emulator, "start", "--host", "0.0.0.0", "--port", str(EMULATOR_PORT),
                                 "--in-memory", "--default-bucket", BUCKET, "-q"], base_env(), "emulator.log"),
             EMULATOR_PORT, "emulator.log"),
            (self.storage.start([*emulator, "proxy", "--listen", f"0.0.0.0:{PROXY_PORT}", "--emulator",
                                 f"127.0.0.1:{EMULATOR_PORT}", "--certificate", "/tmp/storage-ca.pem",
                                 "--key", "/tmp/storage-key.pem"], base_env(), "proxy.log"),
             PROXY_PORT, "proxy.log"),
        ]
        for process, port, log in services:
            wait_for_port(self.storage.address, port, process, self.storage, log)
        deadline = time.monotonic() + START_S
        while True:  # listening is not serving yet
            try:
                self.bucket.list("")
                return
            except OSError:
                assert time.monotonic() < deadline, self.storage.log("emulator.log")[-3000:]
                time.sleep(0.2)

    def env(self, host: Host) -> dict[str, str]:
        """What a client of the storage runs with on `host`: Beam's GCS client pointed at the emulator, TensorFlow's
        at the proxy, every cluster host reached directly (gRPC honours https_proxy too)."""
        proxy = f"http://{self.storage.address}:{PROXY_PORT}"
        direct = ",".join(["localhost", "127.0.0.1", *(h.address for h in self.hosts),
                           *(h.name for h in self.hosts if h.netns)])
        env = base_env()
        env.update(
            STORAGE_EMULATOR_HOST=f"http://{self.storage.address}:{EMULATOR_PORT}",
            GOOGLE_APPLICATION_CREDENTIALS=host.path("credentials.json"), GOOGLE_CLOUD_PROJECT="emulator",
            GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator-token", NO_GCE_CHECK="true",
            https_proxy=proxy, HTTPS_PROXY=proxy, CURL_CA_BUNDLE=host.path("storage-ca.pem"),
            NO_PROXY=direct, no_proxy=direct,
            # The emulator serves one request at a time: retry refused reads as often, but sooner.
            GCS_RETRY_CONFIG_INIT_DELAY_TIME_US="100000", GCS_RETRY_CONFIG_MAX_DELAY_TIME_US="2000000")
        if host.netns:
            env["HOME"] = "/tmp/home"
        return env

    def start_workers(self, sdist: Path) -> None:
        """On each worker host: a venv of its own with the sdist installed, then its worker pool."""
        python_dir = f"python{sys.version_info.major}.{sys.version_info.minor}"
        install = (f"{sys._base_executable} -m venv --without-pip /tmp/venv && "
                   f"echo {DEPENDENCIES} > /tmp/venv/lib/{python_dir}/site-packages/_worker_image.pth && "
                   f"{WORKER_PYTHON} -m pip install --quiet --no-deps --no-index --no-build-isolation "
                   f"--disable-pip-version-check /tmp/{sdist.name}")
        installs = []
        for host in self.workers:
            shutil.copy(sdist, host.disk / sdist.name)
            installs.append((host, host.start(["sh", "-c", install], base_env(), "install.log")))
        for host, process in installs:
            assert process.wait(timeout=START_S) == 0, f"installing on {host.name}: {host.log('install.log')[-3000:]}"
        pools = []
        for host in self.workers:
            env = dict(self.env(host), PATH=os.pathsep.join(["/tmp/venv/bin", os.environ["PATH"]]))
            pools.append((host, host.start([WORKER_PYTHON, "-m", "apache_beam.runners.worker.worker_pool_main",
                                            "--service_port", str(POOL_PORT)], env, "pool.log")))
        for host, process in pools:
            wait_for_port(host.address, POOL_PORT, process, host, "pool.log")

    def start_jobs(self) -> None:
        pools = ",".join(f"{h.name}:{POOL_PORT}" for h in self.workers)
        process = self.jobs.start([sys.executable, str(Path(__file__).resolve()), "job-service", "--address",
                                   self.jobs.address, "--pools", pools], base_env(), "job_service.log")
        for port in (JOB_PORT, POOL_PORT):
            wait_for_port(self.jobs.address, port, process, self.jobs, "job_service.log")

    @property
    def runner_args(self) -> list[str]:
        return ["--runner", "PortableRunner", "--job_endpoint", f"{self.jobs.address}:{JOB_PORT}",
                "--environment_type", "EXTERNAL", "--environment_config", f"{self.jobs.address}:{POOL_PORT}",
                "--direct_num_workers", str(len(self.workers))]

    def launch(self, host: Host, module: str, *args: str) -> tuple[subprocess.Popen, str]:
        """Start `python -m module args` on a launcher host, as a user runs it; (the process, its log's name in
        the host's folder)."""
        self._launches += 1
        log = f"{self._launches:02d}-{module}.log"
        return host.start([sys.executable, "-m", module, *args], self.env(host), log), log

    def run(self, module: str, *args: str) -> str:
        """Run a command to the end on the launcher; its output. Fails the test unless it succeeds."""
        started = time.monotonic()
        process, log = self.launch(self.launcher, module, *args)
        process.wait(timeout=JOB_TIMEOUT_S)
        print(f"{module} took {time.monotonic() - started:.1f}s")
        assert process.returncode == 0, f"{module} failed ({process.returncode}):\n{self.launcher.log(log)[-4000:]}\n" \
                                        f"{self.logs()}"
        return self.launcher.log(log)

    def logs(self) -> str:
        """The tails of the service logs, for a failure's message."""
        parts = []
        for host, log in [(self.jobs, "job_service.log"), *((h, "pool.log") for h in self.workers)]:
            if (host.disk / log).exists():
                parts.append(f"--- {host.name} {log}:\n{host.log(log)[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for host in reversed(self.hosts):
            host.stop()


def _sdist(work: Path) -> Path:
    """The sdist Beam's stager builds for `--setup_file ./setup.py`, from a copy of the sources."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.stager import Stager

    source = work / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", "demo_output", "_work",
        ".pytest_cache", "tests", "bench", "docs"))
    staged = work / "staged"
    staged.mkdir()
    Stager.create_job_resources(PipelineOptions(["--setup_file", str(source / "setup.py")]), str(staged))
    (sdist,) = staged.glob("video-annotation-*.tar.gz")
    return sdist


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tag = f"va{os.getpid() % 100000}"
    namespaces_or_skip(tag)
    work = tmp_path_factory.mktemp("multihost")
    sdist = _sdist(work)
    network = Network(tag)
    world = None
    try:
        try:
            world = Cluster(network, work / "hosts")
        except OSError as exc:
            pytest.skip(f"cannot wire the hosts' network here: {exc}")
        world.premise = premise_failure(world.second_launcher, base_env())
        if world.premise is None:
            world.start_storage()
            world.start_workers(sdist)
            world.start_jobs()
        yield world
    finally:
        if world is not None:
            world.stop()
        network.close()


def test_hosts_run_the_product_from_wherever_the_checkout_is(cluster):
    """The premise of the rest: a namespaced launcher host runs this interpreter, venv and checkout at their own
    paths (under /tmp, under the home folder or anywhere else), with /tmp and the home its own."""
    assert cluster.premise is None, cluster.premise


@pytest.fixture(scope="module")
def hosts(cluster):
    """The cluster, its services started; skips (once the premise test has said why) where hosts cannot run."""
    if cluster.premise is not None:
        pytest.skip(f"the hosts cannot run the product: {cluster.premise}")
    return cluster


def test_worker_hosts_see_only_their_own_files(hosts):
    """The premise of the rest: a worker host runs the installed sdist and cannot read the launcher's files."""
    cluster = hosts
    home = os.path.expanduser("~")
    probe = ("import json, os, beam_jobs, common, model; print(json.dumps({"
             "'code': [m.__file__ for m in (beam_jobs, common, model)], "
             f"'checkout': os.path.isdir({str(REPO)!r}) and os.listdir({str(REPO)!r}), 'launcher_files': os.path.exists({str(cluster.work)!r}), "
             f"'home': os.listdir({home!r}), 'host': os.uname().nodename}}))")
    for host in cluster.workers:
        done = host.run([WORKER_PYTHON, "-c", probe], cluster.env(host))
        assert done.returncode == 0, done.stderr[-3000:]
        seen = json.loads(done.stdout)
        assert all(path.startswith("/tmp/venv/lib/") for path in seen["code"]), seen
        assert seen["checkout"] in ([], False) and not seen["launcher_files"], seen
        interpreter = Path(sys.base_prefix)  # mounted back: the host's "image"
        assert set(seen["home"]) == ({interpreter.relative_to(home).parts[0]} if interpreter.is_relative_to(home)
                                     else set()), seen
        assert seen["host"] == host.name


# --engine openvino rather than auto: the converted network each worker host caches shows it embedded videos.
# A lease renewed every 7.5 s is renewed by the launcher while the workers run and publish, the publishing
# step (on a worker) checking it is still this run's.
JOB_FLAGS = ["--engine", "openvino", "--lease-ttl", "30"]
FEATURIZE = ["--input", f"gs://{BUCKET}/clips/", "--weights", "random", "--image-size", str(IMAGE_SIZE),
             "--max-seq-length", str(FRAMES), "--num-shards", "2", *JOB_FLAGS]


@pytest.fixture(scope="module")
def clips(hosts) -> list[str]:
    """Four tiny clips, one per class, under gs://BUCKET/clips/; their ids."""
    cluster = hosts
    from tools.sample_videos import CLASSES, write_sample_set

    root = cluster.launcher.disk / "clips"
    write_sample_set(str(root), per_class=1, seed=5, classes=CLASSES[:4], min_frames=6, max_frames=10,
                     sizes=[(48, 40)])
    return _upload_clips(cluster, root)


def _upload_clips(cluster, root: Path, rename=lambda video_id: video_id) -> list[str]:
    ids = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "labels.csv"):
        ids.append(rename(path.relative_to(root).as_posix()))
        cluster.bucket.upload(f"clips/{ids[-1]}", path.read_bytes())
    return ids


@dataclasses.dataclass(frozen=True)
class Ended:
    """How a launcher's run ended: its pid, exit status, output, and the launchers still running then."""

    pid: int
    status: int
    output: str
    others_running: list[str]


@pytest.fixture(scope="module")
def featurized(cluster, clips) -> dict[str, Ended]:
    """featurize across the hosts, launched at once by the launcher and by launcher-e on the same output (one
    takes the lease); then in process, the reference. {launcher's hostname: how its run ended}."""
    output = f"gs://{BUCKET}/features"
    launched = {host.name: (host, *cluster.launch(host, "beam_jobs.featurize", *FEATURIZE, "--output", output,
                                                  *cluster.runner_args))
                for host in (cluster.launcher, cluster.second_launcher)}
    ended = {}
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while len(ended) < len(launched):
        assert time.monotonic() < deadline, f"featurize did not finish within {JOB_TIMEOUT_S}s\n{cluster.logs()}"
        for name, (host, process, log) in launched.items():
            if name not in ended and process.poll() is not None:
                others = [n for n, (_, p, _) in launched.items() if n != name and p.poll() is None]
                ended[name] = Ended(process.pid, process.returncode, host.log(log), others)
        time.sleep(0.1)
    assert sorted(e.status for e in ended.values()) == [0, 75], {n: e.output[-3000:] for n, e in ended.items()}
    cluster.run("beam_jobs.featurize", *FEATURIZE, "--output", f"gs://{BUCKET}/reference/features",
                "--runner", "DirectRunner")
    return ended


def _records(cluster, prefix: str, folder: Path) -> dict:
    """{video id: VideoRecord} of the shards under gs://BUCKET/prefix, copied into `folder`."""
    import tensorflow as tf

    from tfrecords_schema import decode_video_record

    folder.mkdir(parents=True)
    records = {}
    for name in cluster.bucket.list(prefix):
        if not name[len(prefix):].startswith("features-"):
            continue
        local = folder / name.rsplit("/", 1)[-1]
        local.write_bytes(cluster.bucket.download(name))
        for raw in tf.data.TFRecordDataset(str(local)).as_numpy_iterator():
            record = decode_video_record(raw)
            records[record.video_id] = record
    return records


def test_featurize_across_hosts_matches_in_process(cluster, clips, featurized, tmp_path):
    found = _records(cluster, "features/", tmp_path / "found")
    expected = _records(cluster, "reference/features/", tmp_path / "expected")
    assert sorted(found) == sorted(expected) == clips
    for video_id, record in found.items():
        reference = expected[video_id]
        assert (record.uri, record.label, record.fingerprint) == (reference.uri, reference.label, reference.fingerprint)
        assert record.uri == f"gs://{BUCKET}/clips/{video_id}" and record.label == video_id.split("/")[0]
        assert (record.num_valid_frames, list(record.frame_indices)) == (reference.num_valid_frames,
                                                                         list(reference.frame_indices))
        np.testing.assert_allclose(record.features, reference.features, atol=1e-5)
    names = cluster.bucket.list("features/")
    assert [n for n in names if n.startswith("features/features-")] == [
        "features/features-00000-of-00002.tfrecord", "features/features-00001-of-00002.tfrecord"]
    for name in ("labels.txt", "failures.csv"):
        assert cluster.bucket.text(f"features/{name}") == cluster.bucket.text(f"reference/features/{name}")
    manifest = json.loads(cluster.bucket.text("features/manifest.json"))
    assert (manifest["videos_matched"], manifest["records_written"], manifest["failures"]) == (4, 4, 0)
    assert not [n for n in names if "/.staging-" in n or n.endswith(".lease.json")]


def test_both_worker_hosts_embedded_videos(cluster, featurized):
    """Each worker host converted DenseNet121 into its own cache, which a worker does at the first frames it
    embeds; the job service started one SDK worker on each."""
    for host in cluster.workers:
        assert list((host.disk / "home" / ".cache" / "video-annotation" / "openvino").glob("*/model.xml")), host.name
        assert f"on {host.name}:{POOL_PORT}" in cluster.jobs.log("job_service.log")


def test_a_second_launcher_on_another_host_is_refused_while_the_first_runs(cluster, featurized):
    """Both launchers started the same featurize at once; the lease (an object created with the precondition
    "no such object") let one run, and the other stopped with status 75 while it ran, naming its host and pid."""
    (winner,) = [name for name, ended in featurized.items() if ended.status == 0]
    (refused,) = [featurized[name] for name in featurized if name != winner]
    assert refused.status == 75 and refused.others_running == [winner], refused.output[-3000:]
    assert refused.output.strip().splitlines()[-1].startswith(
        f"skipped: gs://{BUCKET}/features is being written by another run (host {winner}, "
        f"pid {featurized[winner].pid}, since ")



@pytest.fixture(scope="module")
def model(cluster, featurized) -> str:
    """model.train on the launcher, reading the records the workers wrote through TensorFlow's GCS filesystem."""
    cluster.run("model.train", "--train", f"gs://{BUCKET}/features", "--output", f"gs://{BUCKET}/model",
                "--epochs", "2", "--patience", "0", "--validation-split", "0.25", "--seed", "3")
    return f"gs://{BUCKET}/model"


def test_training_reads_the_records_the_workers_wrote(cluster, model):
    metrics = json.loads(cluster.bucket.text("model/metrics.json"))
    assert metrics["num_train_examples"] + metrics["num_val_examples"] == 4 and metrics["epochs_run"] == 2
    assert metrics["labels"] == ["fading_in", "fading_out", "growing", "shrinking"]


@dataclasses.dataclass(frozen=True)
class Labelled:
    """What a labelling run left under gs://BUCKET/<prefix>/."""

    rows: list[dict]
    failures: str
    manifest: dict
    per_video: list[str]

    @classmethod
    def read(cls, bucket: EmulatedBucket, prefix: str) -> "Labelled":
        return cls(list(csv.DictReader(io.StringIO(bucket.text(f"{prefix}/labels.csv")))),
                   bucket.text(f"{prefix}/failures.csv"), json.loads(bucket.text(f"{prefix}/manifest.json")),
                   [n[len(prefix) + 1:] for n in bucket.list(f"{prefix}/per_video/")])


@pytest.fixture(scope="module")
def labelled(cluster, clips, model) -> dict[str, Labelled]:
    """predict across the hosts on the four clips, then again after a fifth is added (incrementally); then in
    process, the reference, on the five."""
    from tools.sample_videos import CLASSES, write_sample_set

    args = ["--input", f"gs://{BUCKET}/clips/", "--model", model, "--per-video", "--classifier-batch-size", "3",
            *JOB_FLAGS]
    cluster.run("beam_jobs.predict", *args, "--output", f"gs://{BUCKET}/labels", *cluster.runner_args)
    first = Labelled.read(cluster.bucket, "labels")
    root = cluster.launcher.disk / "new_clip"
    write_sample_set(str(root), per_class=1, seed=6, classes=CLASSES[:1], min_frames=6, max_frames=10,
                     sizes=[(48, 40)])
    (new,) = _upload_clips(cluster, root, rename=lambda video_id: video_id.replace("_0000.", "_0001."))
    cluster.run("beam_jobs.predict", *args, "--output", f"gs://{BUCKET}/labels", *cluster.runner_args)
    second = Labelled.read(cluster.bucket, "labels")
    cluster.run("beam_jobs.predict", *args, "--output", f"gs://{BUCKET}/reference/labels", "--runner", "DirectRunner")
    return {"first": first, "second": second, "reference": Labelled.read(cluster.bucket, "reference/labels"),
            "new": new}


def assert_same_rows(found: list[dict], expected: list[dict]) -> None:
    """labels.csv rows alike: the same ids, columns, labels, URIs and model id; probabilities within 1e-5."""
    assert [r["video_id"] for r in found] == [r["video_id"] for r in expected]
    for row, reference in zip(found, expected):
        assert list(row) == list(reference)
        for column, value in row.items():
            if column == "confidence" or column.startswith("p_"):
                assert abs(float(value) - float(reference[column])) <= 1e-5, (row["video_id"], column)
            elif column == "top_k":  # label:probability pairs; the labels and their order must match
                assert [p.rpartition(":")[0] for p in value.split(";")] == \
                       [p.rpartition(":")[0] for p in reference[column].split(";")]
            else:
                assert value == reference[column], (row["video_id"], column)


def test_predict_across_hosts_matches_in_process_and_reruns_incrementally(labelled, clips):
    first, second, reference = labelled["first"], labelled["second"], labelled["reference"]
    assert [r["video_id"] for r in reference.rows] == sorted([*clips, labelled["new"]])
    assert_same_rows(first.rows, [r for r in reference.rows if r["video_id"] in clips])
    assert (first.manifest["videos_matched"], first.manifest["labelled_this_run"],
            first.manifest["failures"]) == (4, 4, 0)
    # The re-run labels only the new clip; the other rows come from the first run's files, on the workers.
    assert_same_rows(second.rows, reference.rows)
    assert [r for r in second.rows if r["video_id"] != labelled["new"]] == first.rows
    assert (second.manifest["videos_labelled"], second.manifest["labelled_this_run"],
            second.manifest["reused_from_previous_run"]) == (5, 1, 4)
    assert second.failures == reference.failures and second.per_video == reference.per_video
    assert len(second.per_video) == 5


def serve_jobs(address: str, pools: list[str]) -> None:
    """The job host's program (`python tests/test_multihost.py job-service --address A --pools H:P,...`): Beam's
    local job service on JOB_PORT of every interface, and on POOL_PORT the worker-pool endpoint that starts
    each SDK worker on the next of `pools` in turn. Runs until killed. The SDK workers reach its control,
    data and state servers by this host's name (Beam tells EXTERNAL workers `socket.getfqdn()`), which every
    host's /etc/hosts resolves."""
    import itertools
    import logging
    import threading

    import grpc
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc, beam_job_api_pb2
    from apache_beam.runners.portability import local_job_service
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.utils import thread_pool_executor

    class ParallelJob(local_job_service.BeamJob):
        """A job on `--direct_num_workers` SDK workers (FnApiRunner reads that flag only when it builds the
        pipeline itself; the job service hands it a proto, so its jobs ran on one worker)."""

        def _invoke_runner(self):
            self.set_state(beam_job_api_pb2.JobState.RUNNING)
            runner = fn_runner.FnApiRunner(provision_info=self._provision_info)
            runner._num_workers = int(self.pipeline_options().view_as(DirectOptions).direct_num_workers or 1)
            return runner.run_via_runner_api(self._pipeline_proto, self.pipeline_options())

    class ReachableJobService(local_job_service.LocalJobServicer):
        """Listening on every interface and naming this host's address, not localhost, as the endpoint that
        launchers stage artifacts to (the hook LocalJobServicer documents for this)."""

        def get_bind_address(self):
            return "[::]"

        def get_service_address(self):
            return address

    class RoundRobinPools(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
        """Each StartWorker to the next host's pool, and its StopWorker to the same pool."""

        def __init__(self):
            stubs = [(pool, beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(grpc.insecure_channel(pool)))
                     for pool in pools]
            self._next, self._started, self._lock = itertools.cycle(stubs), {}, threading.Lock()

        def StartWorker(self, request, context):
            with self._lock:
                pool, stub = self._started[request.worker_id] = next(self._next)
            logging.info("starting SDK worker %s on %s", request.worker_id, pool)
            return stub.StartWorker(request)

        def StopWorker(self, request, context):
            with self._lock:
                started = self._started.pop(request.worker_id, None)
            return started[1].StopWorker(request) if started else beam_fn_api_pb2.StopWorkerResponse()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = ReachableJobService(staging_dir="/tmp/staging", beam_job_type=ParallelJob)
    service.start_grpc_server(JOB_PORT)
    pool_server = grpc.server(thread_pool_executor.shared_unbounded_instance())
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(RoundRobinPools(), pool_server)
    pool_server.add_insecure_port(f"[::]:{POOL_PORT}")
    pool_server.start()
    logging.info("jobs on %s:%d, SDK workers on %s", address, JOB_PORT, ", ".join(pools))
    threading.Event().wait()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python tests/test_multihost.py")
    parser.add_argument("command", choices=["job-service"])
    parser.add_argument("--address", required=True, help="this host's address, as other hosts reach it")
    parser.add_argument("--pools", required=True, help="the worker hosts' pools, HOST:PORT,...")
    parsed = parser.parse_args()
    serve_jobs(parsed.address, parsed.pools.split(","))
