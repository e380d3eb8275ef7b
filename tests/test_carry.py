"""beam_jobs.carry on its own, over a previous run's files written by hand (no model, no pipeline): the carried
rows, segments and events written as they were or decided again, the per-video files and tracks, the report's
summary of the carried rows, a retry reading nothing again. test_plan.py runs the same code end to end."""

from __future__ import annotations

import json

import pytest

from beam_jobs import carry, report
from beam_jobs.carry import CarryOver, fold_summary, records_of, timelines
from beam_jobs.label_rows import RowFormat, label_columns
from beam_jobs.segments import segment_columns

LABELS = ("a", "b")
COLUMNS = tuple(label_columns(LABELS))  # video_id,video_uri,label,confidence,top_k,p_a,p_b,model_id
SEGMENT_COLUMNS = tuple(segment_columns(LABELS))  # video_id,segment,start_s,end_s,label,confidence,top_k,p_a,...
KEPT = RowFormat(LABELS, "m1", top_k=2, min_confidence=0.0)  # the previous run's decisions
STRICTER = RowFormat(LABELS, "m1", top_k=1, min_confidence=0.8)

# labels.csv of the previous run, in id order; "b,c.avi" is quoted; "x.avi" is not carried over.
LABELS_CSV = ("video_id,video_uri,label,confidence,top_k,p_a,p_b,model_id\n"
              "a.avi,/in/a.avi,a,0.900000,a:0.900000;b:0.100000,0.900000,0.100000,m1\n"
              '"b,c.avi","/in/b,c.avi",b,0.600000,b:0.600000;a:0.400000,0.400000,0.600000,m1\n'
              "x.avi,/in/x.avi,a,0.550000,a:0.550000;b:0.450000,0.550000,0.450000,m1\n")
# segments.csv: two windows of a.avi (written in window order), one of "b,c.avi", one of x.avi.
SEGMENTS_CSV = ("video_id,segment,start_s,end_s,label,confidence,top_k,p_a,p_b,model_id\n"
                "a.avi,0,0.000,2.000,a,0.900000,a:0.900000;b:0.100000,0.900000,0.100000,m1\n"
                "a.avi,1,1.000,3.000,b,0.700000,b:0.700000;a:0.300000,0.300000,0.700000,m1\n"
                '"b,c.avi",0,0.000,2.000,b,0.600000,b:0.600000;a:0.400000,0.400000,0.600000,m1\n'
                "x.avi,0,0.000,2.000,a,0.550000,a:0.550000;b:0.450000,0.550000,0.450000,m1\n")
# events.csv: ids are spreadsheet-safe cells ('=... would be a formula).
EVENTS_CSV = ("video_id,label,start,end,start_s,end_s,mean_confidence,segments\n"
              "a.avi,a,00:00:00.000,00:00:01.500,0.000,1.500,0.900000,1\n"
              "a.avi,b,00:00:01.500,00:00:03.000,1.500,3.000,0.700000,1\n"
              '"b,c.avi",b,00:00:00.000,00:00:02.000,0.000,2.000,0.600000,1\n'
              "x.avi,a,00:00:00.000,00:00:02.000,0.000,2.000,0.550000,1\n")
CARRIED_IDS = ["a.avi", "b,c.avi"]


@pytest.fixture
def previous(tmp_path):
    """The previous run's output and the plan's carried index (a.avi and "b,c.avi"); returns the folders."""
    output, plan_dir = tmp_path / "out", tmp_path / "plan"
    output.mkdir()
    plan_dir.mkdir()
    for name, text in (("labels.csv", LABELS_CSV), ("segments.csv", SEGMENTS_CSV), ("events.csv", EVENTS_CSV)):
        (output / name).write_text(text, newline="")
    (plan_dir / "carried-index.jsonl").write_text("".join(
        json.dumps({"video_id": i, "uri": f"/in/{i}", "fingerprint": f"fp-{i}"}) + "\n" for i in CARRIED_IDS))
    return output, plan_dir


def carry_over(previous, **changes) -> CarryOver:
    output, plan_dir = previous
    settings = dict(output=str(output), plan_dir=str(plan_dir), count=2, columns=COLUMNS, previous_columns=COLUMNS,
                    multiline=(), fmt=KEPT)
    return CarryOver(**{**settings, **changes})


def lines(text: str) -> list[str]:
    return text.splitlines(True)


