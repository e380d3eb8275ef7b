"""beam_jobs.outputs: failures.csv, publishing a job's outputs (manifest last), and PublishOutputs."""

from __future__ import annotations

import datetime
import json
import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

import memfs
from beam_jobs import outputs
from beam_jobs.outputs import (
    FAILURES_FILE,
    MANIFEST_FILE,
    PublishOutputs,
    OutputRun,
    failures_csv,
    publish_outputs,
)
from common import fs
from common.errors import LeaseHeld, LeaseLost, UserError
from common.lease import LEASE_FILE

TestPipeline.__test__ = False  # a Beam class, not a test class for pytest to collect

PATTERNS = ("labels.csv", FAILURES_FILE, "per_video/**")


def files(output: str) -> list[str]:
    return [fs.relative(path, output) for path in fs.files_under(output)]


def test_failures_csv_is_sorted_with_a_header():
    text = failures_csv([("b.avi", "/in/b.avi", "empty file (0 bytes)"),
                         ("a.avi", "/in/a.avi", "cannot open as a video: the file holds text, \"quoted\"")])
    assert text == ('video_id,uri,reason\n'
                    'a.avi,/in/a.avi,"cannot open as a video: the file holds text, ""quoted"""\n'
                    'b.avi,/in/b.avi,empty file (0 bytes)\n')
    assert failures_csv([]) == "video_id,uri,reason\n"


def test_failures_csv_quotes_control_characters_and_reads_back_exactly():
    import csv
    import io

    failures = [("a\rb.avi", "/in/a\rb.avi", "x"), ("n\nl.avi", "/in/n\nl.avi", 'bad "file", truly'),
                ("t\tb.avi", "/in/t\tb.avi", "y"), ("=1+2.avi", "/in/=1+2.avi", "z")]
    text = failures_csv(failures)
    assert '"a\rb.avi","/in/a\rb.avi","x"\n' in text and '"t\tb.avi","/in/t\tb.avi","y"\n' in text
    assert list(csv.reader(io.StringIO(text, newline=""))) == [list(outputs.FAILURE_COLUMNS),
                                                                 *map(list, sorted(failures))]


def test_package_versions_names_every_package():
    versions = outputs.package_versions()
    assert sorted(versions) == sorted(["tensorflow", "keras", "apache-beam", "opencv-python-headless", "numpy",
                                       "video-annotation"])
    assert all(isinstance(v, str) and v for v in versions.values())
    import numpy

    assert versions["numpy"] == numpy.__version__


def prepare_output(output: str, overwrite: bool) -> str:
    """A staging folder as a job gets one, its lease released at once (these tests publish by hand)."""
    with OutputRun(output, "test") as run:
        return run.staging(overwrite)


def test_an_output_run_holds_the_lease_and_refuses_a_finished_run_unless_overwrite(tmp_path):
    output = str(tmp_path / "out")
    with OutputRun(output, "predict") as run:
        assert os.path.exists(os.path.join(output, LEASE_FILE))
        with pytest.raises(LeaseHeld):
            OutputRun(output, "predict").__enter__()
        staging = run.staging(overwrite=False)
        assert staging.startswith(os.path.join(output, ".staging-")) and not os.path.exists(staging)
    assert not os.path.exists(output)  # it made the folder for its lease, and left it empty: removed
    fs.write_text(fs.join(output, MANIFEST_FILE), "{}")
    with pytest.raises(UserError, match=r"already holds a finished run \(manifest.json\); pass --overwrite"):
        with OutputRun(output, "predict") as run:
            run.staging(overwrite=False)
    assert sorted(os.listdir(output)) == [MANIFEST_FILE]  # lease released, nothing staged


def test_a_failed_run_removes_its_staging_and_releases_the_lease(tmp_path):
    output = str(tmp_path / "out")
    fs.write_text(fs.join(output, MANIFEST_FILE), "{}")
    with pytest.raises(KeyboardInterrupt):
        with OutputRun(output, "predict") as run:
            staging = run.staging(overwrite=True)
            fs.write_text(fs.join(staging, "thumbnails/a.jpg"), "half a run")
            raise KeyboardInterrupt
    assert sorted(os.listdir(output)) == [MANIFEST_FILE]


def test_publishing_needs_the_lease_it_was_given(tmp_path):
    output = str(tmp_path / "out")
    with OutputRun(output, "predict") as run:
        staging = run.staging(overwrite=True)
        with pytest.raises(LeaseLost, match="no longer holds the lease"):
            publish_outputs(output, staging, [], {"labels.csv": "video_id\n"}, {"job": "predict"},
                            run_id="someone-else")
        assert not os.path.exists(os.path.join(output, MANIFEST_FILE))
        publish_outputs(output, staging, [], {"labels.csv": "video_id\n"}, {"job": "predict"}, run_id=run.run_id)
    assert sorted(os.listdir(output)) == ["labels.csv", MANIFEST_FILE]


def _old_run(output: str) -> None:
    for name in ["labels.csv", FAILURES_FILE, "per_video/gone.csv", "per_video/sub/gone.csv", "notes.txt",
                 "features-00000-of-00001.tfrecord"]:
        fs.write_text(fs.join(output, name), f"old {name}")
    fs.write_json(fs.join(output, MANIFEST_FILE), {"job": "predict", "old": True})


