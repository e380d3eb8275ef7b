"""common.publish: outputs appear only when complete (staging, move into place, manifest last)."""

from __future__ import annotations

import os
import stat

import pytest

import memfs
from common import fs, publish
from common.errors import EXIT_CANNOT_CREATE, OperationalError, UserError

MANIFEST = "manifest.json"


def objects(prefix: str) -> list[str]:
    return sorted(name[len(prefix) + 1:] for name in memfs.OBJECTS if name.startswith(prefix + "/"))


def local_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
                  for d, _, names in os.walk(root) for n in names)


# check_output


def test_check_output_refuses_a_file(tmp_path):
    (tmp_path / "out").write_text("I am a file")
    with pytest.raises(OperationalError, match=r"^--output .*out exists and is not a directory$") as refused:
        publish.check_output(str(tmp_path / "out"), MANIFEST, overwrite=True)
    assert refused.value.exit_code == EXIT_CANNOT_CREATE == 73


def test_check_output_on_an_unfinished_output(tmp_path, bucket):
    assert publish.check_output(str(tmp_path / "new"), MANIFEST, overwrite=False) is False
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "labels.csv").write_text("no manifest: not finished")
    assert publish.check_output(str(tmp_path / "half"), MANIFEST, overwrite=False) is False
    assert publish.check_output(f"{bucket}/out", MANIFEST, overwrite=False) is False


@pytest.mark.parametrize("where", ["local", "mem"])
def test_check_output_on_a_finished_output(where, tmp_path, bucket):
    output = str(tmp_path / "out") if where == "local" else f"{bucket}/out"
    fs.write_text(fs.join(output, MANIFEST), "{}")
    with pytest.raises(UserError) as caught:
        publish.check_output(output, MANIFEST, overwrite=False, what="a featurize run")
    assert str(caught.value) == (f"{output} already holds a featurize run (manifest.json); "
                                 "pass --overwrite to replace it")
    assert publish.check_output(output, MANIFEST, overwrite=True) is True


# new_staging


def test_new_staging_removes_stale_staging_and_creates_nothing(tmp_path):
    output = tmp_path / "out"
    (output / ".staging-old1" / "sub").mkdir(parents=True)
    (output / ".staging-old1" / "sub" / "part.tfrecord").write_text("x")
    (output / ".staging-old2").mkdir()  # an empty one too
    (output / "labels.csv").write_text("kept")
    staging = publish.new_staging(str(output))
    assert os.path.dirname(staging) == str(output)
    assert os.path.basename(staging).startswith(".staging-") and len(os.path.basename(staging)) == 9 + 12
    assert not os.path.exists(staging)
    assert sorted(os.listdir(output)) == ["labels.csv"]
    assert publish.new_staging(str(output)) != staging  # a fresh name each run


def test_new_staging_on_a_missing_output_creates_nothing(tmp_path):
    staging = publish.new_staging(str(tmp_path / "not-yet"))
    assert staging.startswith(str(tmp_path / "not-yet" / ".staging-"))
    assert not (tmp_path / "not-yet").exists()


def test_new_staging_remotely(bucket):
    for name in [".staging-aaa/x.txt", ".staging-aaa/sub/y.txt", ".staging-bbb/z.txt", "labels.csv"]:
        fs.write_text(f"{bucket}/out/{name}", "x")
    staging = publish.new_staging(f"{bucket}/out")
    assert staging.startswith(f"{bucket}/out/.staging-")
    assert objects(bucket) == ["out/labels.csv"]


# publish


def _stage(staging: str, names: list[str]) -> list[str]:
    paths = [fs.join(staging, name) for name in names]
    for path, name in zip(paths, names):
        fs.write_text(path, f"content of {name}")
    return paths


