"""beam_jobs.incremental and beam_jobs.plan: the previous run walked beside the current listing in the launcher,
and what is left to do."""

from __future__ import annotations

import json
import logging

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.decode import Video
from beam_jobs.incremental import (
    INDEX_FILE,
    PreviousRun,
    ReadCsvRecords,
    ReadPlan,
    ReadPreviousSegments,
    SplitKnownContentDoFn,
    index_entry,
    parse_row,
    parse_todo,
    unchanged,
)
from beam_jobs.label_rows import LABELS_FILE
from beam_jobs.matching import VideoRef, ref_line
from beam_jobs.outputs import MANIFEST_FILE
from beam_jobs.plan import CARRIED_FILE, REMOVED_FILE, TODO_FILE, plan_run
from beam_jobs.sinks import csv_line
from common import fs
from common.errors import UserError

TestPipeline.__test__ = False  # a Beam class, not a test class for pytest to collect

MODEL = "model-1"
CARRIED, REMOVED = "carried", "removed"


def ref(video_id: str, size: int = 100, mtime: float = 1.5, uri: str | None = None, version: str = "1:7:15") -> VideoRef:
    return VideoRef(video_id, uri or f"/in/{video_id}", "", size, mtime, version)


def row(video_id: str, label: str = "growing") -> dict:
    return {"video_id": video_id, "video_uri": f"/in/{video_id}", "label": label}


PREVIOUS = [ref("same.avi"), ref("touched.avi"), ref("resized.avi"), ref("removed.avi"), ref("moved.avi"),
            ref("broken.avi", size=-1), ref("edited.avi"), ref("a,comma.avi")]
CURRENT = [ref("new.avi"), ref("same.avi"), ref("touched.avi", mtime=9.0), ref("resized.avi", size=101),
           ref("moved.avi", uri="/elsewhere/moved.avi"), ref("broken.avi", size=-1),
           # written in place with its size and modification time kept: only its version (ctime) tells
           ref("edited.avi", version="1:7:99"), ref("a,comma.avi"),
           ref("same.avi")]  # listed twice by overlapping inputs


def write_run(output: str, manifest: dict | None, rows: list[dict] | None = None, index: list[dict] | None = None,
              index_name: str = "index-00000-of-00001.jsonl"):
    if manifest is not None:
        fs.write_json(fs.join(output, MANIFEST_FILE), manifest)
    if rows is not None:  # in video id order, as runs write it (the index is in any order)
        header = "video_id,video_uri,label\n"
        quote = lambda v: f'"{v}"' if "," in v else v  # noqa: E731
        fs.write_text(fs.join(output, LABELS_FILE), header + "".join(
            f"{quote(r['video_id'])},{quote(r['video_uri'])},{r['label']}\n"
            for r in sorted(rows, key=lambda r: r["video_id"])))
    if index is not None:
        fs.write_text(fs.join(output, index_name), "".join(json.dumps(e) + "\n" for e in index))


def previous_output(output: str, model_id: str = MODEL) -> PreviousRun:
    write_run(output, {"job": "predict", "model_id": model_id}, [row(r.video_id) for r in PREVIOUS],
              [index_entry(r, f"fp-{r.video_id}") for r in PREVIOUS])
    return PreviousRun.read(output)


def plan(tmp_path, previous, carry=True, verify=False, listed=CURRENT, budget_bytes=64 << 20):
    """The plan's files read back: todo [(VideoRef, previous)], carried [index entry], removed [id]."""
    listing = tmp_path / "inputs.jsonl"
    listing.write_text("".join(ref_line(r) for r in listed))
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    made = plan_run(str(listing), str(tmp_path / "out"), previous, carry, verify, str(scratch), budget_bytes)
    read = lambda name: [json.loads(line) for line in open(made.path(name), encoding="utf-8")]  # noqa: E731
    found = {"todo": [parse_todo(json.dumps(item)) for item in read(TODO_FILE)], CARRIED: read(CARRIED_FILE),
             REMOVED: read(REMOVED_FILE)}
    assert (made.todo, made.carried, made.removed) == tuple(len(found[k]) for k in ("todo", CARRIED, REMOVED))
    assert made.listed == made.todo + made.carried == len({r.video_id for r in listed})
    return found


