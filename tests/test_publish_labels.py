"""beam_jobs.publish_labels.FinishPredict on its own, without a pipeline: what one labelling run publishes over
the previous one (the merged CSVs, the manifest, the report's facts and thumbnails, the files of removed videos
deleted, the summary lines), and the checks before it publishes. Expected values are written out by hand."""

from __future__ import annotations

import base64
import json
import logging
import types

import pytest

from beam_jobs import publish_labels
from beam_jobs.publish_labels import FinishPredict
from common import fs
from common.errors import LeaseLost
from common.lease import Lease

COLUMNS = ("video_id", "video_uri", "label", "confidence", "top_k")
SEGMENT_COLUMNS = ("video_id", "segment", "start_s", "end_s", "label", "confidence", "top_k")
OLD_FILES = {"labels.csv": "old labels", "failures.csv": "old failures", "report.html": "old report",
             "index.jsonl": "old single index", "index-00000-of-00001.jsonl": "old index",
             "thumbnails/b.mp4.jpg": "carried b", "thumbnails/gone.mp4.jpg": "old gone",
             "per_video/b.mp4.csv": "carried b", "per_video/gone.mp4.csv": "old gone",
             "tracks/gone.mp4.vtt": "old gone", "review/old.json": "old task", "notes.txt": "the user's own"}
# This run's index entries, sorted in each part; published merged into one file in video id order.
INDEX_LINES = ['{"video_id": "a.mp4", "fingerprint": "fa"}\n', '{"video_id": "b.mp4", "fingerprint": "fb"}\n',
               '{"video_id": "c.mp4", "fingerprint": "fc"}\n']
NOW = 1_000.0  # time.time() as publish_labels sees it
STARTED = NOW - 100.26  # when the job was launched


def write(path: str, text: str) -> str:
    fs.write_text(path, text)
    return path


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A previous finished run in `output`, this run's staging, its lease; returns (output, staging, lease)."""
    monkeypatch.setattr(publish_labels, "time", types.SimpleNamespace(time=lambda: NOW))
    monkeypatch.setattr(logging.getLogger("beam_jobs.predict"), "disabled", False)
    output = str(tmp_path / "out")
    for name, text in OLD_FILES.items():
        write(fs.join(output, name), text)
    fs.write_json(fs.join(output, "manifest.json"), {"job": "predict", "outputs": [
        "labels.csv", "failures.csv", "report.html", "index.jsonl", "index-*-of-*.jsonl", "thumbnails/**",
        "per_video/**", "tracks/**", "review/**"]})
    lease = Lease.acquire(output, ttl_s=600, renew_every_s=3600)
    staging = fs.join(output, ".staging-test")
    yield output, staging, lease
    lease.release()


def stage(staging: str, segments: bool = False) -> dict:
    """This run's staged files; returns FinishPredict's arguments besides counts and summary."""
    parts = fs.join(staging, "_parts")
    labels = [write(fs.join(parts, "labels-00000-of-00002.txt"),
                    "a.mp4,/in/a.mp4,a,0.9,a:0.90\nc.mp4,/in/c.mp4,unknown,0.3,a:0.30\n"),
              write(fs.join(parts, "labels-00001-of-00002.txt"), "b.mp4,/in/b.mp4,b,0.8,b:0.80\n")]
    failures = [write(fs.join(parts, "failures-00000-of-00001.txt"), "d.mp4,/in/d.mp4,empty file (0 bytes)\n")]
    removed = [write(fs.join(parts, "removed-00000-of-00001"), json.dumps("gone.mp4") + "\n")]
    index = [write(fs.join(parts, "index-00000-of-00002"), INDEX_LINES[0] + INDEX_LINES[2]),
             write(fs.join(parts, "index-00001-of-00002"), INDEX_LINES[1])]
    write(fs.join(staging, "thumbnails/a.mp4.jpg"), "staged a")
    write(fs.join(staging, "per_video/a.mp4.csv"), "new a")
    write(fs.join(staging, "inputs.jsonl"), "the launcher's list")
    arguments = {"label_shards": [(labels[0], 2), (labels[1], 1)], "failure_shards": [(failures[0], 1)],
                 "removed_files": removed, "index_shards": [(index[0], 2), (index[1], 1)]}
    if segments:
        arguments["segment_shards"] = [
            (write(fs.join(parts, "segments-0.txt"), "a.mp4,9,9.0,11.0,a,0.9,a:0.90\nb.mp4,0,0.0,2.0,b,0.8,b:0.80\n"), 2),
            (write(fs.join(parts, "segments-1.txt"), "a.mp4,10,10.0,12.0,a,0.9,a:0.90\n"), 1)]
        arguments["event_shards"] = [
            (write(fs.join(parts, "events-0.txt"), "a.mp4,a,9,10,9.0,12.0,0.9,2\n"), 1),
            (write(fs.join(parts, "events-1.txt"), "a.mp4,b,0,0,1.5,2.0,0.6,1\nb.mp4,b,0,0,0.0,2.0,0.8,1\n"), 2)]
        write(fs.join(staging, "tracks/a.mp4.vtt"), "WEBVTT")
    return arguments