def test_publish_moves_the_manifest_last(tmp_path, monkeypatch):
    output = str(tmp_path / "out")
    fs.write_text(fs.join(output, MANIFEST), "old manifest")
    fs.write_text(fs.join(output, "old.csv"), "old")
    staging = fs.join(output, ".staging-run")
    staged = _stage(staging, ["labels.csv", "per_video/a/b.csv"])
    calls = []
    for name in ("move", "delete", "remove_tree"):
        real = getattr(fs, name)

        def recording(*args, _real=real, _name=name):
            calls.append((_name, *[[os.path.relpath(p, output) for p in a] if isinstance(a, list) else
                                   os.path.relpath(a, output) for a in args]))
            return _real(*args)

        monkeypatch.setattr(fs, name, recording)
    publish.publish(output, staging, staged, MANIFEST, '{"job": "test"}', replace=[fs.join(output, "old.csv")])
    moves = [c for c in calls if c[0] == "move"]
    assert moves == [
        ("move", [".staging-run/labels.csv", ".staging-run/per_video/a/b.csv"], ["labels.csv", "per_video/a/b.csv"]),
        ("move", [".staging-run/manifest.json"], ["manifest.json"]),
    ]
    # The old manifest goes first (the output is marked unfinished), then what this run replaces.
    first_move = calls.index(moves[0])
    assert ("delete", ["manifest.json"]) in calls[:first_move]
    assert ("remove_tree", "old.csv") in calls[:first_move]
    assert calls.index(("delete", ["manifest.json"])) < calls.index(("remove_tree", "old.csv"))
    assert calls[-1] == ("remove_tree", ".staging-run")
    assert local_files(output) == ["labels.csv", "manifest.json", "per_video/a/b.csv"]
    assert fs.read_text(fs.join(output, MANIFEST)) == '{"job": "test"}'
    assert fs.read_text(fs.join(output, "per_video/a/b.csv")) == "content of per_video/a/b.csv"


def test_publish_replaces_old_outputs_and_keeps_the_rest(tmp_path):
    output = str(tmp_path / "out")
    for name in ["labels.csv", "per_video/gone.csv", "per_video/sub/also_gone.csv", "notes.txt", MANIFEST]:
        fs.write_text(fs.join(output, name), "old")
    staging = fs.join(output, ".staging-run")
    staged = _stage(staging, ["labels.csv", "per_video/new.csv"])
    publish.publish(output, staging, staged, MANIFEST, "new manifest",
                    replace=[fs.join(output, "labels.csv"), fs.join(output, "per_video")])
    assert local_files(output) == ["labels.csv", "manifest.json", "notes.txt", "per_video/new.csv"]
    assert fs.read_text(fs.join(output, "labels.csv")) == "content of labels.csv"
    assert fs.read_text(fs.join(output, "notes.txt")) == "old"
    assert fs.read_text(fs.join(output, MANIFEST)) == "new manifest"
    assert not os.path.exists(staging)


def test_publish_to_an_object_store(bucket):
    output = f"{bucket}/out"
    for name in ["labels.csv", "per_video/gone.csv", MANIFEST, "notes.txt"]:
        fs.write_text(f"{output}/{name}", "old")
    staging = publish.new_staging(output)
    staged = _stage(staging, ["labels.csv", "per_video/x/new.csv"])
    publish.publish(output, staging, staged, MANIFEST, "new manifest",
                    replace=[f"{output}/labels.csv", f"{output}/per_video"])
    assert objects(bucket) == ["out/labels.csv", "out/manifest.json", "out/notes.txt", "out/per_video/x/new.csv"]
    assert fs.read_text(f"{output}/labels.csv") == "content of labels.csv"
    assert fs.read_text(f"{output}/{MANIFEST}") == "new manifest"


def test_publish_to_an_object_store_removes_replaced_files(bucket):
    """`replace` as the jobs pass it: the previous run's files, one by one (fs.match lists objects)."""
    output = f"{bucket}/out"
    for name in ["labels.csv", "per_video/a.csv", "per_video/removed_video.csv", "notes.txt", MANIFEST]:
        fs.write_text(f"{output}/{name}", "old")
    staging = publish.new_staging(output)
    staged = _stage(staging, ["labels.csv", "per_video/a.csv"])
    publish.publish(output, staging, staged, MANIFEST, "new manifest", replace=fs.match(f"{output}/per_video/**"))
    assert objects(bucket) == ["out/labels.csv", "out/manifest.json", "out/notes.txt", "out/per_video/a.csv"]