def test_unchanged_needs_the_same_uri_size_mtime_and_version():
    entry = index_entry(ref("a.avi"), "fp")
    assert unchanged(entry, ref("a.avi"))
    for changed in (ref("a.avi", size=1), ref("a.avi", mtime=2.0), ref("a.avi", uri="/b/a.avi"),
                    ref("a.avi", version="1:7:16"), ref("a.avi", size=-1)):
        assert not unchanged(entry, changed)
    assert not unchanged(None, ref("a.avi"))
    assert unchanged(index_entry(ref("e.avi", size=0), "fp"), ref("e.avi", size=0))  # only -1 (broken link) is unknown
    del entry["version"]  # an index written before versions were recorded: its videos are read once
    assert not unchanged(entry, ref("a.avi"))


def test_the_plan_carries_unchanged_videos_reads_the_rest_and_drops_removed_ones(tmp_path):
    found = plan(tmp_path, previous_output(str(tmp_path / "out")))
    assert [entry["video_id"] for entry in found[CARRIED]] == ["a,comma.avi", "same.avi"]  # in id order
    assert all(entry["fingerprint"] == f"fp-{entry['video_id']}" for entry in found[CARRIED])
    todo = {r.video_id: (r, previous) for r, previous in found["todo"]}
    assert sorted(todo) == ["broken.avi", "edited.avi", "moved.avi", "new.avi", "resized.avi", "touched.avi"]
    assert todo["new.avi"][1] is None  # never labelled
    assert todo["touched.avi"] == (CURRENT[2], ("fp-touched.avi", row("touched.avi")))  # the current listing
    assert found[REMOVED] == ["removed.avi"]


def test_the_plan_is_the_same_when_the_listing_and_the_index_are_sorted_beyond_the_memory_budget(tmp_path):
    """A budget of a few hundred bytes: the listing and the index (written in no order) are sorted in runs of
    a line or two spilled to files, merged back; the plan is the one made in memory."""
    import common.sorting

    previous = previous_output(str(tmp_path / "out"))
    in_memory = plan(tmp_path, previous)
    spilled = []
    original = common.sorting._spill
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common.sorting, "_spill",
                      lambda lines, scratch: spilled.append((len(lines), scratch)) or original(lines, scratch))
        assert plan(tmp_path, previous, budget_bytes=300) == in_memory
    assert len(spilled) >= 8 and max(n for n, _ in spilled) <= 2  # both streams sorted on disk, a line or two a run
    assert {scratch for _, scratch in spilled} == {str(tmp_path / "scratch")}  # in the job's scratch folder
    assert not list((tmp_path / "scratch").glob("run-*"))  # the runs are removed once read


def test_a_video_listed_twice_is_planned_once_by_its_first_uri(tmp_path):
    twice = [ref("b.avi", uri="/z/b.avi"), ref("a.avi"), ref("b.avi", uri="/a/b.avi"), ref("b.avi", uri="/m/b.avi")]
    found = plan(tmp_path, None, carry=False, listed=twice)
    assert [(r.video_id, r.uri) for r, _ in found["todo"]] == [("a.avi", "/in/a.avi"), ("b.avi", "/a/b.avi")]


def test_the_pipeline_reads_the_todo_file(tmp_path):
    found = plan(tmp_path, previous_output(str(tmp_path / "out")))
    with TestPipeline() as pipeline:
        todo = pipeline | ReadPlan(str(tmp_path / "scratch" / "plan" / TODO_FILE))
        assert_that(todo, equal_to(found["todo"]))