COUNTS = {"matched": 4, "by_model": 1, "reused_content": 1, "carried": 1, "failed": 1, "frames_sampled": 8,
          "thumbnails": 1, "per_video": 2}
SHOWN = [{"video_id": "a.mp4", "video_uri": "/in/a.mp4", "label": "a", "confidence": "0.9", "top_k": "a:0.90"},
         {"video_id": "b.mp4", "video_uri": "/in/b.mp4", "label": "b", "confidence": "0.8", "top_k": "b:0.80"},
         {"video_id": "c.mp4", "video_uri": "/in/c.mp4", "label": "unknown", "confidence": "0.3", "top_k": "a:0.30"}]
SUMMARY = {"videos": 3, "failures": 1, "label_counts": [("a", 1), ("b", 1), ("unknown", 1)], "histogram": [0] * 7 + [1, 1, 1],
           "shown_rows": SHOWN, "shown_failures": [["d.mp4", "/in/d.mp4", "empty file (0 bytes)"]]}


def finish(output: str, staging: str, lease: Lease, **changes) -> FinishPredict:
    fields = dict(output=output, staging=staging, run_id=lease.run_id, columns=COLUMNS, started_at=STARTED,
                  manifest={"job": "predict", "model": "models/m", "model_id": "m1", "inputs": ["/in/*.mp4", "/more"],
                            "labels": ["a", "b"], "options": {"per_video": True}},
                  wipe=("review",), no_thumbnail="no strip here")
    return FinishPredict(**{**fields, **changes})


def files(output: str) -> dict[str, str]:
    return {fs.relative(p, output): fs.read_bytes(p).decode() for p in fs.files_under(output)
            if not fs.relative(p, output).startswith((".lease", ".staging-test"))}


def test_a_run_publishes_its_merged_files_and_replaces_the_previous_runs(run, caplog):
    output, staging, lease = run
    with caplog.at_level(logging.INFO, logger="beam_jobs.predict"):
        manifest = finish(output, staging, lease)(COUNTS, SUMMARY, **stage(staging))
    found = files(output)
    report_page = found.pop("report.html")
    written = found.pop("manifest.json")
    assert found == {
        "labels.csv": "video_id,video_uri,label,confidence,top_k\na.mp4,/in/a.mp4,a,0.9,a:0.90\n"
                      "b.mp4,/in/b.mp4,b,0.8,b:0.80\nc.mp4,/in/c.mp4,unknown,0.3,a:0.30\n",
        "failures.csv": "video_id,uri,reason\nd.mp4,/in/d.mp4,empty file (0 bytes)\n",
        "index-00000-of-00001.jsonl": "".join(INDEX_LINES),
        "thumbnails/a.mp4.jpg": "staged a", "thumbnails/b.mp4.jpg": "carried b",  # b's carried over
        "per_video/a.mp4.csv": "new a", "per_video/b.mp4.csv": "carried b",
        "notes.txt": "the user's own",  # not the product's: kept
    }  # gone.mp4's files, the old index files and review/ (wiped) are gone; _parts and inputs.jsonl stay out
    assert json.loads(written) == manifest
    assert {k: v for k, v in manifest.items() if k not in ("finished_at", "package_versions")} == {
        "job": "predict", "model": "models/m", "model_id": "m1", "inputs": ["/in/*.mp4", "/more"], "labels": ["a", "b"],
        "options": {"per_video": True}, "videos_matched": 4, "videos_labelled": 3, "labelled_this_run": 1,
        "reused_from_previous_run": 2, "failures": 1, "frames_sampled": 8, "seconds": 100.3,
        "csv_records_spanning_lines": {"labels.csv": 0}, "run_id": lease.run_id,
        "outputs": ["labels.csv", "failures.csv", "report.html", "index-*-of-*.jsonl", "thumbnails/**",
                    "per_video/**", "review/**"]}
    assert manifest["finished_at"].endswith("+00:00") and manifest["package_versions"]["apache-beam"]
    assert not fs.exists(staging)
    facts = ("<dt>Videos</dt><dd>4 matched: 3 labelled (1 by the model in this run, 2 carried over from the "
             "previous run), 1 failed</dd><dt>Model</dt><dd>models/m (model id m1)</dd><dt>Input</dt><dd>/in/*.mp4, "
             f"/more</dd><dt>Output</dt><dd>{output}</dd><dt>Finished</dt><dd>{manifest['finished_at']}, after 100 s</dd>")
    assert facts in report_page
    for jpeg in ("staged a", "carried b"):
        assert base64.b64encode(jpeg.encode()).decode() in report_page
    assert report_page.count("no strip here") == 1  # c.mp4 has no thumbnail
    assert report_page.count(' class="unknown"') == 1  # c.mp4's row: no label was sure enough
    kb = round(len(report_page) / 1024)
    assert [r.getMessage() for r in caplog.records if r.name == "beam_jobs.predict"] == [
        "predict finished in 100.3 s: 3 of 4 videos labelled (1 by the model, 2 carried over from the previous "
        "run), 1 failed; 3 videos read at 0.03/s, 8 frames sampled at 0.1 frames/s",
        f"predict outputs in {output}: labels.csv (3 rows), failures.csv (1), report.html ({kb} KB), per_video/ "
        "(2 CSVs), thumbnails/ (1 JPEGs), manifest.json"]
    # The runner retries the step after it published: nothing changes, the same manifest comes back.
    assert finish(output, staging, lease)(COUNTS, SUMMARY, **stage(staging)) == manifest
    assert files(output) == {**found, "report.html": report_page, "manifest.json": written}
    assert not fs.exists(staging)


