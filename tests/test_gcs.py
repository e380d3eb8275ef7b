"""gs:// end to end against a local Cloud Storage emulator: videos in, records, model and labels out.

The tests start `gcp-storage-emulator` (in memory, on localhost) and run the real commands in child processes,
exactly as a user would, with:

- Beam's GCS filesystem (google-cloud-storage) pointed at it by `STORAGE_EMULATOR_HOST`. Application Default
  Credentials come from a throw-away `authorized_user` file holding a token that does not expire, so
  google-auth neither refreshes it nor searches for a metadata server (without any credentials Beam retries
  for about 20 seconds in every process before it goes on anonymously).
- TensorFlow's own GCS filesystem (training, model directories) pointed at it too. TensorFlow has no
  emulator setting: its endpoints (https://www.googleapis.com/storage/v1/, https://storage.googleapis.com/)
  are compiled in. Its libcurl does honour `https_proxy` and `CURL_CA_BUNDLE`, so a local proxy answers the
  CONNECT for those two hosts only, terminates TLS with a certificate made for the test (openssl), and
  forwards the plain requests to the emulator. Every other host is refused: nothing leaves localhost.

What this proves: matching gs:// inputs, copying videos out of GCS into the decoder, writing shards, CSVs and
the manifest to gs:// with staging and publish, training that reads gs:// records through tf.data and writes
its model directory to gs://, and the labelling job loading that model from gs:// (launcher and workers) and
re-running incrementally on gs:// listings. It does not prove authentication, IAM, retries on real network
errors or throughput against real Cloud Storage.
"""

from __future__ import annotations

import csv
import http.client
import http.server
import io
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from hosts import free_port

pytest.importorskip("gcp_storage_emulator", reason="test extra gcp-storage-emulator is not installed")

REPO = Path(__file__).resolve().parents[1]
BUCKET = "annotation-test"
IMAGE_SIZE, FRAMES = 32, 4
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
JOB_TIMEOUT_S = 240


