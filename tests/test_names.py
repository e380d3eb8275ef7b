"""Odd video names end to end, locally (tests/test_gcs_names.py has them on gs://): a name with a line break,
a carriage return, a tab, quotes and a comma, or a spreadsheet formula goes through predict (--segments,
--per-video) and an incremental re-run into every CSV and reads back exactly; events.csv, the file made for
spreadsheets, never starts a cell with a formula; per-video files, thumbnails and tracks get names that cannot
leave the output, even for ids with `..` parts; a re-run with another --min-confidence and --top-k decides
carried rows again, and a video that is removed or now fails loses its per-video files, and nothing outside
the output is touched."""

from __future__ import annotations

import csv
import json
import os
import posixpath
import shutil
from pathlib import Path

import numpy as np
import pytest

from beam_jobs.sinks import SPREADSHEET_TRIGGERS, plain_cell
from test_report import CLASSES, make_model_dir, predict_args
from tools.sample_videos import render_clip, write_clip

FORMULA = '=HYPERLINK("http:"&A1,"x").avi'
ODD_NAMES = ("plain.avi", "new\nline.avi", "carriage\rreturn.avi", "tab\there.avi", 'quote"and,comma.avi', FORMULA,
             "-minus.avi")
BROKEN = "broken\nfile.mp4"  # not a video: a failures.csv row with a line break in its id
SEGMENT_ARGS = ("--segments", "0.5", "--per-video")
PER_VIDEO = {"per_video": ".csv", "thumbnails": ".jpg", "tracks": ".vtt"}


def write_named_clips(root: Path, names, seed: int) -> Path:
    """Small 10 fps clips of 12 frames (1.2 s) under `names`, relative to `root`."""
    rng = np.random.default_rng(seed)
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        scratch = root / f".clip-{i}.avi"
        write_clip(str(scratch), render_clip(CLASSES[i % len(CLASSES)], rng, 12, 32, 32), "MJPG", fps=10.0)
        os.rename(scratch, root / name)
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def tree(root: Path, skip: Path | None = None) -> dict[str, bytes]:
    """Every file under `root` (but those under `skip`) with its content."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and (skip is None or skip not in p.parents)}


def mirrored_files(output: Path, video_id: str) -> list[Path]:
    from common import fs

    return [output / folder / (fs.mirrored_name(video_id) + ext) for folder, ext in PER_VIDEO.items()]


def unsafe_paths(output: Path, video_id: str) -> list[Path]:
    """Where per-video files went before names were made safe: the id joined as it is."""
    return [Path(os.path.normpath(output / folder / (video_id.lstrip("/") + ext))) for folder, ext in PER_VIDEO.items()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("names_model") / "model")


@pytest.fixture(scope="module")
def odd_clips(tmp_path_factory) -> Path:
    root = write_named_clips(tmp_path_factory.mktemp("odd_clips"), ODD_NAMES, seed=5)
    (root / BROKEN).write_bytes(b"not a video" * 20)
    return root


@pytest.fixture(scope="module")
def odd_run(odd_clips, model_dir, tmp_path_factory) -> Path:
    from beam_jobs import predict

    output = tmp_path_factory.mktemp("odd_out") / "labels"
    predict.run(predict_args(odd_clips, model_dir, output, *SEGMENT_ARGS))
    return output


def test_odd_names_read_back_exactly_from_every_csv(odd_run):
    labelled = sorted(ODD_NAMES)
    assert [r["video_id"] for r in read_csv(odd_run / "labels.csv")] == labelled
    assert [(r["video_id"], r["uri"].rsplit("/", 1)[1]) for r in read_csv(odd_run / "failures.csv")] == [
        (BROKEN, BROKEN)]
    segments = read_csv(odd_run / "segments.csv")
    assert sorted({r["video_id"] for r in segments}) == labelled and len(segments) == 3 * len(labelled)
    assert [int(r["segment"]) for r in segments] == [0, 1, 2] * len(labelled)  # sorted by id, then window
    events = read_csv(odd_run / "events.csv")
    assert sorted({plain_cell(r["video_id"]) for r in events}) == labelled
    for name in ("labels.csv", "segments.csv", "events.csv", "failures.csv"):
        with open(odd_run / name, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        assert len({len(row) for row in rows}) == 1, name  # no record split into two
    manifest = json.loads((odd_run / "manifest.json").read_text())
    assert (manifest["videos_labelled"], manifest["failures"]) == (len(ODD_NAMES), 1)
    assert manifest["csv_records_spanning_lines"] == {"labels.csv": 2, "segments.csv": 6}  # LF and CR


def test_labels_csv_keeps_ids_exact_and_events_csv_is_safe_in_a_spreadsheet(odd_run):
    rows = {r["video_id"]: r for r in read_csv(odd_run / "labels.csv")}
    assert rows[FORMULA]["video_id"].startswith("=")  # machine-read: the id as it is
    raw = (odd_run / "labels.csv").read_text(encoding="utf-8")
    assert '\n"=HYPERLINK(""http:""&A1,""x"").avi",' in raw
    events = read_csv(odd_run / "events.csv")
    cells = [cell for row in events for cell in row.values()]
    assert not [cell for cell in cells if cell.startswith(SPREADSHEET_TRIGGERS[:-1])]
    assert {r["video_id"] for r in events} >= {"'" + FORMULA, "'-minus.avi", "tab\there.avi"}
    page = (odd_run / "report.html").read_text(encoding="utf-8")
    assert FORMULA not in page and "=HYPERLINK(&quot;http:&quot;&amp;A1,&quot;x&quot;).avi" in page


def test_per_video_files_of_odd_names_have_safe_names(odd_run):
    for name in ODD_NAMES:
        for path in mirrored_files(odd_run, name):
            assert path.is_file(), path
    assert (odd_run / "per_video" / "new%0Aline.avi.csv").is_file()
    assert (odd_run / "thumbnails" / "carriage%0Dreturn.avi.jpg").is_file()
    assert (odd_run / "tracks" / "tab%09here.avi.vtt").read_text().startswith("WEBVTT\n")
    per_video = read_csv(odd_run / "per_video" / "quote\"and,comma.avi.csv")
    assert [r["class"] for r in per_video] and sorted(r["class"] for r in per_video) == sorted(CLASSES)
    names = [p.name for folder in PER_VIDEO for p in (odd_run / folder).iterdir()]
    assert not [n for n in names if any(c in n for c in "\n\r\t")]


@pytest.fixture(scope="module")
def decided_again(odd_run, odd_clips, model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A re-run into a copy of `odd_run`'s output after one clip was removed and one broken (no other test
    reads `odd_clips` again), with another --min-confidence and --top-k."""
    from beam_jobs import predict

    output = tmp_path_factory.mktemp("odd_rerun") / "labels"
    shutil.copytree(odd_run, output)
    (odd_clips / "-minus.avi").unlink()
    (odd_clips / "tab\there.avi").write_bytes(b"now broken" * 30)
    predict.run(predict_args(odd_clips, model_dir, output, *SEGMENT_ARGS, "--min-confidence", "1.0", "--top-k", "1"))
    return odd_run, output