def test_records_of_takes_the_records_of_the_wanted_ids_several_a_video():
    records = ["a,1\n", "b,1\n", "b,2\n", "c,1\n", "d,1\n", "e,1\n"]
    assert list(records_of(records, iter(["b", "bb", "d"]))) == [("b", "b,1\n"), ("b", "b,2\n"), ("d", "d,1\n")]
    assert list(records_of(records, iter([]))) == []
    assert list(records_of(records, iter(["z"]))) == []
    taken = []
    list(records_of((taken.append(r) or r for r in records), iter(["a"])))
    assert taken == records[:2]  # it stops reading once the ids are used up
    assert list(records_of(["'=x,1\n", "y,1\n"], iter(["=x"]), carry.event_id_of)) == [("=x", "'=x,1\n")]


def test_carried_rows_are_written_as_they_were_with_their_summary(previous, tmp_path):
    output, plan_dir = previous
    result = carry_over(previous).write(str(tmp_path / "parts"), str(tmp_path / "staging"))
    labels = tmp_path / "parts" / "carried" / "labels.txt"
    assert labels.read_text() == "".join(lines(LABELS_CSV)[1:3])
    rows = [dict(zip(COLUMNS, values)) for values in (
        ["a.avi", "/in/a.avi", "a", "0.900000", "a:0.900000;b:0.100000", "0.900000", "0.100000", "m1"],
        ["b,c.avi", "/in/b,c.avi", "b", "0.600000", "b:0.600000;a:0.400000", "0.400000", "0.600000", "m1"])]
    assert result == {"index": str(plan_dir / "carried-index.jsonl"), "labels": str(labels), "per_video": 0,
                      "tracks": 0, "rows": 2,
                      "summary": {"videos": 2, "label_counts": [("a", 1), ("b", 1)],
                                  "histogram": [0, 0, 0, 0, 0, 0, 1, 0, 0, 1],
                                  "shown_rows": [rows[1], rows[0]]}}  # least confident first
    assert not (tmp_path / "staging").exists()  # no per-video files, no tracks
    assert not (tmp_path / "parts" / "carried" / "segments.txt").exists()  # no windows


def test_a_retry_finds_the_carried_shards_and_reads_nothing_of_the_previous_run_again(previous, tmp_path):
    output, _ = previous
    first = carry_over(previous).write(str(tmp_path / "parts"), str(tmp_path / "staging"))
    (output / "labels.csv").unlink()  # gone by then (another run published)
    again = carry_over(previous).write(str(tmp_path / "parts"), str(tmp_path / "staging"))
    assert again == json.loads(json.dumps(first)) and again["rows"] == 2  # as JSON keeps it (pairs as lists)


@pytest.mark.parametrize("count", [1, 3])
def test_a_carried_count_that_disagrees_with_the_rows_found_is_an_accounting_error(previous, tmp_path, count):
    with pytest.raises(RuntimeError) as caught:
        carry_over(previous, count=count).write(str(tmp_path / "parts"), str(tmp_path / "staging"))
    assert str(caught.value) == (f"accounting error: {count} videos carried over, 2 of them found in the previous "
                                 "labels.csv")
    assert not (tmp_path / "parts" / "carried" / "carried.json").exists()  # a retry writes them again


def test_rows_decided_otherwise_are_decided_again_in_this_runs_columns(previous, tmp_path):
    columns = (*COLUMNS[:5], "p_b", "p_a", "model_id")  # this run's column order (only to see it used)
    result = carry_over(previous, redo=True, fmt=STRICTER, columns=columns).write(str(tmp_path / "parts"),
                                                                                 str(tmp_path / "staging"))
    assert (tmp_path / "parts" / "carried" / "labels.txt").read_text() == (
        "a.avi,/in/a.avi,a,0.900000,a:0.900000,0.100000,0.900000,m1\n"
        '"b,c.avi","/in/b,c.avi",unknown,0.600000,b:0.600000,0.600000,0.400000,m1\n')
    assert result["summary"]["label_counts"] == [("a", 1), ("unknown", 1)]
    assert [r["label"] for r in result["summary"]["shown_rows"]] == ["unknown", "a"]


def test_carried_rows_get_per_video_files_when_this_run_writes_them(previous, tmp_path):
    staging = tmp_path / "staging"
    result = carry_over(previous, per_video=True).write(str(tmp_path / "parts"), str(staging))
    assert result["per_video"] == 2
    assert (staging / "per_video" / "a.avi.csv").read_text() == "class,probability\na,0.900000\nb,0.100000\n"
    assert (staging / "per_video" / "b,c.avi.csv").read_text() == "class,probability\nb,0.600000\na,0.400000\n"


