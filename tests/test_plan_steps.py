"""beam_jobs.plan's steps on their own, over previous runs written by hand (test_incremental.py walks the plan
itself; test_plan.py runs re-runs end to end): reading ids from listing and CSV lines, the previous segments of
the videos sent again, an index on an object store or in several files, staging the plan, whether the
previous rows may be carried over or must be decided again, when there is nothing to do, and the check noted
in the manifest."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from beam_jobs import plan as planning
from beam_jobs.incremental import PreviousRun, index_entry
from beam_jobs.matching import ref_line
from beam_jobs.plan import Plan, csv_id_of, nothing_to_do, plan_run, record_check, reuse, stage, video_id_of
from beam_jobs.segments import SegmentOptions
from common import fs
from test_incremental import CURRENT, MODEL, PREVIOUS, plan, previous_output, ref, row, write_run


def test_the_video_id_of_a_json_line_with_or_without_the_id_first():
    assert video_id_of('{"video_id": "a \\"b\\".avi", "uri": "/in/x"}\n') == 'a "b".avi'
    assert video_id_of('{"video_id": "\\u00e9t\\u00e9.avi"}\n') == "été.avi"
    assert video_id_of('{"uri": "/in/x", "video_id": "later.avi"}\n') == "later.avi"
    assert video_id_of('{"video_id":"tight.avi"}\n') == "tight.avi"


def test_the_video_id_of_a_csv_record_quoted_or_not():
    assert csv_id_of("a.avi,/in/a.avi,x\n") == "a.avi"
    assert csv_id_of('"a,b.avi","/in/a,b.avi",x\n') == "a,b.avi"
    assert csv_id_of('"line\nbreak.avi",x\r\n') == "line\nbreak.avi"
    assert csv_id_of("alone.avi\r\n") == "alone.avi" and csv_id_of("alone.avi\n") == "alone.avi"
    assert csv_id_of("BOX\n") == "BOX" and csv_id_of("space .avi \n") == "space .avi "  # only the line end goes


def test_a_plan_has_changed_when_it_reads_or_removes_anything():
    assert not Plan("/p", 3, 0, 3, 0).changed
    assert Plan("/p", 3, 1, 2, 0).changed and Plan("/p", 3, 0, 3, 1).changed
    assert Plan("/p", 3, 0, 3, 0).path("todo.jsonl") == "/p/todo.jsonl"


def with_segments(output: str, segments: dict | None = None) -> PreviousRun:
    """The previous run of test_incremental's PREVIOUS, with windows: two segments a video, one for
    "a,comma.avi"."""
    write_run(output, {"job": "predict", "model_id": MODEL, "segments": segments or {"window_s": 2.0, "stride_s": 1.0}},
              [row(r.video_id) for r in PREVIOUS], [index_entry(r, f"fp-{r.video_id}") for r in PREVIOUS])
    records = []
    for video_id in sorted(r.video_id for r in PREVIOUS):
        quoted = f'"{video_id}"' if "," in video_id else video_id
        records += [f"{quoted},{n},x\n" for n in range(1 if "," in video_id else 2)]
    fs.write_text(fs.join(output, "segments.csv"), "video_id,segment,label\n" + "".join(records))
    return PreviousRun.read(output)


def previous_segments(tmp_path) -> str:
    return (tmp_path / "scratch" / "plan" / planning.PREVIOUS_SEGMENTS_FILE).read_text()


def test_the_previous_segments_of_the_videos_sent_with_a_previous_row_are_extracted(tmp_path):
    previous = with_segments(str(tmp_path / "out"))
    listed = [*CURRENT, ref("removed.avi", size=5), ref("zz.avi")]  # removed.avi changed; zz.avi is new (last)
    found = plan(tmp_path, previous, listed=listed)
    sent = sorted(r.video_id for r, before in found["todo"] if before)
    assert sent == ["broken.avi", "edited.avi", "moved.avi", "removed.avi", "resized.avi", "touched.avi"]
    assert previous_segments(tmp_path) == "video_id,segment,label\n" + "".join(
        f"{video_id},{n},x\n" for video_id in sent for n in range(2))  # not same.avi's, a,comma.avi's, zz.avi's


def test_no_previous_segments_without_a_row_to_carry(tmp_path):
    previous = with_segments(str(tmp_path / "out"))
    plan(tmp_path, previous, carry=False)
    assert not (tmp_path / "scratch" / "plan" / planning.PREVIOUS_SEGMENTS_FILE).exists()
    only_new = [ref("a,comma.avi"), ref("new.avi")]  # carried, and new: nothing sent with a previous row
    plan(tmp_path, previous, listed=only_new)
    assert not (tmp_path / "scratch" / "plan" / planning.PREVIOUS_SEGMENTS_FILE).exists()
    first = [ref("a,comma.avi", size=1)]  # the first of the previous segments, and the only one sent
    plan(tmp_path, previous, listed=first)
    assert previous_segments(tmp_path) == 'video_id,segment,label\n"a,comma.avi",0,x\n'


def test_an_index_on_an_object_store_or_in_several_files_plans_as_a_local_one(tmp_path, bucket):
    expected = plan(tmp_path / "local", previous_output(str(tmp_path / "local" / "out")))
    (tmp_path / "inputs.jsonl").write_text("".join(ref_line(r) for r in CURRENT))
    (tmp_path / "scratch").mkdir()
    made = plan_run(str(tmp_path / "inputs.jsonl"), f"{bucket}/out", previous_output(f"{bucket}/out"), True, False,
                    str(tmp_path / "scratch"))
    for name in (planning.TODO_FILE, planning.CARRIED_FILE, planning.REMOVED_FILE):
        assert (Path(made.path(name)).read_text() ==
                (tmp_path / "local" / "scratch" / "plan" / name).read_text())
    assert (tmp_path / "scratch" / "previous-index.jsonl").exists()  # copied here, then sorted
    output = tmp_path / "shards" / "out"
    previous_output(str(output))
    entries = [index_entry(r, f"fp-{r.video_id}") for r in PREVIOUS]
    (output / "index-00000-of-00001.jsonl").unlink()
    for number, part in enumerate((entries[4:], entries[:4])):  # neither in order, the later ids first
        write_run(str(output), None, None, part, index_name=f"index-{number:05d}-of-00002.jsonl")
    assert plan(tmp_path / "shards", PreviousRun.read(str(output))) == expected


def test_staging_copies_the_plan_files_there_are(tmp_path):
    folder = tmp_path / "plan"
    folder.mkdir()
    for name in (planning.TODO_FILE, planning.CARRIED_FILE, planning.REMOVED_FILE):
        (folder / name).write_text(f"{name}\n")
    stage(Plan(str(folder), 1, 1, 0, 0), str(tmp_path / "staged"))
    assert sorted(p.name for p in (tmp_path / "staged").iterdir()) == sorted(
        (planning.TODO_FILE, planning.CARRIED_FILE, planning.REMOVED_FILE))  # no previous segments: none staged
    assert (tmp_path / "staged" / planning.CARRIED_FILE).read_text() == f"{planning.CARRIED_FILE}\n"


def args(**changes):
    values = dict(min_confidence=0.4, top_k=5, verify=False, overwrite=False, per_video=False, review=False)
    return types.SimpleNamespace(**{**values, **changes})


COLUMNS = ("video_id", "label", "p_a", "p_b", "p_c", "top_k")


def previous_run(**changes) -> PreviousRun:
    values = dict(model_id=MODEL, columns=COLUMNS, index_files=(), per_video=False, segments=None,
                  decisions={"min_confidence": 0.4, "top_k": 3})
    return PreviousRun(**{**values, **changes})


WINDOWS = SegmentOptions(2.0, 1.0)


@pytest.mark.parametrize("previous, model_id, windows, options, expected", [
    (None, MODEL, None, args(), (False, False)),
    (previous_run(), MODEL, None, args(), (True, False)),  # --top-k 5 of three labels is 3
    (previous_run(), MODEL, None, args(top_k=3), (True, False)),
    (previous_run(), MODEL, None, args(top_k=2), (True, True)),
    (previous_run(), MODEL, None, args(min_confidence=0.5), (True, True)),
    (previous_run(decisions=None), MODEL, None, args(), (True, True)),  # unknown: decided again
    (previous_run(), "model-2", None, args(), (False, False)),
    (previous_run(segments=WINDOWS.manifest()), MODEL, WINDOWS, args(), (True, False)),
    (previous_run(segments=WINDOWS.manifest()), MODEL, SegmentOptions(2.0, 0.5), args(), (False, False)),
    (previous_run(), MODEL, WINDOWS, args(), (False, False)),  # windows now, none then
    (previous_run(segments=WINDOWS.manifest()), MODEL, None, args(), (True, False)),  # none now: rows carry over
])
def test_rows_carry_over_with_the_same_model_and_windows_and_are_decided_again_when_decided_otherwise(
        previous, model_id, windows, options, expected):
    assert reuse(previous, model_id, windows, options) == expected


@pytest.mark.parametrize("change", [
    {}, {"previous": None}, {"carry": False}, {"redo": True}, {"todo": 1}, {"removed": 1}, {"verify": True},
    {"overwrite": True}, {"per_video": True}, {"previous_review": True}, {"review": True},
])
def test_nothing_to_do_only_when_a_run_would_publish_the_outputs_there(change):
    previous = previous_run(review=change.get("previous_review", False))
    plan_ = Plan("/p", 3, change.get("todo", 0), 3, change.get("removed", 0))
    options = args(**{k: v for k, v in change.items() if k in ("verify", "overwrite", "per_video", "review")})
    found = nothing_to_do(plan_, change.get("previous", previous), change.get("carry", True), change.get("redo", False),
                          options)
    assert found is (change == {})


def test_nothing_to_do_with_per_video_files_then_and_now_or_without_a_review_flag():
    assert nothing_to_do(Plan("/p", 3, 0, 3, 0), previous_run(per_video=True), True, False, args(per_video=True))
    options = types.SimpleNamespace(**{k: v for k, v in vars(args()).items() if k != "review"})
    assert nothing_to_do(Plan("/p", 3, 0, 3, 0), previous_run(), True, False, options)


@pytest.mark.parametrize("labelled", [5, None])
def test_the_check_is_noted_in_the_manifest_after_the_fence(tmp_path, monkeypatch, labelled):
    monkeypatch.setattr(planning.publish, "now_utc", lambda: "2026-12-05T12:00:00+00:00")
    manifest = {"job": "predict", "run_id": "old", "labelled_this_run": 2, "reused_from_previous_run": 3,
                "frames_sampled": 8, **({"videos_labelled": labelled} if labelled else {})}
    fs.write_json(str(tmp_path / "manifest.json"), manifest)
    calls = []
    found = record_check(str(tmp_path), Plan("/p", 6, 0, 4, 0), "new-run", 12.345, lambda: calls.append(
        json.loads((tmp_path / "manifest.json").read_text())))
    expected = dict(manifest, labelled_this_run=0, reused_from_previous_run=labelled or 4, frames_sampled=0,
                    last_check={"checked_at": "2026-12-05T12:00:00+00:00", "videos_checked": 6, "new": 0, "changed": 0,
                                "removed": 0, "seconds": 12.3, "run_id": "new-run"})
    assert found == expected and json.loads((tmp_path / "manifest.json").read_text()) == expected
    assert calls == [manifest]  # the fence ran once, before the manifest was replaced

    def lost():
        raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError, match="lease lost"):
        record_check(str(tmp_path), Plan("/p", 7, 0, 4, 0), "third-run", 1.0, lost)
    assert json.loads((tmp_path / "manifest.json").read_text()) == expected
