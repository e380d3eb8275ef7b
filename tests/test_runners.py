"""featurize and predict on the runners a cluster uses give the same outputs as the in-process run.

- `PortableRunner` against Beam's local job service, with SDK workers from a worker pool (environment
  EXTERNAL): the submission path of Flink's and Spark's job servers. The pipeline leaves the launching
  process as a proto, runs in the job service, and every DoFn runs in a separate SDK worker process, so
  anything that only works because it shares the launcher's memory fails here.
- `DirectRunner --direct_running_mode=multi_processing --direct_num_workers=2`: two worker processes, with
  the classifier shared between them (`--large-model`).

Outputs must equal the in-process run: the same record ids with features within 1e-5, the same labels.txt
and failures.csv, the same labels.csv rows and per-video files. Several DoFn instances on concurrent threads
of one process (`--direct_running_mode=multi_threading`) must give the same records too.

Not covered: environment PROCESS needs the SDK container's `boot` executable (not on PyPI), and real
Flink or Spark job servers need their Java jars; both are documented in docs/SCALE.md.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hosts import free_port

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE, FRAMES = 32, 4
SERVICE_START_S = 60
JOB_TIMEOUT_S = 600  # a bound, not a target: both jobs take about a minute


def _wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVICE_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args[2]} exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{process.args[2]} did not listen on port {port} within {SERVICE_START_S}s")


def _stop(process: subprocess.Popen) -> None:
    """Stop a service started in its own session, with whatever workers it started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    else:  # the service is gone; its workers may not be
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _worker_env() -> dict[str, str]:
    """The worker pool starts SDK workers as `python -c ...`: this interpreter first on PATH, this tree importable."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@pytest.fixture(scope="module")
def portable_args(tmp_path_factory):
    """A local job service and a worker pool; the flags that send a job to them."""
    work = tmp_path_factory.mktemp("portable")
    job_port, pool_port = free_port(), free_port()
    services = []
    try:
        for module, args in [
            ("apache_beam.runners.worker.worker_pool_main", ["--service_port", str(pool_port)]),
            ("apache_beam.runners.portability.local_job_service_main",
             ["--port", str(job_port), "--staging_dir", str(work / "staging")]),
        ]:
            log = work / f"{module.rsplit('.', 1)[-1]}.log"
            services.append((subprocess.Popen([sys.executable, "-m", module, *args], env=_worker_env(), cwd=work,
                                              stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                              start_new_session=True), log))
        for (process, log), port in zip(services, (pool_port, job_port)):
            _wait_for_port(port, process, log)
        yield ["--runner", "PortableRunner", "--job_endpoint", f"localhost:{job_port}",
               "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{pool_port}"]
    finally:
        for process, _ in services:
            _stop(process)


MULTI_PROCESS_ARGS = ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing",
                      "--direct_num_workers", "2"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    from tools.sample_videos import CLASSES, write_sample_set

    root = tmp_path_factory.mktemp("runner_clips")
    write_sample_set(str(root), per_class=1, seed=9, classes=CLASSES[:4], min_frames=6, max_frames=10,
                     sizes=[(48, 40), (40, 40)])
    return root


def _featurize(clips: Path, output: Path, runner_args: list[str]) -> Path:
    from beam_jobs import featurize

    featurize.run(["--input", str(clips), "--output", str(output), "--weights", "random", "--image-size",
                   str(IMAGE_SIZE), "--max-seq-length", str(FRAMES), "--num-shards", "2", "--batch-size", "6",
                   *runner_args])
    return output


def _predict(clips: Path, model: Path, output: Path, runner_args: list[str]) -> Path:
    from beam_jobs import predict

    predict.run(["--input", str(clips), "--model", str(model), "--output", str(output), "--per-video",
                 "--classifier-batch-size", "3", *runner_args])
    return output


@pytest.fixture(scope="module")
def in_process(clips, tmp_path_factory):
    """The reference: both jobs on the in-process DirectRunner, and a model made from the features."""
    import keras

    from model.classifier import ClassifierConfig, build_classifier
    from model.export import export_model_dir
    from tfrecords_schema import dataset_spec, read_vocabulary

    work = tmp_path_factory.mktemp("in_process")
    features = _featurize(clips, work / "features", ["--runner", "DirectRunner"])
    labels = read_vocabulary(str(features / "labels.txt"))
    spec = dataset_spec(sorted(str(p) for p in features.glob("features-*.tfrecord")))
    keras.utils.set_random_seed(7)  # an untrained, seeded classifier: distinct probabilities per video
    model = build_classifier(ClassifierConfig(num_classes=len(labels), max_seq_length=FRAMES))
    export_model_dir(model, labels, spec, str(work / "model"), saved_model=False)
    labelled = _predict(clips, work / "model", work / "labels", ["--runner", "DirectRunner"])
    return {"features": features, "model": work / "model", "labels": labelled}


def _records(folder: Path):
    import tensorflow as tf

    from tfrecords_schema import decode_video_record

    return {r.video_id: r for f in sorted(folder.glob("features-*.tfrecord"))
            for r in (decode_video_record(raw) for raw in tf.data.TFRecordDataset(str(f)).as_numpy_iterator())}


def assert_same_records(found: Path, expected: Path) -> None:
    a, b = _records(found), _records(expected)
    assert sorted(a) == sorted(b) and len(a) == 4
    for video_id, record in a.items():
        reference = b[video_id]
        assert (record.label, record.uri, record.fingerprint) == (reference.label, reference.uri, reference.fingerprint)
        assert (record.num_valid_frames, list(record.frame_indices)) == (reference.num_valid_frames,
                                                                         list(reference.frame_indices))
        np.testing.assert_allclose(record.features, reference.features, atol=1e-5)
    assert len(list(found.glob("features-*-of-00002.tfrecord"))) == 2
    for name in ("labels.txt", "failures.csv"):
        assert (found / name).read_text() == (expected / name).read_text()
    assert (found / "manifest.json").exists() and not list(found.glob(".staging-*"))


def _rows(folder: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((folder / "labels.csv").read_text())))


def assert_same_labels(found: Path, expected: Path) -> None:
    a, b = _rows(found), _rows(expected)
    assert [r["video_id"] for r in a] == [r["video_id"] for r in b] and len(a) == 4
    assert list(a[0]) == list(b[0])  # the same columns in the same order
    for row, reference in zip(a, b):
        numeric = [c for c in row if c == "confidence" or c.startswith("p_")]
        for column in row:
            if column in numeric:
                assert abs(float(row[column]) - float(reference[column])) <= 1e-5, (row["video_id"], column)
            elif column == "top_k":  # label:probability pairs; the labels and their order must match
                assert [p.rpartition(":")[0] for p in row[column].split(";")] == \
                       [p.rpartition(":")[0] for p in reference[column].split(";")]
            else:
                assert row[column] == reference[column], (row["video_id"], column)
        assert abs(sum(float(row[c]) for c in numeric if c.startswith("p_")) - 1.0) < 1e-4
    per_video = sorted(p.relative_to(found).as_posix() for p in (found / "per_video").rglob("*.csv"))
    assert per_video == sorted(p.relative_to(expected).as_posix() for p in (expected / "per_video").rglob("*.csv"))
    assert (found / "failures.csv").read_text() == (expected / "failures.csv").read_text()


def test_portable_runner_with_an_external_worker_pool_matches_in_process(clips, in_process, portable_args,
                                                                         tmp_path):
    features = _featurize(clips, tmp_path / "features", portable_args)
    assert_same_records(features, in_process["features"])
    labels = _predict(clips, in_process["model"], tmp_path / "labels", portable_args)
    assert_same_labels(labels, in_process["labels"])


def _python_a_shell_can_run(work: Path) -> str:
    """This interpreter, at a path Beam's multi-processing runner can start workers from: it runs
    `<sys.executable> -m ...` through a shell unquoted, so from a venv under a path with a space every worker dies
    at once (exit 127) and the job waits forever (the product refuses that with one line: test_flags). There, the
    same venv through a link at a plain path."""
    import shlex

    if shlex.quote(sys.executable) == sys.executable:
        return sys.executable
    link = work / "venv"
    link.symlink_to(sys.prefix, target_is_directory=True)
    return str(link / Path(sys.executable).relative_to(sys.prefix))


def _job(python: str, module: str, args: list[str], cwd: Path) -> None:
    """`python -m module args` to its end."""
    done = subprocess.run([python, "-m", module, *args], env=_worker_env(), cwd=cwd, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]


def test_multi_processing_direct_runner_matches_in_process(clips, in_process, tmp_path):
    python = _python_a_shell_can_run(tmp_path)
    features = tmp_path / "features"
    _job(python, "beam_jobs.featurize", ["--input", str(clips), "--output", str(features), "--weights", "random",
                                 "--image-size", str(IMAGE_SIZE), "--max-seq-length", str(FRAMES), "--num-shards",
                                 "2", "--batch-size", "6", *MULTI_PROCESS_ARGS], tmp_path)
    assert_same_records(features, in_process["features"])
    # Label the records just written (no second DenseNet per worker), with one classifier per machine
    # shared by both worker processes; the rows must equal those labelled from the videos in process.
    labels = tmp_path / "labels"
    _job(python, "beam_jobs.predict", ["--features", str(features), "--model", str(in_process["model"]), "--output",
                               str(labels), "--per-video", "--classifier-batch-size", "3", "--large-model",
                               *MULTI_PROCESS_ARGS], tmp_path)
    assert_same_labels(labels, in_process["labels"])


def test_featurize_on_concurrent_threads_matches_in_process(clips, in_process, tmp_path):
    """DoFn instances on four threads of one process share one DenseNet121: with --weights random, a network
    built per thread from the process-global seed differed from thread to thread."""
    features = _featurize(clips, tmp_path / "features", [
        "--runner", "DirectRunner", "--direct_running_mode", "multi_threading", "--direct_num_workers", "4"])
    assert_same_records(features, in_process["features"])


def test_predict_from_the_command_line_on_the_portable_runner(in_process, portable_args, tmp_path):
    """`python -m beam_jobs.predict` as users run it: its classes must not belong to `__main__`, which SDK
    workers cannot import."""
    output = tmp_path / "labels"
    done = subprocess.run(
        [sys.executable, "-m", "beam_jobs.predict", "--features", str(in_process["features"]), "--model",
         str(in_process["model"]), "--output", str(output), *portable_args],
        env=_worker_env(), cwd=tmp_path, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    rows, reference = _rows(output), _rows(in_process["labels"])
    assert [r["video_id"] for r in rows] == [r["video_id"] for r in reference]
    for row, expected in zip(rows, reference):
        assert row["label"] == expected["label"]
        assert abs(float(row["confidence"]) - float(expected["confidence"])) <= 1e-5