def test_carried_segments_and_events_are_copied_as_they_were(previous, tmp_path):
    result = carry_over(previous, window_s=2.0, segment_columns=SEGMENT_COLUMNS).write(
        str(tmp_path / "parts"), str(tmp_path / "staging"))
    folder = tmp_path / "parts" / "carried"
    assert (folder / "segments.txt").read_text() == "".join(lines(SEGMENTS_CSV)[1:4])
    assert (folder / "events.txt").read_text() == "".join(lines(EVENTS_CSV)[1:4])
    keys = ("segments", "events", "segment_count", "event_count", "segment_videos", "tracks")
    assert {k: result[k] for k in keys} == {
        "segments": str(folder / "segments.txt"), "events": str(folder / "events.txt"), "segment_count": 3,
        "event_count": 3, "segment_videos": 2, "tracks": 0}
    assert result["rows"] == 2 and not (tmp_path / "staging").exists()
    assert json.loads((folder / "carried.json").read_text()) == json.loads(json.dumps(result))


def test_carried_segments_decided_again_make_their_events_and_tracks_again(previous, tmp_path):
    output, _ = previous
    # a.avi's windows written out of window order: they are put in order (by number: 10 after 9) first
    segments = lines(SEGMENTS_CSV)
    moved = segments[2].replace("a.avi,1,1.000,3.000", "a.avi,10,1.000,3.000")
    (output / "segments.csv").write_text("".join([segments[0], moved, segments[1].replace("a.avi,0,", "a.avi,9,"),
                                                  *segments[3:]]), newline="")
    staging = tmp_path / "staging"
    result = carry_over(previous, redo=True, fmt=STRICTER, window_s=2.0, segment_columns=SEGMENT_COLUMNS).write(
        str(tmp_path / "parts"), str(staging))
    folder = tmp_path / "parts" / "carried"
    assert (folder / "segments.txt").read_text() == (
        "a.avi,9,0.000,2.000,a,0.900000,a:0.900000,0.900000,0.100000,m1\n"
        "a.avi,10,1.000,3.000,unknown,0.700000,b:0.700000,0.300000,0.700000,m1\n"
        '"b,c.avi",0,0.000,2.000,unknown,0.600000,b:0.600000,0.400000,0.600000,m1\n')
    # a.avi: window 9 (a) spans 0 to 1.5 s, halfway to window 10's centre; window 10 is unknown: no event.
    assert (folder / "events.txt").read_text() == "a.avi,a,00:00:00.000,00:00:01.500,0.000,1.500,0.900000,1\n"
    assert (staging / "tracks" / "a.avi.vtt").read_text() == "WEBVTT\n\n1\n00:00:00.000 --> 00:00:01.500\na (90%)\n"
    assert (staging / "tracks" / "b,c.avi.vtt").read_text() == "WEBVTT\n"
    assert {k: result[k] for k in ("segment_count", "event_count", "segment_videos", "tracks")} == {
        "segment_count": 3, "event_count": 1, "segment_videos": 2, "tracks": 2}


def test_the_summary_keeps_the_least_confident_rows_as_they_come(monkeypatch):
    monkeypatch.setattr(report, "SHOWN_VIDEOS", 2)
    summary = carry._Summary()
    confidences = [0.5, 0.9, 0.3, 0.8, 0.7, 0.3, 0.95, 0.6, 0.2, 0.99]
    held = []
    for n, confidence in enumerate(confidences):
        summary.add({"video_id": f"v{9 - n}", "label": "a" if n % 3 else "b", "confidence": f"{confidence:.6f}"})
        held.append(len(summary.shown))
    assert held == [1, 2, 3, 4, 5, 6, 7, 2, 3, 4]  # trimmed as it reaches four times what is shown, not before
    result = summary.result()
    assert result["videos"] == 10 and result["label_counts"] == [("a", 6), ("b", 4)]
    assert result["histogram"] == [0, 0, 1, 2, 0, 1, 1, 1, 1, 3]
    assert [(r["video_id"], r["confidence"]) for r in result["shown_rows"]] == [("v1", "0.200000"),
                                                                                ("v4", "0.300000")]  # ties by id


