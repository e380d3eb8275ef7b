"""Which files are videos, their ids, and their labels (folders or a labels CSV)."""

from __future__ import annotations

import os

import pytest

from beam_jobs.matching import attach_labels, match_videos, read_labels_csv
from common.errors import UserError


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_directory_ids_are_relative_and_extensions_case_insensitive(tmp_path):
    touch(tmp_path / "A" / "v1.avi")
    touch(tmp_path / "A" / "V2.MP4")
    touch(tmp_path / "B" / "sub" / "v3.webm")
    touch(tmp_path / "B" / "notes.txt")
    refs = match_videos([str(tmp_path)])
    assert [r.video_id for r in refs] == ["A/V2.MP4", "A/v1.avi", "B/sub/v3.webm"]
    assert all(os.path.isabs(r.uri) and r.size == 1 for r in refs)
    assert [r.video_id for r in match_videos([str(tmp_path)], (".webm",))] == ["B/sub/v3.webm"]


def test_glob_and_several_inputs_keep_ids_distinct(tmp_path):
    touch(tmp_path / "one" / "same.avi")
    touch(tmp_path / "two" / "same.avi")
    refs = match_videos([str(tmp_path / "one"), str(tmp_path / "two")])
    assert [r.video_id for r in refs] == ["one/same.avi", "two/same.avi"]
    refs = match_videos([str(tmp_path / "*" / "*.avi")])
    assert [r.video_id for r in refs] == ["one/same.avi", "two/same.avi"]


def test_broken_symlink_is_listed_for_the_failures_file(tmp_path):
    touch(tmp_path / "ok.avi")
    os.symlink(tmp_path / "gone.avi", tmp_path / "broken.avi")
    refs = {r.video_id: r for r in match_videos([str(tmp_path)])}
    assert refs["broken.avi"].size == -1 and refs["ok.avi"].size == 1


def test_missing_input_and_empty_glob_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        match_videos([str(tmp_path / "nope")])
    touch(tmp_path / "a.txt")
    with pytest.raises(UserError, match="matches no video files"):
        match_videos([str(tmp_path)])


def test_labels_from_folders_and_csv(tmp_path):
    touch(tmp_path / "Punch" / "v_Punch_g01_c01.avi")
    touch(tmp_path / "Punch" / "v_Punch_g02_c01.avi")
    refs = match_videos([str(tmp_path)])
    labelled, failed = attach_labels(refs, "folder")
    assert [r.label for r in labelled] == ["Punch", "Punch"] and failed == []
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("video_name,tag\nv_Punch_g01_c01.avi,Punch\n")
    labelled, failed = attach_labels(refs, "csv", read_labels_csv(str(csv_path)))
    assert [(r.video_id, r.label) for r in labelled] == [("Punch/v_Punch_g01_c01.avi", "Punch")]
    assert [(r.video_id, why) for r, why in failed] == [("Punch/v_Punch_g02_c01.avi", "not listed in the labels CSV")]


def test_bad_labels_csv_is_a_user_error(tmp_path):
    touch(tmp_path / "A" / "v.avi")
    refs = match_videos([str(tmp_path)])
    bad_columns = tmp_path / "bad.csv"
    bad_columns.write_text("name,label\nv.avi,A\n")
    with pytest.raises(UserError, match="video_name,tag"):
        read_labels_csv(str(bad_columns))
    ghost = tmp_path / "ghost.csv"
    ghost.write_text("video_name,tag\nv.avi,A\nmissing.avi,B\n")
    with pytest.raises(UserError, match="not found in the inputs: missing.avi"):
        attach_labels(refs, "csv", read_labels_csv(str(ghost)))