def test_with_segments_the_windows_and_events_are_merged_and_counted(run, caplog):
    output, staging, lease = run
    counts = dict(COUNTS, frames_sampled=0, thumbnails=0, per_video=0, segments=3, events=3, segment_videos=3,
                  tracks=1)
    step = finish(output, staging, lease, segment_columns=SEGMENT_COLUMNS, carried_thumbnails=False, wipe=(),
                  manifest={"job": "predict", "segments": {"window_s": 2.0, "stride_s": 1.5}, "labels": ["b", "a"]})
    shown = [dict(SHOWN[0], timeline=[(0.0, 2.0, "a", 0.9)]), SHOWN[1]]  # a.mp4's timeline: label a throughout
    with caplog.at_level(logging.INFO, logger="beam_jobs.predict"):
        manifest = step(counts, dict(SUMMARY, shown_rows=shown), **stage(staging, segments=True))
    found = files(output)
    assert found["segments.csv"] == (  # by video, then window (9 before 10)
        "video_id,segment,start_s,end_s,label,confidence,top_k\na.mp4,9,9.0,11.0,a,0.9,a:0.90\n"
        "a.mp4,10,10.0,12.0,a,0.9,a:0.90\nb.mp4,0,0.0,2.0,b,0.8,b:0.80\n")
    assert found["events.csv"] == (  # by video, then start time
        "video_id,label,start,end,start_s,end_s,mean_confidence,segments\na.mp4,b,0,0,1.5,2.0,0.6,1\n"
        "a.mp4,a,9,10,9.0,12.0,0.9,2\nb.mp4,b,0,0,0.0,2.0,0.8,1\n")
    assert found["tracks/a.mp4.vtt"] == "WEBVTT" and "tracks/gone.mp4.vtt" not in found
    assert "review/old.json" in found  # not wiped this time
    assert manifest["segments_written"] == 3 and manifest["events_written"] == 3
    assert manifest["csv_records_spanning_lines"] == {"labels.csv": 0, "segments.csv": 0}
    assert manifest["outputs"] == ["labels.csv", "failures.csv", "report.html", "index-*-of-*.jsonl",
                                   "thumbnails/**", "segments.csv", "events.csv", "tracks/**", "review/**"]
    page = found["report.html"]
    assert "<dt>Segments</dt><dd>3 windows of 2 s every 1.5 s over 3 videos; 3 events</dd>" in page
    # carried_thumbnails=False: the previous run's thumbnail of b.mp4 is not shown
    assert base64.b64encode(b"carried b").decode() not in page and page.count("no strip here") == 1
    assert "Videos (2 least confident of 3)" in page  # the whole run's totals, not the rows shown
    # Timeline colours go by the model's vocabulary (b, a): a is its second label, at hue 137.508 degrees
    assert '<span class="swatch" style="background:hsl(138, 60%, 55%)"></span>a' in page
    kb = round(len(page) / 1024)
    assert [r.getMessage() for r in caplog.records if r.name == "beam_jobs.predict"][-2:] == [
        "predict finished in 100.3 s: 3 of 4 videos labelled (1 by the model, 2 carried over from the previous "
        "run), 1 failed; 3 inputs read at 0.03/s",
        f"predict outputs in {output}: labels.csv (3 rows), segments.csv (3 rows), events.csv (3), tracks/ "
        f"(1 WebVTT tracks written), failures.csv (1), report.html ({kb} KB), manifest.json"]