def test_a_different_model_or_overwrite_reads_everything_once(tmp_path):
    found = plan(tmp_path, previous_output(str(tmp_path / "out")), carry=False)
    assert found[CARRIED] == [] and found[REMOVED] == ["removed.avi"]
    assert sorted(r.video_id for r, _ in found["todo"]) == sorted({r.video_id for r in CURRENT})
    assert all(previous is None for _, previous in found["todo"])


def test_verify_reads_every_video_but_can_still_reuse_by_fingerprint(tmp_path):
    found = plan(tmp_path, previous_output(str(tmp_path / "out")), verify=True)
    assert found[CARRIED] == []
    todo = {r.video_id: previous for r, previous in found["todo"]}
    assert todo["same.avi"] == ("fp-same.avi", row("same.avi")) and todo["new.avi"] is None


def test_without_a_previous_run_every_listed_video_is_read_once(tmp_path):
    found = plan(tmp_path, None, carry=False)
    assert sorted(r.video_id for r, _ in found["todo"]) == sorted({r.video_id for r in CURRENT})
    assert found[CARRIED] == [] and found[REMOVED] == []


def test_index_entry():
    assert index_entry(VideoRef("a.avi", "gs://b/a.avi", "x", 7, 2.5, "1712"), "abc") == {
        "video_id": "a.avi", "uri": "gs://b/a.avi", "size": 7, "mtime": 2.5, "version": "1712", "fingerprint": "abc"}


def decoded(video_id: str, fingerprint: str, previous=None, uri: str | None = None, size: int = 100) -> Video:
    return Video(ref=ref(video_id, size=size, uri=uri), fingerprint=fingerprint, sampled=None, previous=previous)


def test_split_known_content_in_a_pipeline():
    videos = [decoded("touched.avi", "fp-touched.avi", ("fp-touched.avi", row("touched.avi")), "/moved/touched.avi", 5),
              decoded("changed.avi", "fp-new", ("fp-old", row("changed.avi"))), decoded("new.avi", "fp-new.avi")]
    with TestPipeline() as pipeline:
        split = (pipeline | beam.Create(videos)
                 | beam.ParDo(SplitKnownContentDoFn()).with_outputs(SplitKnownContentDoFn.KNOWN, main="new"))
        assert_that(split.new | "NewIds" >> beam.Map(lambda v: (v.ref.video_id, v.fingerprint)),
                    equal_to([("changed.avi", "fp-new"), ("new.avi", "fp-new.avi")]), label="New")
        assert_that(split[SplitKnownContentDoFn.KNOWN], equal_to([(
            {"video_id": "touched.avi", "video_uri": "/moved/touched.avi", "label": "growing"},
            {"video_id": "touched.avi", "uri": "/moved/touched.avi", "size": 5, "mtime": 1.5, "version": "1:7:15",
             "fingerprint": "fp-touched.avi"},
        )]), label="Known")


def test_previous_run_none_without_a_finished_run(tmp_path):
    assert PreviousRun.read(str(tmp_path / "missing")) is None
    write_run(str(tmp_path / "half"), None, [row("a.avi")], [index_entry(ref("a.avi"), "fp")])  # no manifest
    assert PreviousRun.read(str(tmp_path / "half")) is None


def test_previous_run_refuses_another_jobs_output(tmp_path):
    write_run(str(tmp_path), {"job": "featurize"})
    with pytest.raises(UserError) as caught:
        PreviousRun.read(str(tmp_path))
    assert str(caught.value) == f"{tmp_path} holds the output of a featurize job; pass --overwrite to replace it"
    write_run(str(tmp_path), {"records": 3})
    with pytest.raises(UserError, match="holds the output of a different job"):
        PreviousRun.read(str(tmp_path))