def test_fold_summary_adds_the_carried_rows_to_the_pipelines():
    row = lambda i, c: {"video_id": i, "confidence": c}  # noqa: E731
    made = {"videos": 3, "label_counts": [("a", 2), ("c", 1)], "histogram": [1, 0, 2], "failures": 4,
            "shown_rows": [row("m1", "0.5"), row("m2", "0.9")]}
    carried = {"videos": 2, "label_counts": [["a", 1], ["b", 1]], "histogram": [0, 1, 1],
               "shown_rows": [row("c1", "0.1"), row("c2", "0.7")]}
    assert fold_summary(made, carried) == {
        "videos": 5, "label_counts": [("a", 3), ("b", 1), ("c", 1)], "histogram": (1, 1, 3), "failures": 4,
        "shown_rows": [row("c1", "0.1"), row("m1", "0.5"), row("c2", "0.7"), row("m2", "0.9")]}
    nothing = {"videos": 0, "label_counts": [], "histogram": None, "shown_rows": []}  # the pipeline made no row
    histogram = [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert fold_summary(nothing, dict(carried, histogram=histogram))["histogram"] == tuple(histogram)


def test_timelines_of_the_carried_rows_shown_come_from_the_carried_segments(tmp_path):
    shard = tmp_path / "segments.txt"
    segments = lines(SEGMENTS_CSV)  # a.avi's windows out of order, numbered 9 and 10: put in order by number
    shard.write_text("".join([segments[2].replace("a.avi,1,", "a.avi,10,"), segments[1].replace("a.avi,0,", "a.avi,9,"),
                              *segments[3:]]), newline="")
    made = {"video_id": "m.avi", report.TIMELINE: [(0.0, 1.0, "b", 0.5)]}
    rows = [{"video_id": "x.avi"}, made, {"video_id": "a.avi"}, {"video_id": "none.avi"}]
    assert timelines(str(shard), rows, SEGMENT_COLUMNS, 2.0) == [
        {"video_id": "x.avi", report.TIMELINE: [(0.0, 2.0, "a", 0.55)]}, made,
        {"video_id": "a.avi", report.TIMELINE: [(0.0, 1.5, "a", 0.9), (1.5, 3.0, "b", 0.7)]},
        {"video_id": "none.avi", report.TIMELINE: []}]
    assert timelines(str(tmp_path / "missing.txt"), [made], SEGMENT_COLUMNS, 2.0) == [made]  # nothing to read


def test_an_id_that_events_csv_writes_spreadsheet_safe_has_its_events_carried(tmp_path):
    output, plan_dir = tmp_path / "out", tmp_path / "plan"
    output.mkdir()
    plan_dir.mkdir()
    row = "=a.avi,/in/=a.avi,a,0.900000,a:0.900000;b:0.100000,0.900000,0.100000,m1\n"
    segment = "=a.avi,0,0.000,2.000,a,0.900000,a:0.900000;b:0.100000,0.900000,0.100000,m1\n"
    event = "'=a.avi,a,00:00:00.000,00:00:02.000,0.000,2.000,0.900000,1\n"  # a formula otherwise
    (output / "labels.csv").write_text(lines(LABELS_CSV)[0] + row)
    (output / "segments.csv").write_text(lines(SEGMENTS_CSV)[0] + segment)
    (output / "events.csv").write_text(lines(EVENTS_CSV)[0] + event)
    (plan_dir / "carried-index.jsonl").write_text(json.dumps({"video_id": "=a.avi"}) + "\n")
    result = carry_over((output, plan_dir), count=1, window_s=2.0, segment_columns=SEGMENT_COLUMNS).write(
        str(tmp_path / "parts"), str(tmp_path / "staging"))
    assert (tmp_path / "parts" / "carried" / "events.txt").read_text() == event
    assert (result["rows"], result["segment_count"], result["event_count"]) == (1, 1, 1)


def test_a_column_the_previous_files_lack_is_left_empty_when_rows_are_decided_again(previous, tmp_path):
    output, _ = previous
    for name in ("labels.csv", "segments.csv"):  # files of a run that wrote no model_id column
        text = (output / name).read_text()
        (output / name).write_text(text.replace(",model_id\n", "\n").replace(",m1\n", "\n"))
    result = carry_over(previous, redo=True, fmt=STRICTER, previous_columns=COLUMNS[:-1], window_s=2.0,
                        segment_columns=SEGMENT_COLUMNS[:-1]).write(str(tmp_path / "parts"), str(tmp_path / "staging"))
    folder = tmp_path / "parts" / "carried"
    assert (folder / "labels.txt").read_text() == (
        "a.avi,/in/a.avi,a,0.900000,a:0.900000,0.900000,0.100000,\n"
        '"b,c.avi","/in/b,c.avi",unknown,0.600000,b:0.600000,0.400000,0.600000,\n')
    assert (folder / "segments.txt").read_text().splitlines()[0] == (
        "a.avi,0,0.000,2.000,a,0.900000,a:0.900000,0.900000,0.100000,")
    assert result["rows"] == 2