@pytest.mark.parametrize("where", ["local", "mem"])
def test_publish_outputs_replaces_old_outputs_and_keeps_others(where, tmp_path, bucket, monkeypatch):
    output = str(tmp_path / "out") if where == "local" else f"{bucket}/out"
    _old_run(output)
    staging = prepare_output(output, overwrite=True)
    staged = fs.join(staging, "per_video/new.csv")
    fs.write_text(staged, "class,probability\n")
    moved = []
    real_move = fs.move

    def recording_move(sources, destinations):
        moved.append([fs.relative(d, output) for d in destinations])
        real_move(sources, destinations)

    monkeypatch.setattr(fs, "move", recording_move)
    manifest = publish_outputs(output, staging, [staged], {"labels.csv": "video_id\nx\n", FAILURES_FILE: "video_id\n"},
                               {"job": "predict", "videos_matched": 1}, replace_patterns=PATTERNS)
    assert moved == [["per_video/new.csv", "labels.csv", FAILURES_FILE], [MANIFEST_FILE]]  # the manifest last
    assert files(output) == [FAILURES_FILE, "features-00000-of-00001.tfrecord", "labels.csv", MANIFEST_FILE,
                             "notes.txt", "per_video/new.csv"]
    assert fs.read_text(fs.join(output, "labels.csv")) == "video_id\nx\n"
    assert fs.read_text(fs.join(output, "notes.txt")) == "old notes.txt"
    assert fs.read_text(fs.join(output, "per_video/new.csv")) == "class,probability\n"
    written = fs.read_json(fs.join(output, MANIFEST_FILE))
    assert written == manifest
    assert list(written) == sorted(written)  # json_text sorts the keys
    assert (written["job"], written["videos_matched"]) == ("predict", 1) and "old" not in written
    finished = datetime.datetime.fromisoformat(written["finished_at"])
    assert abs((datetime.datetime.now(datetime.timezone.utc) - finished).total_seconds()) < 60
    assert written["package_versions"] == outputs.package_versions()


def test_publish_outputs_without_patterns_keeps_old_files(tmp_path):
    output = str(tmp_path / "out")
    _old_run(output)
    staging = prepare_output(output, overwrite=True)
    publish_outputs(output, staging, [], {"labels.csv": "new\n"}, {"job": "featurize"})
    assert fs.read_text(fs.join(output, "labels.csv")) == "new\n"
    assert fs.exists(fs.join(output, "per_video/gone.csv"))  # nothing asked to replace it
    assert not [n for n in os.listdir(output) if n.startswith(".staging-")]
    assert fs.read_json(fs.join(output, MANIFEST_FILE))["job"] == "featurize"


def test_a_listing_that_fails_while_publishing_stops_it_and_a_retry_completes(bucket, monkeypatch):
    """A storage error while listing what to replace is an error, not an empty listing (which would leave the old
    per-video files under a new manifest): the publish stops with one line, nothing looks finished with stale
    files in it, and a retry once storage answers again ends with the new output complete."""
    from common.errors import OperationalError

    output = f"{bucket}/out"
    _old_run(output)
    staging = prepare_output(output, overwrite=True)
    monkeypatch.setattr(memfs.MemoryFileSystem, "_list", memfs.listing_fails(memfs.StorageError(503)))
    with pytest.raises(OperationalError, match=r"^cannot list .*/out/.*: 503 from storage$"):
        publish_outputs(output, staging, [], {"labels.csv": "video_id\nnew\n"}, {"job": "predict"},
                        replace_patterns=PATTERNS)
    monkeypatch.undo()
    manifest = fs.join(output, MANIFEST_FILE)
    assert not fs.exists(manifest) or fs.read_json(manifest) == {"job": "predict", "old": True}
    assert fs.read_text(fs.join(output, "per_video/gone.csv")) == "old per_video/gone.csv"  # nothing removed blind
    publish_outputs(output, staging, [], {"labels.csv": "video_id\nnew\n"}, {"job": "predict"},
                    replace_patterns=PATTERNS)  # the retry
    assert fs.read_json(manifest)["job"] == "predict" and "old" not in fs.read_json(manifest)
    assert fs.read_text(fs.join(output, "labels.csv")) == "video_id\nnew\n"
    assert not fs.exists(fs.join(output, "per_video/gone.csv"))
    assert not fs.exists(fs.join(output, "per_video/sub/gone.csv"))
    assert fs.read_text(fs.join(output, "notes.txt")) == "old notes.txt"  # not the product's: kept


class Finish:
    """A picklable `finish`: appends the values it is called with to a file, one JSON line a call."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, rows, total, labels):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"rows": sorted(rows), "total": total, "labels": sorted(labels)}) + "\n")
        return {"published": len(rows), "total": total}


def test_publish_outputs_calls_finish_once_with_the_side_inputs(tmp_path):
    record = str(tmp_path / "calls.jsonl")
    with TestPipeline() as pipeline:
        rows = pipeline | "Rows" >> beam.Create([3, 1, 2])
        total = pipeline | "Total" >> beam.Create([6])
        labels = pipeline | "Labels" >> beam.Create([])
        published = pipeline | PublishOutputs(Finish(record), rows=beam.pvalue.AsList(rows),
                                              total=beam.pvalue.AsSingleton(total), labels=beam.pvalue.AsList(labels))
        assert_that(published, equal_to([{"published": 3, "total": 6}]))
    with open(record, encoding="utf-8") as f:
        calls = [json.loads(line) for line in f]
    assert calls == [{"rows": [1, 2, 3], "total": 6, "labels": []}]