@pytest.mark.parametrize("kept", ["labels", "index"])
def test_an_incomplete_previous_run_is_none_with_a_warning(kept, tmp_path, caplog, monkeypatch):
    # A library's logging.config call can disable loggers that exist by then; this one must be heard.
    monkeypatch.setattr(logging.getLogger("beam_jobs.incremental"), "disabled", False)
    write_run(str(tmp_path), {"job": "predict", "model_id": MODEL}, [row("a.avi")] if kept == "labels" else None,
              [index_entry(ref("a.avi"), "fp")] if kept == "index" else None)
    with caplog.at_level(logging.WARNING, logger="beam_jobs.incremental"):
        assert PreviousRun.read(str(tmp_path)) is None
    missing = "index.jsonl" if kept == "labels" else "labels.csv"
    assert caplog.messages == [
        f"the previous run in {tmp_path} is incomplete (no {missing}): labelling every video again"]


@pytest.mark.parametrize("where", ["local", "mem"])
def test_previous_run_reads_the_manifest_header_and_index_files(where, tmp_path, bucket):
    output = str(tmp_path / "out") if where == "local" else f"{bucket}/out"
    write_run(output, {"job": "predict", "model_id": MODEL, "options": {"per_video": True}}, [row("a.avi")],
              [index_entry(ref("a.avi"), "fp-a")])
    previous = PreviousRun.read(output)
    assert previous == PreviousRun(MODEL, ("video_id", "video_uri", "label"),
                                   (fs.join(output, "index-00000-of-00001.jsonl"),), per_video=True)
    assert previous.review is False  # (not compared by ==)
    write_run(output, {"job": "predict", "model_id": MODEL, "options": {"review": True}})
    assert PreviousRun.read(output).review is True and PreviousRun.read(output).per_video is False


def test_previous_run_knows_its_decisions_and_its_csv_files_with_records_spanning_lines(tmp_path):
    write_run(str(tmp_path), {"job": "predict", "model_id": MODEL, "options": {"min_confidence": 0.5, "top_k": 9},
                              "csv_records_spanning_lines": {"labels.csv": 2, "segments.csv": 0}},
              [row("a.avi")], [index_entry(ref("a.avi"), "fp")])
    previous = PreviousRun.read(str(tmp_path))
    assert previous.multiline == ("labels.csv",)
    assert previous.decisions == {"min_confidence": 0.5, "top_k": 0}  # at most one pair per class (none here)


@pytest.mark.parametrize("multiline", [False, True])
def test_previous_rows_are_read_whole(multiline, tmp_path):
    ids = ["plain.avi", "tab\there.avi", "cr\rhere.avi"] + (["new\nline.avi", "cr\r\nlf.avi"] if multiline else [])
    text = csv_line(["video_id", "video_uri", "label"]) + "".join(csv_line([i, f"/in/{i}", "x"]) for i in ids)
    (tmp_path / "labels.csv").write_text(text, newline="")
    with TestPipeline() as pipeline:
        rows = (pipeline | ReadCsvRecords(str(tmp_path / "labels.csv"), multiline)
                | beam.Map(parse_row, ("video_id", "video_uri", "label")))
        assert_that(rows, equal_to([(i, {"video_id": i, "video_uri": f"/in/{i}", "label": "x"}) for i in ids]))


@pytest.mark.parametrize("multiline", [(), ("segments.csv",)])
def test_the_previous_segments_are_read_keyed_by_video_id(multiline, tmp_path):
    ids = ["a.avi", "b.avi"] + (["new\nline.avi"] if multiline else [])
    columns = ("video_id", "segment", "label")
    records = "".join(csv_line([i, n, "x"]) for i in ids for n in "01")
    (tmp_path / "segments.csv").write_text(csv_line(columns) + records, newline="")
    previous = PreviousRun(MODEL, (), (), False, segments={"window_s": 2.0}, segment_columns=columns,
                           multiline=multiline)
    with TestPipeline() as pipeline:
        rows = pipeline | ReadPreviousSegments(str(tmp_path / "segments.csv"), previous)
        assert_that(rows, equal_to([(i, {"video_id": i, "segment": n, "label": "x"}) for i in ids for n in "01"]))