def test_publish_from_local_staging_to_an_object_store(tmp_path, bucket):
    """Training stages locally for gs:// outputs: the move crosses filesystems."""
    staging = str(tmp_path / "staging")
    staged = _stage(staging, ["model.keras", "vocab/labels.txt"])
    publish.publish(f"{bucket}/model", staging, staged, MANIFEST, "m")
    assert objects(bucket) == ["model/manifest.json", "model/model.keras", "model/vocab/labels.txt"]
    assert fs.read_text(f"{bucket}/model/vocab/labels.txt") == "content of vocab/labels.txt"
    assert not os.path.exists(staging)


def test_a_publish_killed_before_the_manifest_leaves_no_manifest(tmp_path, monkeypatch):
    output = str(tmp_path / "out")
    fs.write_text(fs.join(output, MANIFEST), "old manifest")
    staging = fs.join(output, ".staging-run")
    staged = _stage(staging, ["labels.csv"])
    real_move = fs.move

    def move_then_die(sources, destinations):
        if any(os.path.basename(d) == MANIFEST for d in destinations):
            raise KeyboardInterrupt("killed")
        real_move(sources, destinations)

    monkeypatch.setattr(fs, "move", move_then_die)
    with pytest.raises(KeyboardInterrupt):
        publish.publish(output, staging, staged, MANIFEST, "new manifest")
    assert not os.path.exists(fs.join(output, MANIFEST))
    assert publish.check_output(output, MANIFEST, overwrite=False) is False


# write_atomically


def test_write_atomically_bytes(tmp_path):
    path = tmp_path / "sub" / "model.keras"
    publish.write_atomically(str(path), b"first")
    publish.write_atomically(str(path), b"second")
    assert path.read_bytes() == b"second"
    assert os.listdir(tmp_path / "sub") == ["model.keras"]


def test_write_atomically_callable_gets_a_temporary_path_with_the_same_extension(tmp_path):
    path = tmp_path / "history.csv.gz"
    seen = []

    def writer(temporary):
        seen.append(temporary)
        with open(temporary, "wb") as f:
            f.write(b"written by the callable")

    publish.write_atomically(str(path), writer)
    (temporary,) = seen
    assert os.path.dirname(temporary) == str(tmp_path) and temporary != str(path)
    assert temporary.endswith(".csv.gz") and os.path.basename(temporary).startswith(".history-")
    assert path.read_bytes() == b"written by the callable"
    assert os.listdir(tmp_path) == ["history.csv.gz"]