class EmulatedBucket:
    """Plain JSON-API calls to the emulator, so the test process itself keeps no GCS client state."""

    def __init__(self, host: str, bucket: str):
        self.host, self.bucket = host, bucket

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        conn = http.client.HTTPConnection(self.host, timeout=30)
        try:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status >= 300:
            raise OSError(f"{method} {path}: HTTP {response.status} {data[:200]!r}")
        return data

    def upload(self, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        self._request("POST", f"/upload/storage/v1/b/{self.bucket}/o?{query}", data)

    def download(self, name: str) -> bytes:
        return self._request("GET", f"/download/storage/v1/b/{self.bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media")

    def text(self, name: str) -> str:
        return self.download(name).decode("utf-8")

    def list(self, prefix: str) -> list[str]:
        names, token = [], None
        while True:
            query = {"prefix": prefix, **({"pageToken": token} if token else {})}
            page = json.loads(self._request("GET", f"/storage/v1/b/{self.bucket}/o?{urllib.parse.urlencode(query)}"))
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(names)


class _StorageProxy(http.server.ThreadingHTTPServer):
    """An HTTPS proxy that sends TensorFlow's Cloud Storage requests to the emulator and refuses all others."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, emulator: str, tls: ssl.SSLContext):
        self.emulator, self.tls = emulator, tls
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60

    def do_CONNECT(self):
        host, _, port = self.path.partition(":")
        if host not in GOOGLE_HOSTS or port != "443":
            _reply(self, 403, [], b"only Cloud Storage hosts are proxied to the emulator")
            self.close_connection = True
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        tunnel = self.server.tls.wrap_socket(self.connection, server_side=True)
        tunnel.settimeout(60)
        try:
            _ForwardHandler(tunnel, self.client_address, self.server)
        finally:
            tunnel.close()
        self.close_connection = True

    def log_message(self, *args):
        pass


class _ForwardHandler(http.server.BaseHTTPRequestHandler):
    """One decrypted client connection: each request goes to the emulator with the same method, path and headers
    (only an empty media upload is rewritten, see `_as_multipart`)."""

    protocol_version = "HTTP/1.1"

    def _forward(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # TF's resumable uploads
            body = b""
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("transfer-encoding", "connection", "proxy-connection", "expect")}
        path = self.path
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        if self.command == "POST" and query.get("uploadType") == ["media"] and not body:
            # TF marks directories with zero-byte objects (`model/`); the emulator cannot store an empty
            # media upload, so send the same object as a multipart upload, which it can.
            path, body, headers["Content-Type"] = _as_multipart(path, query["name"][0])
        if body is not None:
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.server.emulator, timeout=60)
        try:
            conn.request(self.command, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        # The emulator builds upload URLs from the Host header with http://; TF must come back through here.
        kept = [(k, v.replace("http://", "https://", 1) if k.lower() == "location" else v)
                for k, v in response.getheaders()
                if k.lower() not in ("transfer-encoding", "connection", "content-length")]
        _reply(self, response.status, kept, data, head=self.command == "HEAD")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

    def log_message(self, *args):
        pass


def _as_multipart(path: str, name: str) -> tuple[str, bytes, str]:
    """An empty media upload of `name` as the equivalent multipart upload: (path, body, content type)."""
    url = urllib.parse.urlsplit(path)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(url.query) if k not in ("uploadType", "name")]
    query.append(("uploadType", "multipart"))
    body = (b"--part\r\nContent-Type: application/json\r\n\r\n" + json.dumps({"name": name}).encode()
            + b"\r\n--part\r\nContent-Type: application/octet-stream\r\n\r\n\r\n--part--\r\n")
    return f"{url.path}?{urllib.parse.urlencode(query)}", body, "multipart/related; boundary=part"


def _reply(handler, status: int, headers, body: bytes, head: bool = False) -> None:
    handler.send_response(status)
    for key, value in headers:
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if not head:
        handler.wfile.write(body)


def _make_certificate(folder: Path) -> tuple[Path, Path] | None:
    """A self-signed certificate for the Cloud Storage hosts, or None when openssl is not installed."""
    if shutil.which("openssl") is None:
        return None
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", f"/CN={GOOGLE_HOSTS[0]}",
         "-addext", "subjectAltName=" + ",".join(f"DNS:{h}" for h in GOOGLE_HOSTS)],
        check=True, capture_output=True, timeout=60)
    return cert, key


class GcsWorld:
    """The emulator, the proxy and the environment the jobs run with."""

    def __init__(self, bucket: EmulatedBucket, env: dict[str, str], tensorflow_gcs: bool):
        self.bucket, self.env, self.tensorflow_gcs = bucket, env, tensorflow_gcs

    def run(self, module: str, *args: str) -> subprocess.CompletedProcess:
        """`python -m module args` as a user runs it; fails the test with the tail of its log."""
        started = time.monotonic()
        try:
            done = subprocess.run([sys.executable, "-m", module, *args], env=self.env, cwd=REPO,
                                  capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:  # what it logged says where it stopped
            log = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
            pytest.fail(f"{module} did not finish within {JOB_TIMEOUT_S}s:\n{log[-4000:]}")
        print(f"{module} took {time.monotonic() - started:.1f}s")
        assert done.returncode == 0, f"{module} failed ({done.returncode}):\n{done.stderr[-4000:]}"
        return done

    def start(self, module: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", module, *args], env=self.env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def python(self, code: str) -> str:
        """Run `code` in a child process with the emulator's environment; its stdout."""
        done = subprocess.run([sys.executable, "-c", code], env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=JOB_TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-4000:]
        return done.stdout

    def require_tensorflow_gcs(self):
        if not self.tensorflow_gcs:
            pytest.skip("openssl is needed to point TensorFlow's GCS filesystem at the emulator")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    work = tmp_path_factory.mktemp("gcs")
    port = free_port()
    log = open(work / "emulator.log", "wb")
    # The emulator with Cloud Storage's generation preconditions added (the output lease needs them).
    emulator = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "gcs_emulator.py"), "start", "--host", "127.0.0.1", "--port", str(port),
         "--in-memory", "--default-bucket", BUCKET, "-q"],
        stdout=subprocess.DEVNULL, stderr=log, cwd=work)
    proxy = None
    try:
        host = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                EmulatedBucket(host, BUCKET).list("")
                break
            except OSError:
                if emulator.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the GCS emulator did not start: {(work / 'emulator.log').read_text()[-2000:]}")
                time.sleep(0.2)
        credentials = work / "credentials.json"
        credentials.write_text(json.dumps({
            "type": "authorized_user", "client_id": "emulator", "client_secret": "emulator",
            "refresh_token": "emulator", "token": "emulator-token", "expiry": "2099-01-01T00:00:00Z"}))
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            TF_CPP_MIN_LOG_LEVEL="2",
            STORAGE_EMULATOR_HOST=f"http://{host}",
            GOOGLE_APPLICATION_CREDENTIALS=str(credentials),
            GOOGLE_CLOUD_PROJECT="emulator",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        certificate = _make_certificate(work)
        if certificate:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(*map(str, certificate))
            proxy = _StorageProxy(host, tls)
            threading.Thread(target=proxy.serve_forever, daemon=True, name="storage-proxy").start()
            proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
            env.update(https_proxy=proxy_url, HTTPS_PROXY=proxy_url, CURL_CA_BUNDLE=str(certificate[0]),
                       GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator-token", NO_GCE_CHECK="true",
                       # The emulator serves one request at a time with a short listen queue, so tf.data's
                       # parallel reads can be refused now and then: retry as often, but sooner.
                       GCS_RETRY_CONFIG_INIT_DELAY_TIME_US="100000", GCS_RETRY_CONFIG_MAX_DELAY_TIME_US="2000000")
        yield GcsWorld(EmulatedBucket(host, BUCKET), env, certificate is not None)
    finally:
        if proxy is not None:
            proxy.shutdown()
            proxy.server_close()
        emulator.terminate()
        try:
            emulator.wait(timeout=10)
        except subprocess.TimeoutExpired:
            emulator.kill()
            emulator.wait()
        log.close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory, gcs) -> Path:
    """Four tiny clips, one per class, locally and under gs://BUCKET/clips/."""
    from tools.sample_videos import CLASSES, write_sample_set

    root = tmp_path_factory.mktemp("gcs_clips")
    write_sample_set(str(root), per_class=1, seed=5, classes=CLASSES[:4], min_frames=6, max_frames=10,
                     sizes=[(48, 40)])
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "labels.csv"):
        gcs.bucket.upload("clips/" + path.relative_to(root).as_posix(), path.read_bytes())
    return root


