"""beam_jobs.plan and beam_jobs.carry end to end: a scheduled re-run costs what changed. Nothing new, changed
or removed runs no pipeline (and loads no model); otherwise the pipeline reads only the new and changed
videos and publishing merges the carried rows in, into the files a run from scratch would write; a failure
while merging leaves the previous output as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import apache_beam as beam
import pytest

from beam_jobs import carry, predict
from beam_jobs import plan as planning
from test_report import make_model_dir, predict_args, write_clips


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def index_of(output: Path) -> dict[str, dict]:
    return {e["video_id"]: e for shard in sorted(output.glob("index-*-of-*.jsonl"))
            for e in map(json.loads, shard.read_text().splitlines())}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("plan_model") / "model")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("plan_clips"), per_class=2, seed=12)


@pytest.fixture(scope="module")
def finished(clips, model_dir, tmp_path_factory) -> Path:
    """A finished run over `clips`; tests copy it before changing anything."""
    output = tmp_path_factory.mktemp("plan_finished") / "labels"
    predict.run(predict_args(clips, model_dir, output))
    return output


@pytest.fixture
def plans(monkeypatch) -> list:
    """The plans the launcher makes."""
    made, original = [], planning.plan_run
    monkeypatch.setattr(planning, "plan_run", lambda *a, **k: made.append(original(*a, **k)) or made[-1])
    return made


def test_nothing_new_changed_or_removed_runs_no_pipeline_and_records_the_check(finished, clips, model_dir, tmp_path,
                                                                              monkeypatch, capsys, plans):
    output = tmp_path / "labels"
    shutil.copytree(finished, output)
    before = tree(output)

    def refuse(*args, **kwargs):
        raise AssertionError("nothing changed, yet a pipeline was built or the model loaded")

    import model.export

    monkeypatch.setattr(beam.Pipeline, "__init__", refuse)
    monkeypatch.setattr(model.export, "load_model_dir", refuse)
    capsys.readouterr()
    assert predict.run(predict_args(clips, model_dir, output)) is None
    assert capsys.readouterr().out.splitlines() == [
        f"predict: nothing new, changed or removed among the 6 videos listed; the outputs in {output} stay as they "
        "are (the check is in manifest.json)"]
    assert [(p.listed, p.todo, p.carried, p.removed) for p in plans] == [(6, 0, 6, 0)]
    after = tree(output)
    assert {name: content for name, content in after.items() if name != "manifest.json"} == {
        name: content for name, content in before.items() if name != "manifest.json"}
    old, new = json.loads(before["manifest.json"]), json.loads(after["manifest.json"])
    check = new.pop(planning.CHECK_KEY)
    assert check["videos_checked"] == 6 and (check["new"], check["changed"], check["removed"]) == (0, 0, 0)
    assert check["checked_at"] and check["run_id"] != old["run_id"]
    assert (new.pop("labelled_this_run"), new.pop("reused_from_previous_run"), new.pop("frames_sampled")) == (0, 6, 0)
    assert {k: v for k, v in old.items() if k not in ("labelled_this_run", "reused_from_previous_run",
                                                      "frames_sampled")} == new


def test_a_video_no_longer_listed_is_removed_with_its_files(finished, clips, model_dir, tmp_path, plans):
    output = tmp_path / "labels"
    shutil.copytree(finished, output)
    gone = "zz/gone.avi"  # last in id order
    (index,) = output.glob("index-*-of-*.jsonl")
    entry = dict(next(iter(index_of(output).values())), video_id=gone, uri=str(clips / gone))
    index.write_text(index.read_text() + json.dumps(entry) + "\n")
    labels = (output / "labels.csv").read_text()
    last = labels.splitlines(True)[-1]
    (output / "labels.csv").write_text(labels + gone + last[last.index(","):])
    (output / "thumbnails" / "zz").mkdir()
    (output / "thumbnails" / "zz" / "gone.avi.jpg").write_bytes(b"jpeg")
    predict.run(predict_args(clips, model_dir, output))
    assert [(p.todo, p.carried, p.removed) for p in plans] == [(0, 6, 1)]
    assert (output / "labels.csv").read_text() == (finished / "labels.csv").read_text()
    assert index_of(output) == index_of(finished) and not (output / "thumbnails" / "zz" / "gone.avi.jpg").exists()
    manifest = json.loads((output / "manifest.json").read_text())
    assert (manifest["videos_matched"], manifest["labelled_this_run"], manifest["reused_from_previous_run"]) == (6, 0, 6)


def test_new_and_changed_videos_are_labelled_removed_ones_dropped_as_a_run_from_scratch_would(
        clips, model_dir, tmp_path, plans):
    local = tmp_path / "clips"
    shutil.copytree(clips, local)
    output = tmp_path / "labels"
    predict.run(predict_args(local, model_dir, output))
    videos = sorted(p for p in local.rglob("*") if p.is_file() and p.suffix in (".avi", ".mp4"))
    other = write_clips(tmp_path / "other", per_class=1, seed=99)
    fresh = sorted(p for p in other.rglob("*") if p.is_file() and p.suffix in (".avi", ".mp4"))
    removed, changed = videos[0], videos[3]
    removed.unlink()
    changed.write_bytes(fresh[0].read_bytes())  # other content under the same name
    (local / "new").mkdir()
    shutil.copy(fresh[1], local / "new" / fresh[1].name)
    plans.clear()
    predict.run(predict_args(local, model_dir, output))
    assert [(p.listed, p.todo, p.carried, p.removed) for p in plans] == [(6, 2, 4, 1)]
    manifest = json.loads((output / "manifest.json").read_text())
    assert (manifest["videos_matched"], manifest["labelled_this_run"], manifest["reused_from_previous_run"]) == (6, 2, 4)
    scratch = tmp_path / "scratch"
    predict.run(predict_args(local, model_dir, scratch))
    assert (output / "labels.csv").read_text() == (scratch / "labels.csv").read_text()
    assert index_of(output) == index_of(scratch) and len(list(output.glob("index-*"))) == 1
    assert sorted(tree(output / "thumbnails")) == sorted(tree(scratch / "thumbnails"))


def test_a_failure_while_merging_the_carried_rows_leaves_the_previous_output_and_a_rerun_completes(
        finished, clips, model_dir, tmp_path, monkeypatch, plans):
    output = tmp_path / "labels"
    shutil.copytree(finished, output)
    (index,) = output.glob("index-*-of-*.jsonl")
    entries = [json.loads(line) for line in index.read_text().splitlines()]
    entries[2]["mtime"] += 1  # the listing says it changed (its content did not: its row is reused)
    index.write_text("".join(json.dumps(e) + "\n" for e in entries))
    before = tree(output)
    original = carry.records_of

    def fail_midway(*args, **kwargs):
        for number, found in enumerate(original(*args, **kwargs)):
            if number == 2:
                raise OSError("the disk went away")
            yield found

    monkeypatch.setattr(carry, "records_of", fail_midway)
    with pytest.raises(Exception, match="the disk went away"):
        predict.run(predict_args(clips, model_dir, output))
    assert [(p.todo, p.carried) for p in plans] == [(1, 5)]
    assert tree(output) == before  # nothing lost, nothing half-written, no staging or lease left
    monkeypatch.setattr(carry, "records_of", original)
    predict.run(predict_args(clips, model_dir, output))
    assert (output / "labels.csv").read_text() == (finished / "labels.csv").read_text()
    manifest = json.loads((output / "manifest.json").read_text())
    assert (manifest["labelled_this_run"], manifest["reused_from_previous_run"]) == (0, 6)
    assert index_of(output) == index_of(finished)
