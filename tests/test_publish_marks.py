"""common.publish: which files are the product's (its patterns, its bookkeeping, an unfinished publish's mark),
how a publish resumes from its mark, and the permissions of a file written atomically. Expected values are
written out by hand."""

from __future__ import annotations

import os
import stat

import pytest

from common import fs, publish

MANIFEST = "manifest.json"


def test_patterns_match_within_a_name_across_folders_or_one_character():
    owned = publish.owned_by(["index-*-of-*.jsonl", "thumbnails/**", "report.htm?", "labels.csv", "a/b/**"])
    for relative in ("index-00000-of-00002.jsonl", "index--of-.jsonl", "thumbnails/x.jpg", "thumbnails/x/y.jpg",
                     "thumbnails", "report.html", "report.htmx", "labels.csv", "a", "a/b/c.csv", "a/b/c/d.csv"):
        assert owned(relative), relative
    for relative in ("index-0/0-of-1.jsonl",  # `*` stays within a name
                     "report.htm", "report.htm/", "report.htmlx",  # `?` is one character, not `/`
                     "labels.csv.bak", "old/labels.csv", "labelsXcsv",  # whole names; `.` is a dot
                     "b", "thumbnails2/x.jpg", "a/c.csv", "index-0-of-1.json"):
        assert not owned(relative), relative
    assert not publish.owned_by([])("labels.csv")


def test_bookkeeping_is_the_lease_staging_and_the_mark_at_the_top_of_the_output():
    for relative in (".lease.json", ".lease-x1y2", ".staging-abc/labels.csv", ".staging-abc/a/b/c.csv",
                     ".publishing.json"):
        assert publish.is_bookkeeping(relative), relative
    for relative in ("labels.csv", "a/.lease.json", "x/.staging-abc/labels.csv", "a/.publishing.json",
                     ".publishing.json.bak", ".publishing.json copy", "staging-abc/x", "lease.json"):
        assert not publish.is_bookkeeping(relative), relative


def test_previous_outputs_are_the_manifests_and_an_unfinished_publishs(tmp_path):
    output = str(tmp_path)
    assert publish.previous_outputs(output, MANIFEST, ["default.csv"]) == []  # nothing of this product's there
    fs.write_json(fs.join(output, MANIFEST), {"outputs": ["labels.csv", "b/**"]})
    assert publish.previous_outputs(output, MANIFEST, ["default.csv"]) == ["b/**", "labels.csv"]
    fs.write_json(fs.join(output, publish.PUBLISHING_FILE),
                  {"staging": ".staging-x", "previous": ["old.csv", "labels.csv"], "outputs": ["new/**"]})
    assert publish.previous_outputs(output, MANIFEST) == ["b/**", "labels.csv", "new/**", "old.csv"]
    for manifest in ({"job": "from before manifests named their files"}, ["a list"], "{half a manif"):
        fs.write_text(fs.join(output, MANIFEST), manifest if isinstance(manifest, str) else fs.json_text(manifest))
        assert publish.previous_outputs(output, MANIFEST, ["default.csv"]) == [
            "default.csv", "labels.csv", "new/**", "old.csv"], manifest
        assert publish.previous_outputs(output, MANIFEST, ("default.csv",)) == [  # a tuple, as publish passes
            "default.csv", "labels.csv", "new/**", "old.csv"], manifest
    for mark in ("[1]", "{half a mark"):  # a mark that is not one is ignored
        fs.write_text(fs.join(output, publish.PUBLISHING_FILE), mark)
        assert publish.previous_outputs(output, MANIFEST, ["default.csv"]) == ["default.csv"]
    fs.write_json(fs.join(output, publish.PUBLISHING_FILE), {"staging": ".staging-x"})  # names nothing
    assert publish.previous_outputs(output, MANIFEST, ["default.csv"]) == ["default.csv"]


def stage(staging: str, names: list[str]) -> list[str]:
    for name in names:
        fs.write_text(fs.join(staging, name), f"new {name}")
    return [fs.join(staging, name) for name in names]


def files(root: str) -> dict[str, str]:
    return {fs.relative(p, root): fs.read_text(p) for p in fs.files_under(root)}


def fail_once(monkeypatch, name: str) -> None:
    """The first call of fs.`name` fails (a storage error); the later ones work."""
    real, calls = getattr(fs, name), []

    def failing(*args):
        calls.append(args)
        if len(calls) == 1:
            raise OSError(f"injected: {name}")
        return real(*args)

    monkeypatch.setattr(fs, name, failing)


def test_a_retried_publish_removes_what_its_first_try_recorded_not_its_own_new_patterns(tmp_path, monkeypatch):
    """The first try recorded the previous run's patterns in its mark and removed the manifest; the retry must
    go by the mark: this run's new pattern (tracks/**) does not make the user's tracks/ the product's."""
    output = str(tmp_path / "out")
    for name in ("labels.csv", "per_video/old.csv", "tracks/song.flac"):
        fs.write_text(fs.join(output, name), f"old {name}")
    fs.write_json(fs.join(output, MANIFEST), {"outputs": ["labels.csv", "per_video/**"]})
    staging = fs.join(output, ".staging-run")
    staged = stage(staging, ["labels.csv", "tracks/a.vtt"])
    arguments = dict(outputs=["labels.csv", "tracks/**"], run_id="run",
                     replace=[fs.join(output, name) for name in ("labels.csv", "per_video", "tracks")])
    fail_once(monkeypatch, "remove_tree")
    with pytest.raises(OSError, match="injected"):
        publish.publish(output, staging, staged, MANIFEST, '{"run_id": "run"}', **arguments)
    assert not fs.exists(fs.join(output, MANIFEST))
    assert fs.read_json(fs.join(output, publish.PUBLISHING_FILE)) == {
        "staging": ".staging-run", "previous": ["labels.csv", "per_video/**"], "outputs": ["labels.csv", "tracks/**"]}
    publish.publish(output, staging, staged, MANIFEST, '{"run_id": "run"}', **arguments)
    assert files(output) == {"labels.csv": "new labels.csv", "tracks/a.vtt": "new tracks/a.vtt",
                             "tracks/song.flac": "old tracks/song.flac", MANIFEST: '{"run_id": "run"}'}