def _records(files: dict[str, bytes]):
    from tfrecords_schema import decode_video_record

    records = {}
    for data in files.values():
        for raw in _tfrecord_payloads(data):
            record = decode_video_record(raw)
            records[record.video_id] = record
    return records


def _tfrecord_payloads(data: bytes):
    """Records of a TFRecord file held in memory (length, crc, payload, crc)."""
    offset = 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 8], "little")
        yield data[offset + 12 : offset + 12 + length]
        offset += 12 + length + 4


def _local_records(folder: Path):
    return _records({p.name: p.read_bytes() for p in sorted(folder.glob("features-*.tfrecord"))})


def _gcs_records(gcs, prefix: str):
    names = [n for n in gcs.bucket.list(prefix) if n.rsplit("/", 1)[-1].startswith("features-")]
    return _records({n: gcs.bucket.download(n) for n in names})


@pytest.fixture(scope="module")
def featurized_gcs(gcs, clips):
    gcs.run("beam_jobs.featurize", "--input", f"gs://{BUCKET}/clips/", "--output", f"gs://{BUCKET}/features",
            "--weights", "random", "--image-size", str(IMAGE_SIZE), "--max-seq-length", str(FRAMES),
            "--num-shards", "2", "--runner", "DirectRunner")
    return f"gs://{BUCKET}/features"