def test_a_single_index_file_of_an_older_run_is_read_too(tmp_path):
    write_run(str(tmp_path), {"job": "predict", "model_id": MODEL}, [row("a.avi")], [index_entry(ref("a.avi"), "fp")],
              index_name=INDEX_FILE)
    assert PreviousRun.read(str(tmp_path)).index_files == (str(tmp_path / INDEX_FILE),)


def test_previous_run_with_windows_knows_them_and_its_segments_header(tmp_path, caplog, monkeypatch):
    write_run(str(tmp_path), {"job": "predict", "segments": {"window_s": 2.0, "stride_s": 1.0},
                              "options": {"min_confidence": 0.4, "top_k": 2}},
              [row("a.avi")], [index_entry(ref("a.avi"), "fp")])
    (tmp_path / LABELS_FILE).write_text("video_id,video_uri,label,p_a,p_b,p_c\n")
    monkeypatch.setattr(logging.getLogger("beam_jobs.incremental"), "disabled", False)
    with caplog.at_level(logging.WARNING, logger="beam_jobs.incremental"):
        assert PreviousRun.read(str(tmp_path)) is None  # windows, but no segments.csv
    assert "is incomplete (no segments.csv): labelling every video again" in caplog.text
    (tmp_path / "segments.csv").write_text("video_id,segment,start_s,label\na.avi,0,0.0,x\n")
    previous = PreviousRun.read(str(tmp_path))
    assert previous == PreviousRun("", ("video_id", "video_uri", "label", "p_a", "p_b", "p_c"),
                                   (str(tmp_path / "index-00000-of-00001.jsonl"),), per_video=False,
                                   segments={"window_s": 2.0, "stride_s": 1.0},
                                   segment_columns=("video_id", "segment", "start_s", "label"),
                                   decisions={"min_confidence": 0.4, "top_k": 2})


@pytest.mark.parametrize("options, decisions", [
    ({"min_confidence": 0.4, "top_k": 5}, {"min_confidence": 0.4, "top_k": 3}),  # at most one pair per class
    ({"min_confidence": 0.4}, None),  # a run from before --top-k was recorded: unknown
    ({"top_k": 1}, None),
])
def test_previous_decisions_are_known_only_when_both_were_recorded(options, decisions, tmp_path):
    write_run(str(tmp_path), {"job": "predict", "options": options}, [], [index_entry(ref("a.avi"), "fp")])
    (tmp_path / LABELS_FILE).write_text("video_id,p_a,p_b,label,p_c\n")
    assert PreviousRun.read(str(tmp_path)).decisions == decisions


def test_previous_run_missing_both_labels_and_index_says_so(tmp_path, caplog, monkeypatch):
    write_run(str(tmp_path), {"job": "predict"})
    monkeypatch.setattr(logging.getLogger("beam_jobs.incremental"), "disabled", False)
    with caplog.at_level(logging.WARNING, logger="beam_jobs.incremental"):
        assert PreviousRun.read(str(tmp_path)) is None
    assert f"the previous run in {tmp_path} is incomplete (no labels.csv and no index.jsonl)" in caplog.text


def test_sharded_index_files_win_over_an_older_single_one_and_an_empty_labels_file_has_no_columns(tmp_path):
    write_run(str(tmp_path), {"job": "predict"}, None, [index_entry(ref("a.avi"), "fp")], index_name=INDEX_FILE)
    write_run(str(tmp_path), None, None, [index_entry(ref("a.avi"), "fp")], index_name="index-00001-of-00002.jsonl")
    write_run(str(tmp_path), None, None, [index_entry(ref("b.avi"), "fp")], index_name="index-00000-of-00002.jsonl")
    (tmp_path / LABELS_FILE).write_text("")
    previous = PreviousRun.read(str(tmp_path))
    assert previous.index_files == (str(tmp_path / "index-00000-of-00002.jsonl"),
                                    str(tmp_path / "index-00001-of-00002.jsonl"))
    assert previous.columns == ()