def test_a_record_spanning_lines_is_counted_in_the_manifest(run):
    output, staging, lease = run
    arguments = stage(staging)
    write(arguments["label_shards"][1][0], '"b\nx.mp4",/in/b.mp4,b,0.8,b:0.80\n')
    manifest = finish(output, staging, lease)(COUNTS, SUMMARY, **arguments)
    assert manifest["csv_records_spanning_lines"] == {"labels.csv": 1}
    assert fs.read_text(fs.join(output, "labels.csv")).splitlines()[2:4] == ['"b', 'x.mp4",/in/b.mp4,b,0.8,b:0.80']


def test_a_run_that_lost_its_lease_publishes_nothing(run):
    output, staging, lease = run
    arguments = stage(staging)
    step = finish(output, staging, lease)
    lease.release()
    other = Lease.acquire(output, ttl_s=600, renew_every_s=3600)
    try:
        with pytest.raises(LeaseLost, match=f"run {lease.run_id} no longer holds the lease"):
            step(COUNTS, SUMMARY, **arguments)
    finally:
        other.release()
    found = files(output)
    assert "run_id" not in json.loads(found.pop("manifest.json")) and found == OLD_FILES  # the previous run's


def test_without_a_start_time_the_run_took_a_millisecond(run, caplog):
    output, staging, lease = run
    with caplog.at_level(logging.INFO, logger="beam_jobs.predict"):
        manifest = finish(output, staging, lease, started_at=0.0)(COUNTS, SUMMARY, **stage(staging))
    assert manifest["seconds"] == 0.0
    assert "3 videos read at 3000.00/s, 8 frames sampled at 8000.0 frames/s" in caplog.text


def test_failures_are_in_video_id_order_whatever_the_quoting(run):
    output, staging, lease = run
    arguments = stage(staging)
    parts = fs.join(staging, "_parts")
    arguments["failure_shards"] = [(write(fs.join(parts, "failures-0.txt"), "#1.mp4,/in/#1.mp4,bad\n"), 1),
                                   (write(fs.join(parts, "failures-1.txt"), '"a,b.mp4",/in/a.mp4,bad\n'), 1)]
    finish(output, staging, lease)(dict(COUNTS, matched=5, failed=2), dict(SUMMARY, failures=2), **arguments)
    assert fs.read_text(fs.join(output, "failures.csv")) == (
        'video_id,uri,reason\n#1.mp4,/in/#1.mp4,bad\n"a,b.mp4",/in/a.mp4,bad\n')


def test_a_summary_that_disagrees_with_the_counts_publishes_nothing(run):
    output, staging, lease = run
    with pytest.raises(RuntimeError, match="^accounting error: 4 matched, 3 labelled"):
        finish(output, staging, lease)(COUNTS, dict(SUMMARY, failures=2), **stage(staging))
    assert files(output)["labels.csv"] == "old labels"


def test_a_lease_lost_while_publishing_stops_it_before_the_next_step(run, monkeypatch):
    output, staging, lease = run
    checks = []

    def check_lease(where, run_id):
        checks.append((where, run_id))
        if len(checks) == 3:  # after the check before publishing and publish's first: taken over meanwhile
            raise LeaseLost("taken over")

    monkeypatch.setattr(publish_labels.outputs, "check_lease", check_lease)
    with pytest.raises(LeaseLost, match="taken over"):
        finish(output, staging, lease)(COUNTS, SUMMARY, **stage(staging))
    assert checks == [(output, lease.run_id)] * 3 and not fs.exists(fs.join(output, "manifest.json"))


def test_a_previous_run_from_before_manifests_named_their_files(run):
    """Its manifest names no outputs: the names any labelling run writes are taken as its own (the old single
    index.jsonl among them), and nothing else is removed (review/ was not a labelling run's output then)."""
    output, staging, lease = run
    fs.write_json(fs.join(output, "manifest.json"), {"job": "predict"})
    finish(output, staging, lease)(COUNTS, SUMMARY, **stage(staging))
    found = files(output)
    assert "index.jsonl" not in found and "per_video/gone.mp4.csv" not in found
    assert found["review/old.json"] == "old task"  # wiped as this run's folder, but not named: kept