def test_featurize_reads_videos_from_gcs_and_writes_records_there(gcs, clips, featurized_gcs, tmp_path):
    from beam_jobs import featurize

    local = tmp_path / "local"
    featurize.run(["--input", str(clips), "--output", str(local), "--weights", "random",
                   "--image-size", str(IMAGE_SIZE), "--max-seq-length", str(FRAMES), "--runner", "DirectRunner"])
    expected, found = _local_records(local), _gcs_records(gcs, "features/")
    clip_ids = sorted(p.relative_to(clips).as_posix() for p in clips.rglob("*") if p.name != "labels.csv" and p.is_file())
    assert len(clip_ids) == 4 and sorted(found) == sorted(expected) == clip_ids
    for video_id, record in found.items():
        assert record.uri == f"gs://{BUCKET}/clips/{video_id}"
        assert record.label == expected[video_id].label == video_id.split("/")[0]
        assert record.fingerprint == expected[video_id].fingerprint
        assert record.frame_indices == expected[video_id].frame_indices
        np.testing.assert_allclose(record.features, expected[video_id].features, atol=1e-5)
    names = gcs.bucket.list("features/")
    assert [n for n in names if n.startswith("features/features-")] == [
        "features/features-00000-of-00002.tfrecord", "features/features-00001-of-00002.tfrecord"]
    assert gcs.bucket.text("features/labels.txt").split() == ["fading_in", "fading_out", "growing", "shrinking"]
    assert list(csv.reader(io.StringIO(gcs.bucket.text("features/failures.csv")))) == [["video_id", "uri", "reason"]]
    manifest = json.loads(gcs.bucket.text("features/manifest.json"))
    assert (manifest["videos_matched"], manifest["records_written"], manifest["failures"]) == (4, 4, 0)


def test_no_staging_objects_are_left_on_gcs(gcs, featurized_gcs):
    """Object stores have no folders: deleting `.staging-<id>` as one path would leave every object under it."""
    assert [n for n in gcs.bucket.list("features/") if "/.staging-" in n] == []


@pytest.fixture(scope="module")
def model_gcs(gcs, featurized_gcs):
    """model.train reading gs:// records through TensorFlow's own filesystem, writing its model to gs://."""
    gcs.require_tensorflow_gcs()
    gcs.run("model.train", "--train", featurized_gcs, "--output", f"gs://{BUCKET}/model", "--epochs", "2",
            "--patience", "0", "--validation-split", "0.25", "--seed", "3")
    return f"gs://{BUCKET}/model"


def test_training_reads_gcs_records_and_writes_the_model_dir_to_gcs(gcs, model_gcs, tmp_path):
    from model.export import load_model_dir

    names = gcs.bucket.list("model/")
    for required in ("model/model.keras", "model/labels.txt", "model/preprocessing.json", "model/metrics.json",
                     "model/saved_model/saved_model.pb"):
        assert required in names
    local = _download_model(gcs, tmp_path / "model")
    loaded = load_model_dir(str(local))
    assert loaded.labels == ["fading_in", "fading_out", "growing", "shrinking"]
    assert (loaded.spec.max_seq_length, loaded.spec.image_size) == (FRAMES, IMAGE_SIZE)
    assert loaded.spec.backbone_id == "densenet121/random-seed1337"
    metrics = json.loads(gcs.bucket.text("model/metrics.json"))
    # Every gs:// record was read: 4 videos split between training and validation, 2 epochs run.
    assert metrics["num_train_examples"] + metrics["num_val_examples"] == 4 and metrics["epochs_run"] == 2
    assert metrics["model_id"] == loaded.model_id and metrics["labels"] == loaded.labels