def test_a_publish_after_another_runs_unfinished_one_replaces_what_both_named(tmp_path, monkeypatch):
    """A run killed while publishing left its mark and no manifest; the next run removes the files either that
    run's previous run or that run itself wrote (the mark names both), and records them in its own mark."""
    output = str(tmp_path / "out")
    for name in ("labels.csv", "per_video/old.csv", "thumbnails/half.jpg", "notes.txt"):
        fs.write_text(fs.join(output, name), f"old {name}")
    fs.write_json(fs.join(output, publish.PUBLISHING_FILE),
                  {"staging": ".staging-dead", "previous": ["labels.csv", "per_video/**"], "outputs": ["thumbnails/**"]})
    staging = fs.join(output, ".staging-run")
    marks, real_move = [], fs.move

    def recording_move(sources, destinations):
        marks.append(fs.read_json(fs.join(output, publish.PUBLISHING_FILE)))
        real_move(sources, destinations)

    monkeypatch.setattr(fs, "move", recording_move)
    publish.publish(output, staging, stage(staging, ["labels.csv"]), MANIFEST, "{}", outputs=["labels.csv"],
                    replace=[fs.join(output, name) for name in ("labels.csv", "per_video", "thumbnails", "notes.txt")])
    assert marks[0] == {"staging": ".staging-run", "previous": ["labels.csv", "per_video/**", "thumbnails/**"],
                        "outputs": ["labels.csv"]}
    assert files(output) == {"labels.csv": "new labels.csv", "notes.txt": "old notes.txt", MANIFEST: "{}"}


def test_a_staging_folder_outside_the_output_is_recorded_by_its_path(tmp_path, monkeypatch):
    output, staging = str(tmp_path / "out"), str(tmp_path / "elsewhere" / "out.partial")
    fs.write_text(fs.join(output, "model.keras"), "old")
    fail_once(monkeypatch, "move")
    arguments = dict(outputs=["model.keras"], replace=[fs.join(output, "model.keras")])
    staged = stage(staging, ["model.keras"])
    with pytest.raises(OSError, match="injected"):
        publish.publish(output, staging, staged, MANIFEST, "{}", **arguments)
    assert fs.read_json(fs.join(output, publish.PUBLISHING_FILE))["staging"] == staging
    publish.publish(output, staging, staged, MANIFEST, "{}", **arguments)
    assert files(output) == {"model.keras": "new model.keras", MANIFEST: "{}"} and not os.path.exists(staging)


def test_a_resumed_publish_missing_a_file_in_both_places_stops(tmp_path):
    output = str(tmp_path / "out")
    staging = fs.join(output, ".staging-run")
    staged = stage(staging, ["a.csv", "b.csv"])
    fs.write_text(fs.join(staging, publish.MOVING_MARK), "")  # a try already removed the old files
    fs.move([staged[0]], [fs.join(output, "a.csv")])  # ... and moved a.csv
    os.remove(staged[1])  # b.csv is lost
    with pytest.raises(FileNotFoundError) as lost:
        publish.publish(output, staging, staged, MANIFEST, "{}", outputs=["a.csv", "b.csv"])
    assert str(lost.value) == f"{staged[1]} is neither staged nor published: the staged output is incomplete"
    assert not fs.exists(fs.join(output, MANIFEST))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_a_file_written_atomically_has_an_ordinary_files_permissions(umask, tmp_path):
    previous = os.umask(umask)
    try:
        publish.write_atomically(str(tmp_path / "a.json"), b"{}")
        assert os.umask(umask) == umask  # left as it was
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == {0o022: 0o644, 0o002: 0o664, 0o077: 0o600}[umask]


@pytest.mark.parametrize("default, kept", [
    (["labels.csv", "tracks/**"], ["per_video/gone.csv"]),  # the files the default names are the product's
    ((), ["tracks/song1.flac"]),  # no default: this run's own patterns stand in
])
def test_a_manifest_that_names_no_outputs_goes_by_the_default_patterns(default, kept, tmp_path):
    output = str(tmp_path / "out")
    for name in ["labels.csv", "per_video/gone.csv", "tracks/song1.flac", "README.txt"]:
        fs.write_text(fs.join(output, name), "old")
    fs.write_json(fs.join(output, MANIFEST), {"job": "from before manifests named their files"})
    staging = fs.join(output, ".staging-run")
    publish.publish(output, staging, stage(staging, ["labels.csv"]), MANIFEST, "{}",
                    outputs=["labels.csv", "per_video/**"], previous_default=default,
                    replace=[fs.join(output, name) for name in ("labels.csv", "per_video", "tracks", "README.txt")])
    assert files(output) == {"labels.csv": "new labels.csv", MANIFEST: "{}", "README.txt": "old",
                             **{name: "old" for name in kept}}