def test_a_rerun_with_other_decisions_decides_carried_rows_again(decided_again):
    before, output = decided_again
    manifest = json.loads((output / "manifest.json").read_text())
    kept = sorted(set(ODD_NAMES) - {"-minus.avi", "tab\there.avi"})  # "new\nline.avi" too: read back whole
    assert (manifest["labelled_this_run"], manifest["reused_from_previous_run"], manifest["failures"]) == (0, 5, 2)
    old = {r["video_id"]: r for r in read_csv(before / "labels.csv")}
    rows = read_csv(output / "labels.csv")
    assert [r["video_id"] for r in rows] == kept
    for row in rows:  # carried over unread, decided with --min-confidence 1.0 and --top-k 1
        assert row["label"] == "unknown" and row["top_k"].count(":") == 1
        assert row["top_k"] == old[row["video_id"]]["top_k"].split(";")[0]
        assert {k: v for k, v in row.items() if k.startswith("p_")} == {
            k: v for k, v in old[row["video_id"]].items() if k.startswith("p_")}
    segments = read_csv(output / "segments.csv")
    assert len(segments) == 3 * len(kept) and {r["label"] for r in segments} == {"unknown"}
    assert all(r["top_k"].count(":") == 1 for r in segments)
    assert read_csv(output / "events.csv") == []  # nothing reaches a confidence of 1
    for name in kept:  # the carried videos' tracks are written again: no event, no cue
        assert mirrored_files(output, name)[2].read_text() == "WEBVTT\n"
        assert " --> " in mirrored_files(before, name)[2].read_text()


def test_a_video_removed_or_now_failing_loses_its_per_video_files(decided_again):
    before, output = decided_again
    assert [r["video_id"] for r in read_csv(output / "failures.csv")] == sorted([BROKEN, "tab\there.avi"])
    for name in ("-minus.avi", "tab\there.avi"):
        assert all(path.is_file() for path in mirrored_files(before, name))
        assert not [path for path in mirrored_files(output, name) if path.exists()], name
    for name in set(ODD_NAMES) - {"-minus.avi", "tab\there.avi"}:
        assert all(path.is_file() for path in mirrored_files(output, name))


def test_ids_with_dot_dot_parts_never_reach_outside_the_output(model_dir, tmp_path):
    """A glob with `..` after its wildcard gives ids that climb out of the input root (`../../../outside/x.avi`):
    their per-video files stay inside the output, and so do the deletions when such a video goes away."""
    from beam_jobs import predict

    world = tmp_path / "world"
    (world / "clips" / "in" / "a" / "b" / "x").mkdir(parents=True)
    write_named_clips(world / "clips" / "outside", ["evil.avi", "kept.avi"], seed=9)
    pattern = str(world / "clips" / "in" / "a" / "b" / "*" / ".." / ".." / ".." / ".." / "outside" / "*.avi")
    output = world / "job" / "out"
    before = tree(world)
    predict.run(predict_args(pattern, model_dir, output, *SEGMENT_ARGS))
    ids = [r["video_id"] for r in read_csv(output / "labels.csv")]
    assert ids == ["../../../outside/evil.avi", "../../../outside/kept.avi"]
    assert tree(world, skip=output) == before  # nothing written outside the output
    for video_id in ids:
        unsafe = unsafe_paths(output, video_id)
        assert all(output not in path.parents for path in unsafe)  # where the id joined as it is would go
        assert all(path.is_file() and output in path.parents for path in mirrored_files(output, video_id))
    assert (output / "per_video" / "%2E%2E" / "%2E%2E" / "%2E%2E" / "outside" / "evil.avi.csv").is_file()

    for path in unsafe_paths(output, ids[0]):  # a user's files where the unsafe names would point
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("the user's own file")
    (world / "clips" / "outside" / "evil.avi").unlink()
    decoys = tree(world, skip=output)
    predict.run(predict_args(pattern, model_dir, output, *SEGMENT_ARGS))
    assert [r["video_id"] for r in read_csv(output / "labels.csv")] == ids[1:]
    assert not [path for path in mirrored_files(output, ids[0]) if path.exists()]  # the removed video's files
    assert tree(world, skip=output) == decoys  # and nothing outside the output was deleted
    assert posixpath.normpath(ids[0]).startswith("../")