def _download_model(gcs, folder: Path) -> Path:
    """The files of gs://BUCKET/model that load_model_dir needs, copied to `folder`."""
    for name in ("model.keras", "labels.txt", "preprocessing.json"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(gcs.bucket.download(f"model/{name}"))
    return folder


def _expected_probabilities(records, local_model: Path):
    from model.export import load_model_dir

    loaded = load_model_dir(str(local_model))
    ids = sorted(records)
    features = np.stack([records[i].features for i in ids]).astype(np.float32)
    mask = np.stack([records[i].mask for i in ids]).astype(bool)
    probabilities = np.asarray(loaded.model.predict_on_batch({"features": features, "mask": mask}))
    return loaded, dict(zip(ids, probabilities))


def test_predict_labels_gcs_videos_with_a_gcs_model_and_reruns_incrementally(gcs, clips, model_gcs, tmp_path):
    output = f"gs://{BUCKET}/labels"
    args = ["--input", f"gs://{BUCKET}/clips/", "--model", model_gcs, "--output", output, "--per-video",
            "--runner", "DirectRunner"]
    gcs.run("beam_jobs.predict", *args)
    loaded, expected = _expected_probabilities(_gcs_records(gcs, "features/"), _download_model(gcs, tmp_path / "m"))
    rows = list(csv.DictReader(io.StringIO(gcs.bucket.text("labels/labels.csv"))))
    assert [row["video_id"] for row in rows] == sorted(expected)
    for row in rows:
        probabilities = np.array([float(row[f"p_{label}"]) for label in loaded.labels])
        np.testing.assert_allclose(probabilities, expected[row["video_id"]], atol=1e-5)
        assert row["label"] == loaded.labels[int(np.argmax(probabilities))]
        assert row["video_uri"] == f"gs://{BUCKET}/clips/{row['video_id']}"
        assert row["model_id"] == loaded.model_id  # the same content hash, read locally or from gs://
        per_video = gcs.bucket.text(f"labels/per_video/{row['video_id']}.csv").splitlines()
        assert per_video[0] == "class,probability" and len(per_video) == 1 + len(loaded.labels)
    manifest = json.loads(gcs.bucket.text("labels/manifest.json"))
    assert (manifest["videos_matched"], manifest["labelled_this_run"], manifest["failures"]) == (4, 4, 0)

    # A scheduled re-run: nothing changed in the bucket, so every row comes from the previous run.
    gcs.run("beam_jobs.predict", *args)
    again = json.loads(gcs.bucket.text("labels/manifest.json"))
    assert (again["videos_labelled"], again["labelled_this_run"], again["reused_from_previous_run"]) == (4, 0, 4)
    assert list(csv.DictReader(io.StringIO(gcs.bucket.text("labels/labels.csv")))) == rows
    assert again["last_check"]["videos_checked"] == 4 and again["run_id"] == manifest["run_id"]  # no pipeline ran

    # One object written again with the same bytes: a new generation, so the listing says it changed; its
    # fingerprint says it did not (no model work), and the other three rows are carried from the gs:// files.
    name = f"clips/{rows[1]['video_id']}"
    gcs.bucket.upload(name, gcs.bucket.download(name))
    gcs.run("beam_jobs.predict", *args)
    third = json.loads(gcs.bucket.text("labels/manifest.json"))
    assert (third["videos_labelled"], third["labelled_this_run"], third["reused_from_previous_run"]) == (4, 0, 4)
    assert "last_check" not in third and third["run_id"] != manifest["run_id"]  # this one published
    assert list(csv.DictReader(io.StringIO(gcs.bucket.text("labels/labels.csv")))) == rows
    index = [json.loads(line) for line in gcs.bucket.text("labels/index-00000-of-00001.jsonl").splitlines()]
    assert [e["video_id"] for e in index] == [row["video_id"] for row in rows]


def test_the_lease_holds_on_gcs_with_generation_preconditions(gcs):
    """Leases through Cloud Storage's own atomic create (ifGenerationMatch=0), renewal, expiry and release;
    then rounds of takers racing a stalled holder's renewals over HTTP: one winner each time. Expiry is judged
    by a clock the code takes (the takers' runs 60 s later), renewals are waited for as events: no sleeps."""
    out = gcs.python(f"""
import threading, time
from common.errors import LeaseHeld, LeaseLost
from common.lease import Lease
first = Lease.acquire("gs://{BUCKET}/leased", ttl_s=30, renew_every_s=0.05)
try:
    Lease.acquire("gs://{BUCKET}/leased", ttl_s=30)
    print("second acquired")
except LeaseHeld as exc:
    print("held:", "pid" in str(exc))
print("renewed:", first.wait_for_renewals(2))
first.check()
first._stop.set()  # as if killed: no more renewals
later = lambda: time.time() + 60
taken = Lease.acquire("gs://{BUCKET}/leased", ttl_s=30, clock=later)
print("taken over:", taken.took_over)
try:
    first.check()
except LeaseLost:
    print("first lost")
taken.release()
for round_ in range(4):
    where = f"gs://{BUCKET}/raced{{round_}}"
    stalled = Lease.acquire(where, ttl_s=30, renew_every_s=3600)
    won, barrier = [], threading.Barrier(4)
    def take():
        barrier.wait()
        try:
            won.append(Lease.acquire(where, ttl_s=30, renew_every_s=3600, clock=later))
        except LeaseHeld:
            pass
    def renew():
        barrier.wait()
        for _ in range(3):
            stalled.renew()
    threads = [threading.Thread(target=take) for _ in range(3)] + [threading.Thread(target=renew)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print("round", round_, len(won), stalled.renew(), won[0].renew() if won else None)
    [lease.release() for lease in [stalled, *won]]
""")
    lines = out.split("\n")
    assert lines[:4] == ["held: True", "renewed: True", "taken over: True", "first lost"], out
    assert lines[4:8] == [f"round {i} 1 False True" for i in range(4)], out
    assert [n for n in gcs.bucket.list("leased/")] == [] and [n for n in gcs.bucket.list("raced")] == []


def test_overlapping_runs_on_a_gcs_output_one_publishes(gcs, clips, model_gcs):
    output = f"gs://{BUCKET}/overlap"
    args = ["--input", f"gs://{BUCKET}/clips/", "--model", model_gcs, "--output", output, "--runner", "DirectRunner"]
    runs = [gcs.start("beam_jobs.predict", *args) for _ in range(2)]
    errors = [run.communicate(timeout=JOB_TIMEOUT_S)[1] for run in runs]
    results = [(run.returncode, err) for run, err in zip(runs, errors)]
    assert sorted(status for status, _ in results) == [0, 75], [err[-2000:] for _, err in results]
    (skipped,) = [err for status, err in results if status == 75]
    assert skipped.strip().splitlines()[-1].startswith(f"skipped: {output} is being written by another run (host ")
    assert json.loads(gcs.bucket.text("overlap/manifest.json"))["videos_labelled"] == 4
    assert [n for n in gcs.bucket.list("overlap/") if "/.staging-" in n or n.endswith(".lease.json")] == []


@pytest.mark.parametrize("step, when, first", [("featurize", "before", 1), ("predict", "after", 3)])
def test_publishing_retried_after_any_failed_operation_on_gcs(gcs, step, when, first):
    """tests/test_publish_retries.py's check through Beam's own GCS filesystem: file operations of the
    publishing step fail (before doing them, or after: an answer lost), then the step is retried. Every sixth
    operation here, over HTTP; every one of them on mem:// in tests/test_publish_retries.py."""
    out = gcs.python(f"""
import sys
sys.path.insert(0, "tests")
import pytest
from test_publish_retries import check_every_failure
with pytest.MonkeyPatch.context() as patch:
    print(check_every_failure("{step}", "gs://{BUCKET}/retried-{step}", "{when}", patch, every=6, first={first}))
""")
    assert int(out.split()[-1]) >= 10
    assert [n for n in gcs.bucket.list(f"retried-{step}/") if "/.staging-" in n or ".publishing" in n] == []