@pytest.mark.parametrize("content", ["bytes", "callable"])
def test_write_atomically_leaves_nothing_on_an_exception(content, tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    path.write_bytes(b"previous")

    def failing(temporary):
        with open(temporary, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    if content == "bytes":
        monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
        data = b"new"
    else:
        data = failing
    with pytest.raises(OSError, match="disk full"):
        publish.write_atomically(str(path), data)
    assert os.listdir(tmp_path) == ["model.keras"]
    assert path.read_bytes() == b"previous"


def test_write_atomically_permissions_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        publish.write_atomically(str(tmp_path / "a.json"), b"{}")
        publish.write_atomically(str(tmp_path / "b.json"), lambda p: open(p, "wb").close())
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o640
    assert os.umask(previous) == previous  # the umask is left as it was


def test_write_atomically_to_an_object_store(bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the local copy is written in a temporary folder, not here
    publish.write_atomically(f"{bucket}/m/a.bin", b"bytes")

    def writer(local):
        assert not fs.is_remote(local) and local.endswith("b.keras")
        with open(local, "wb") as f:
            f.write(b"from a local file")

    publish.write_atomically(f"{bucket}/m/b.keras", writer)
    assert objects(bucket) == ["m/a.bin", "m/b.keras"]
    assert fs.read_bytes(f"{bucket}/m/a.bin") == b"bytes"
    assert fs.read_bytes(f"{bucket}/m/b.keras") == b"from a local file"
    assert os.listdir(tmp_path) == []


def test_now_utc_is_an_iso_time_in_seconds():
    import datetime

    parsed = datetime.datetime.fromisoformat(publish.now_utc())
    assert parsed.utcoffset() == datetime.timedelta(0) and parsed.microsecond == 0


# Files the product did not write


def test_an_output_of_someone_elses_files_without_a_manifest_is_refused_unless_overwrite(tmp_path, bucket):
    for output in (str(tmp_path / "out"), f"{bucket}/out"):
        publish.check_only_own_files(output, MANIFEST, overwrite=False)  # nothing there yet
        fs.write_text(fs.join(output, ".lease.json"), "{}")
        fs.write_text(fs.join(output, ".staging-dead/labels.csv"), "a dead run's staging")
        publish.check_only_own_files(output, MANIFEST, overwrite=False)  # only a run's bookkeeping
        fs.write_text(fs.join(output, "tracks/song1.flac"), "music")
        with pytest.raises(UserError) as refused:
            publish.check_only_own_files(output, MANIFEST, overwrite=False)
        assert str(refused.value) == (f"--output {output} holds files this program did not write (tracks/song1.flac) "
                                      "and no manifest.json; pass --overwrite to write into it (files of the same "
                                      "names are replaced, no other file is removed)")
        publish.check_only_own_files(output, MANIFEST, overwrite=True)
        fs.write_text(fs.join(output, MANIFEST), "{}")  # a finished run of this program: its files are its own
        publish.check_only_own_files(output, MANIFEST, overwrite=False)


def test_the_files_of_a_publish_that_did_not_finish_are_the_programs_own(tmp_path):
    output = str(tmp_path / "out")
    fs.write_text(fs.join(output, "labels.csv"), "moved in before the run was killed")
    fs.write_text(fs.join(output, "thumbnails/a.jpg"), "also")
    fs.write_json(fs.join(output, publish.PUBLISHING_FILE),
                  {"staging": ".staging-dead", "previous": [], "outputs": ["labels.csv", "thumbnails/**"]})
    publish.check_only_own_files(output, MANIFEST, overwrite=False)
    fs.write_text(fs.join(output, "README.txt"), "the user's")
    with pytest.raises(UserError, match=r"\(README.txt\)"):
        publish.check_only_own_files(output, MANIFEST, overwrite=False)


@pytest.mark.parametrize("previous", [None, ["labels.csv", "per_video/**"]])
def test_only_files_an_earlier_manifest_names_are_removed(previous, tmp_path):
    output = str(tmp_path / "out")
    for name in ["labels.csv", "per_video/gone.csv", "tracks/song1.flac", "README.txt"]:
        fs.write_text(fs.join(output, name), "old")
    if previous is not None:
        fs.write_json(fs.join(output, MANIFEST), {"outputs": previous})
    staging = fs.join(output, ".staging-run")
    staged = _stage(staging, ["labels.csv", "per_video/new.csv"])
    publish.publish(output, staging, staged, MANIFEST, "{}", outputs=["labels.csv", "per_video/**"],
                    replace=[fs.join(output, name) for name in ("labels.csv", "per_video", "tracks", "README.txt")])
    kept = ["README.txt", "tracks/song1.flac"] + (["per_video/gone.csv"] if previous is None else [])
    assert local_files(output) == sorted(["labels.csv", MANIFEST, "per_video/new.csv", *kept])
    assert fs.read_text(fs.join(output, "labels.csv")) == "content of labels.csv"  # the same name: replaced


def test_publish_checks_the_fence_before_changing_the_output(tmp_path):
    from common.errors import LeaseLost

    output = str(tmp_path / "out")
    fs.write_text(fs.join(output, "labels.csv"), "old")
    fs.write_json(fs.join(output, MANIFEST), {"outputs": ["labels.csv"]})
    staging = fs.join(output, ".staging-run")
    staged = _stage(staging, ["labels.csv"])

    def lost():
        raise LeaseLost("taken over")

    with pytest.raises(LeaseLost):
        publish.publish(output, staging, staged, MANIFEST, "{}", outputs=["labels.csv"],
                        replace=[fs.join(output, "labels.csv")], fence=lost)
    assert local_files(output) == [".staging-run/labels.csv", "labels.csv", MANIFEST]
    assert fs.read_text(fs.join(output, "labels.csv")) == "old"
