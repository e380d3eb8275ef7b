"""Every job on Prism, Beam's local runner, gives what the in-process runner gives on the same inputs.

Beam's `DirectRunner` runs a pipeline on Prism (a Go program, `make prism` builds it) whenever it finds the
binary, so Prism is the runner users with internet access get. Prism runs the pipeline itself: it fuses and
splits stages its own way, sends every element across its data plane between them, and runs the job's
DoFns in an SDK harness it drives over gRPC (in the launching process: environment LOOPBACK). Jobs here run
with `--runner PrismRunner --prism_location <the binary make prism built>` and are compared with the
in-process runner (FnApiRunner):

- featurize: records (ids, labels, frame indices, features within 1e-5), labels.txt, and the bad-input
  corpus's failures.csv;
- predict: labels.csv rows, a second, incremental run with one new and one removed clip, and `--segments`
  (segments.csv, events.csv, the WebVTT tracks);
- gs:// in and out, against the Cloud Storage emulator (tests/test_gcs.py);
- the lease: a second run on Prism while the first holds the output exits 75; the first publishes;
- `--runner DirectRunner` on a machine where Beam finds Prism in its cache runs the job on Prism.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import read_csv, read_records
from test_bad_inputs import EXPECTED_FAILURES, SUCCEEDING, corpus  # noqa: F401  (corpus: a fixture)
from test_gcs import BUCKET, _gcs_records, gcs  # noqa: F401  (gcs: the emulator fixture)
from test_report import CLASSES, make_model_dir, write_clips
from tools.prism import prism_binary

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE, FRAMES = 32, 4
LABELS = sorted(CLASSES)  # the classes of make_model_dir
JOB_TIMEOUT_S = 300


def _require_prism() -> Path:
    binary = prism_binary()
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if go is None:
        pytest.skip("Go is not installed, so `make prism` cannot build Prism: the Prism tests need it")
    pytest.skip(f"Prism is not built at {binary}: run `make prism`")


@pytest.fixture(scope="module")
def prism_args() -> list[str]:
    # Without Beam's process-wide Prism server (PrismRunner.shared_handle): left running after these tests, it
    # would take every later in-process `--runner DirectRunner` pipeline of the suite onto Prism.
    return ["--runner", "PrismRunner", "--prism_location", str(_require_prism()),
            "--experiments", "disable_prism_server_singleton"]


# The in-process runner, named: `--runner DirectRunner` would itself run on Prism where Beam finds it.
IN_PROCESS_ARGS = ["--runner", "FnApiRunner"]


def job_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


# --- featurize -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("prism_clips"), per_class=1, seed=21)


def clip_ids(clips: Path) -> set[str]:
    return {p.relative_to(clips).as_posix() for p in clips.rglob("*.*") if p.name != "labels.csv"}


def clip_records(featurized: dict, clips: Path) -> dict:
    """The in-process records of `clips` by their ids in a run over `clips` alone (the featurize fixture's ids
    are relative to the folder above the clips and the corpus)."""
    records = read_records(featurized["in_process"][1])
    return {k.split("/", 1)[1]: v for k, v in records.items() if k.startswith(clips.name + "/")}


def featurize_args(inputs: list[Path], output: Path, runner_args: list[str]) -> list[str]:
    return [*(a for path in inputs for a in ("--input", str(path))), "--output", str(output), "--weights", "random",
            "--image-size", str(IMAGE_SIZE), "--max-seq-length", str(FRAMES), "--num-shards", "2",
            "--batch-size", "6", "--decode-timeout", "60", *runner_args]


def _featurize(inputs, output, runner_args):
    from beam_jobs import featurize

    return featurize.run(featurize_args(inputs, output, runner_args))


@pytest.fixture(scope="module")
def featurized(clips, corpus, prism_args, tmp_path_factory):  # noqa: F811
    """The clips and the bad-input corpus featurized on each runner."""
    work = tmp_path_factory.mktemp("prism_featurize")
    return {name: (_featurize([clips, corpus], work / name, args), work / name)
            for name, args in (("in_process", IN_PROCESS_ARGS), ("prism", prism_args))}


def assert_same_records(found: dict, expected: dict) -> None:
    assert sorted(found) == sorted(expected)
    for video_id, record in found.items():
        reference = expected[video_id]
        assert (record.label, record.uri, record.fingerprint) == (reference.label, reference.uri, reference.fingerprint)
        assert (record.num_valid_frames, list(record.frame_indices)) == (reference.num_valid_frames,
                                                                         list(reference.frame_indices))
        np.testing.assert_allclose(record.features, reference.features, atol=1e-5, err_msg=video_id)


def test_featurize_on_prism_matches_in_process(featurized, clips, corpus):  # noqa: F811
    (_, expected), (result, found) = featurized["in_process"], featurized["prism"]
    assert type(result).__module__ == "apache_beam.runners.portability.portable_runner"  # Prism ran it
    records = read_records(found)
    assert set(records) == ({f"{clips.name}/{i}" for i in clip_ids(clips)} |
                            {f"{corpus.name}/{i}" for i in SUCCEEDING}) and len(clip_ids(clips)) == 3
    assert_same_records(records, read_records(expected))
    assert sorted(p.name for p in found.glob("features-*")) == sorted(p.name for p in expected.glob("features-*"))
    for name in ("labels.txt", "failures.csv"):
        assert (found / name).read_text() == (expected / name).read_text(), name
    assert {row["video_id"] for row in read_csv(found / "failures.csv")} == {f"{corpus.name}/{i}"
                                                                              for i in EXPECTED_FAILURES}
    manifest = json.loads((found / "manifest.json").read_text())
    assert (manifest["videos_matched"], manifest["records_written"], manifest["failures"]) == (
        len(records) + len(EXPECTED_FAILURES), len(records), len(EXPECTED_FAILURES))
    assert not [p.name for p in found.iterdir() if p.name.startswith((".staging-", ".lease"))]
    # Not compared: Beam's counters as Prism 2.77 reports them to the job's result. Over the same corpus they
    # came back right in most runs, but also as videos_failed 3 or 22 for 10 failures (and videos_embedded
    # missing), while DecodeFramesDoFn.process ran exactly once per video: manifest.json's counts, which come
    # from the pipeline's own data, are what the product promises.


def test_featurize_on_prism_decodes_and_embeds_in_one_bundle(featurized):
    """Prism splits a running bundle in half whenever its input has not moved for 0.1 s, and runs the halves at
    once: the decode-and-embed stage ended as 4-8 bundles, each with its own decoder children and embedder
    batches (bench/runners.py: 0.39x the in-process runner's videos/s on 300 short clips). The jobs turn that
    off (beam_jobs.flags.PRISM_EXPERIMENTS), so the stage runs as the one bundle Prism starts it with."""
    from apache_beam.metrics.metric import MetricsFilter

    result = featurized["prism"][0]
    counters = result.metrics().query(MetricsFilter().with_namespace("videos").with_name("decode_bundles"))
    assert [c.committed for c in counters["counters"]] == [1]


# --- predict ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("prism_model") / "model")


def predict_args(inputs: Path, model: Path, output: Path, runner_args: list[str]) -> list[str]:
    # Windows of 0.4 s every 0.2 s on clips of 6-14 frames at 25 fps; an untrained model is never confident,
    # so every window counts towards events.
    return ["--input", str(inputs), "--model", str(model), "--output", str(output), "--per-video",
            "--batch-size", "8", "--classifier-batch-size", "3", "--segments", "0.4", "--segment-stride", "0.2",
            "--min-confidence", "0", "--decode-timeout", "60", *runner_args]


def _predict(inputs, model, output, runner_args):
    from beam_jobs import predict

    return predict.run(predict_args(inputs, model, output, runner_args))


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def assert_same_rows(found: list[dict], expected: list[dict], key: str) -> None:
    """The same rows in the same order; numbers (probabilities, confidences, times) within 1e-5."""
    assert [r[key] for r in found] == [r[key] for r in expected] and found
    assert list(found[0]) == list(expected[0])
    for row, reference in zip(found, expected):
        for column, value in row.items():
            try:
                close = abs(float(value) - float(reference[column])) <= 1e-5
            except ValueError:  # top_k is label:probability pairs: the labels and their order must match
                close = ([p.rpartition(":")[0] for p in value.split(";")] ==
                         [p.rpartition(":")[0] for p in reference[column].split(";")])
            assert close, (row[key], column, value, reference[column])


def assert_same_labels(found: Path, expected: Path) -> None:
    assert_same_rows(_rows(found / "labels.csv"), _rows(expected / "labels.csv"), "video_id")
    for name in ("segments.csv", "events.csv"):
        assert_same_rows(_rows(found / name), _rows(expected / name), "video_id")
    tracks = sorted(p.relative_to(found).as_posix() for p in (found / "tracks").rglob("*.vtt"))
    assert tracks and tracks == sorted(p.relative_to(expected).as_posix() for p in (expected / "tracks").rglob("*.vtt"))
    for track in tracks:  # cue times and labels; the confidences in them are rounded
        assert (found / track).read_text() == (expected / track).read_text(), track
    per_video = sorted(p.relative_to(found).as_posix() for p in (found / "per_video").rglob("*.csv"))
    assert per_video == sorted(p.relative_to(expected).as_posix() for p in (expected / "per_video").rglob("*.csv"))
    assert (found / "failures.csv").read_text() == (expected / "failures.csv").read_text()


def test_predict_on_prism_matches_in_process_and_reruns_incrementally(clips, model_dir, prism_args, tmp_path):
    """A first run with --segments, then a scheduled re-run after one clip was added and one removed."""
    inputs = tmp_path / "clips"
    shutil.copytree(clips, inputs)
    outputs = {"in_process": (tmp_path / "in_process", IN_PROCESS_ARGS), "prism": (tmp_path / "prism", prism_args)}
    for output, args in outputs.values():
        _predict(inputs, model_dir, output, args)
    assert_same_labels(outputs["prism"][0], outputs["in_process"][0])
    assert len(_rows(outputs["prism"][0] / "labels.csv")) == 3

    removed = sorted(inputs.rglob("*.avi"))[0]
    removed.unlink()
    added = write_clips(tmp_path / "more", per_class=1, seed=22, classes=["growing"])
    new_clip = next(added.rglob("*.avi"))
    shutil.copy(new_clip, inputs / "growing" / "added.avi")
    for output, args in outputs.values():
        _predict(inputs, model_dir, output, args)
    found, expected = outputs["prism"][0], outputs["in_process"][0]
    assert_same_labels(found, expected)
    ids = [r["video_id"] for r in _rows(found / "labels.csv")]
    assert "growing/added.avi" in ids and removed.relative_to(inputs).as_posix() not in ids and len(ids) == 3
    manifest = json.loads((found / "manifest.json").read_text())
    assert (manifest["labelled_this_run"], manifest["reused_from_previous_run"]) == (1, 2)


# --- gs:// -----------------------------------------------------------------------------------------------------


def expected_probabilities(featurized: dict, clips: Path, model_dir: Path) -> dict[str, np.ndarray]:
    """{video id: class probabilities}: the model applied directly to the in-process records of `clips` (jobs
    that embed at the same --batch-size get these features within 1e-5)."""
    from model.export import load_model_dir

    records, loaded = clip_records(featurized, clips), load_model_dir(str(model_dir))
    ids = sorted(records)
    features = np.stack([records[i].features for i in ids]).astype(np.float32)
    mask = np.stack([records[i].mask for i in ids]).astype(bool)
    return dict(zip(ids, np.asarray(loaded.model.predict_on_batch({"features": features, "mask": mask}))))


def assert_labelled(rows: list[dict], expected: dict[str, np.ndarray], labels: list[str]) -> None:
    assert [row["video_id"] for row in rows] == sorted(expected)
    for row in rows:
        probabilities = np.array([float(row[f"p_{label}"]) for label in labels])
        np.testing.assert_allclose(probabilities, expected[row["video_id"]], atol=1e-5, err_msg=row["video_id"])
        assert row["label"] == labels[int(np.argmax(probabilities))]


def test_gcs_in_and_out_on_prism(gcs, clips, model_dir, featurized, prism_args):  # noqa: F811
    """featurize and predict read videos from gs:// and write their outputs there, through Beam's GCS
    filesystem in the harness Prism drives."""
    for path in sorted(p for p in clips.rglob("*.*") if p.name != "labels.csv"):
        gcs.bucket.upload("prism_clips/" + path.relative_to(clips).as_posix(), path.read_bytes())
    clips_uri = f"gs://{BUCKET}/prism_clips/"
    gcs.run("beam_jobs.featurize", "--input", clips_uri, "--output", f"gs://{BUCKET}/prism_features", "--weights",
            "random", "--image-size", str(IMAGE_SIZE), "--max-seq-length", str(FRAMES), "--num-shards", "2",
            "--batch-size", "6", *prism_args)
    found, expected = _gcs_records(gcs, "prism_features/"), clip_records(featurized, clips)
    assert set(found) == set(expected) == clip_ids(clips)
    for record in found.values():
        assert record.uri == clips_uri + record.video_id
        record.uri = expected[record.video_id].uri
    assert_same_records(found, expected)
    assert gcs.bucket.text("prism_features/labels.txt").split() == sorted({r.label for r in expected.values()})

    gcs.run("beam_jobs.predict", "--input", clips_uri, "--model", str(model_dir), "--output",
            f"gs://{BUCKET}/prism_labels", "--batch-size", "6", *prism_args)
    rows = list(csv.DictReader(io.StringIO(gcs.bucket.text("prism_labels/labels.csv"))))
    assert_labelled(rows, expected_probabilities(featurized, clips, model_dir), LABELS)
    assert all(row["video_uri"] == clips_uri + row["video_id"] for row in rows)
    manifest = json.loads(gcs.bucket.text("prism_labels/manifest.json"))
    assert (manifest["videos_matched"], manifest["videos_labelled"], manifest["failures"]) == (3, 3, 0)
    assert [n for n in gcs.bucket.list("prism_") if "/.staging-" in n or n.endswith(".lease.json")] == []


# --- DirectRunner finds Prism where Beam caches it; the lease holds on Prism ----------------------------------


def beam_cache_layout(home: Path, binary: Path) -> Path:
    """Prism as Beam's own download leaves it under HOME: the release archive in ~/.apache_beam/cache/prism/bin,
    named for this Beam version, OS and machine (PrismJobServer._construct_download_url); Beam unzips it
    beside itself on first use. Returns the path of the binary Beam will run."""
    from apache_beam.runners.portability.prism_runner import PrismJobServer
    from apache_beam.version import __version__

    url = PrismJobServer._construct_download_url(f"v{__version__}", f"v{__version__}", platform.system(),
                                                 platform.machine())
    cache = home / ".apache_beam" / "cache" / "prism" / "bin"
    cache.mkdir(parents=True)
    archive = cache / url.rsplit("/", 1)[-1]
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.write(binary, archive.stem)
    return cache / archive.stem


def predict_command(clips: Path, model: Path, output: Path, runner_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "beam_jobs.predict", "--input", str(clips), "--model", str(model), "--output",
            str(output), "--batch-size", "6", *runner_args]


class LoggedRun:
    """A job in a child process (its own process group) whose stderr is read as it comes."""

    def __init__(self, command: list[str], env: dict[str, str]):
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, start_new_session=True)
        self.lines: list[str] = []
        self._drained = threading.Event()

    def wait_for_line(self, text: str) -> None:
        """Read stderr until a line holding `text` (the event); then keep draining it in the background."""
        for line in self.process.stderr:
            self.lines.append(line)
            if text in line:
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self._drained.set()
        pytest.fail(f"the run ended ({self.process.wait()}) before logging {text!r}:\n{''.join(self.lines)[-3000:]}")

    def _drain(self) -> None:
        self.lines.extend(self.process.stderr)
        self._drained.set()

    def finish(self) -> tuple[int, str]:
        self.process.stdout.read()
        status = self.process.wait(timeout=JOB_TIMEOUT_S)
        self._drained.wait(timeout=JOB_TIMEOUT_S)
        return status, "".join(self.lines)


def test_direct_runner_runs_on_prism_from_beams_cache_and_a_second_run_is_refused(clips, model_dir, featurized,
                                                                                  prism_args, tmp_path):
    """As on a user's machine where Beam has downloaded Prism: `--runner DirectRunner` runs the job on it. While
    that job runs (held there), a second run on Prism on the same output exits 75; the first then publishes."""
    home = tmp_path / "home"
    cached_binary = beam_cache_layout(home, _require_prism())
    output = tmp_path / "labels"
    first = LoggedRun(predict_command(clips, model_dir, output, ["--runner", "DirectRunner"]), job_env(HOME=str(home)))
    first.wait_for_line("Job state changed to RUNNING")  # a portable job: it holds the lease and runs on Prism
    os.killpg(first.process.pid, signal.SIGSTOP)  # hold it there (Prism and the job) until the second has gone
    try:
        second = subprocess.run(predict_command(clips, model_dir, output, prism_args), cwd=REPO, env=job_env(),
                                capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    finally:
        os.killpg(first.process.pid, signal.SIGCONT)
    status, log = first.finish()
    assert status == 0, log[-3000:]
    # From the run itself: DirectRunner chose Prism, started the binary from Beam's cache (unzipped there by
    # Beam), and Prism ran the job to its end.
    assert "Running pipeline with PrismRunner." in log and "Falling back" not in log
    assert "Really starting service at localhost:" in log and f"with cmd: ('{cached_binary}'" in log
    # On Beam's process-wide Prism server as the jobs make it (beam_jobs.prism_server): one Prism, waited for
    # until it listened before Beam connected (rather than gRPC's one-second reconnect backoff).
    assert log.count("Really starting service at localhost:") == 1
    assert re.search(r"Prism at localhost:\d+ accepts connections, \d+ ms after its start", log), log[-3000:]
    assert "PrismRunner: pipeline done!" in log and cached_binary.is_file()
    assert_labelled(read_csv(output / "labels.csv"), expected_probabilities(featurized, clips, model_dir), LABELS)
    assert json.loads((output / "manifest.json").read_text())["videos_labelled"] == 3
    assert not [p.name for p in output.iterdir() if p.name.startswith((".staging-", ".lease"))]

    assert second.returncode == 75, second.stderr[-3000:]
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith(f"skipped: {output} is being written by another run (host ")
    assert "Traceback" not in second.stderr
    assert f"pid {first.process.pid}" in last


@pytest.fixture(scope="module")
def many_clips(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("prism_many_clips"), per_class=20, seed=22)


@pytest.mark.parametrize("when", ["running", "embedding"])
def test_ctrl_c_on_prism_is_one_line_and_exit_130(clips, many_clips, tmp_path, when):
    """Ctrl-C while the job runs on Prism: Beam stops Prism first, and its threads streaming from it must not
    print tracebacks over the one line. Once the embedder works, the job's bundle goes on in Beam's SDK harness
    thread: the interpreter's shutdown under it aborted (`terminate called without an active exception`,
    status -6), and its log lines came after the one line. On Beam's process-wide Prism server, as users get it
    (a child process here, so that no such server outlives the test in the suite's)."""
    output = tmp_path / "features"
    inputs = [clips] if when == "running" else [many_clips]
    shared_prism = ["--runner", "PrismRunner", "--prism_location", str(_require_prism())]
    command = [sys.executable, "-m", "beam_jobs.featurize", *featurize_args(inputs, output, shared_prism)]
    if when == "embedding":  # the product's frames, so that the embedder is still at work when Ctrl-C comes
        command += ["--image-size", "128", "--max-seq-length", "20"]
    run = LoggedRun(command, job_env())
    run.wait_for_line("Job state changed to RUNNING" if when == "running" else "uses RANDOM weights")
    os.kill(run.process.pid, signal.SIGINT)
    status, log = run.finish()
    assert status == 130, log[-3000:]
    assert re.search(r"Prism at localhost:\d+ accepts connections", log), log[-3000:]  # beam_jobs.prism_server's
    assert log.strip().splitlines()[-1] == "interrupted: nothing was published"
    assert "Exception in thread" not in log, log[-3000:]
    # What Beam's SDK harness prints itself (not through logging) when Prism goes away under a request it is
    # serving cannot be held back; any other traceback fails.
    for trace in re.findall(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*\S.*", log):
        assert "sdk_worker.py" in trace and trace.splitlines()[-1].startswith("grpc._channel."), trace
    assert not output.exists() or not list(output.iterdir())  # no staging, no lease, no manifest
