"""common.fs: paths over one filesystem layer, local and remote (mem://, tests/memfs.py, stands in for gs://)."""

from __future__ import annotations

import gzip
import os
import re

import pytest

import memfs
from common import fs


def objects_under(prefix: str) -> list[str]:
    return sorted(n[len(prefix) + 1:] for n in memfs.OBJECTS if n.startswith(prefix + "/"))


def test_is_remote_and_join():
    assert fs.is_remote("gs://b/x") and fs.is_remote("mem://b") and not fs.is_remote("/tmp/x")
    assert fs.join("/data", "per_video/a/b.csv") == os.path.join("/data", "per_video", "a", "b.csv")
    assert fs.join("/data", "a", "b") == os.path.join("/data", "a", "b")
    assert fs.join("gs://b/out/", "per_video//a/", "/b.csv") == "gs://b/out/per_video/a/b.csv"
    assert fs.join("gs://b/out") == "gs://b/out"
    assert fs.join("gs://b/out", "", "/") == "gs://b/out"


def test_mirrored_name_dirname_and_relative():
    assert fs.mirrored_name("gs://bucket/x/y.avi") == "bucket/x/y.avi"
    assert fs.mirrored_name("/tmp/a.avi") == "tmp/a.avi"
    assert fs.mirrored_name("Class/v.avi") == "Class/v.avi"
    assert fs.dirname("gs://b/x/y.avi") == "gs://b/x"
    assert fs.dirname("gs://b/x/") == "gs://b"
    assert fs.dirname(os.path.join("/tmp", "x", "y.avi")) == os.path.join("/tmp", "x")
    assert fs.relative("gs://b/out/.staging-1/per_video/a.csv", "gs://b/out/.staging-1/") == "per_video/a.csv"
    assert fs.relative(os.path.join("/o", "s", "a", "b.csv"), os.path.join("/o", "s")) == "a/b.csv"
    with pytest.raises(ValueError, match="gs://b/other/a.csv is not under gs://b/out"):
        fs.relative("gs://b/other/a.csv", "gs://b/out")
    with pytest.raises(ValueError, match="is not under"):
        fs.relative("/o/sibling/a.csv", "/o/s")  # a prefix of the name, not of the folder


@pytest.mark.parametrize("name, mirrored", [
    ("in/../../../../etc/cron.d/x.mp4", "in/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/cron.d/x.mp4"),
    ("../x.avi", "%2E%2E/x.avi"),
    ("a/./b.avi", "a/%2E/b.avi"),
    ("a//b.avi", "a/%2F/b.avi"),
    ("gs://bucket/in/../../x.avi", "bucket/in/%2E%2E/%2E%2E/x.avi"),
    ("/etc/passwd", "etc/passwd"),  # an absolute id (inputs on different filesystems) mirrors its path
    ("gs://b/a/gs://c/x.avi", "b/a/gs:/%2F/c/x.avi"),  # only a leading scheme is a URI's
    ("a\nb/c\rd\te.avi", "a%0Ab/c%0Dd%09e.avi"),
    ("nul\x00.avi", "nul%00.avi"),
    ("del\x7f\x85\u2028.avi", "del%7F%C2%85%E2%80%A8.avi"),
    ("100%.avi", "100%25.avi"),  # the escape character itself, so that no two names share a file
    ("%2E%2E/x.avi", "%252E%252E/x.avi"),
    ("Ünïcode and spaces/=HYPERLINK(\"x\").avi", "Ünïcode and spaces/=HYPERLINK(\"x\").avi"),
])
def test_mirrored_names_stay_inside_the_folder(name, mirrored, tmp_path):
    assert fs.mirrored_name(name) == mirrored
    inside = os.path.realpath(fs.join(str(tmp_path), "per_video", mirrored))
    assert inside.startswith(str(tmp_path / "per_video") + os.sep)
    assert fs.join("gs://b/out", "per_video", mirrored) == f"gs://b/out/per_video/{mirrored}"  # no part dropped


def test_mirrored_names_of_different_names_differ():
    import itertools

    pieces = ["", ".", "..", "/", "%", "%2E", "%2F", "a", "\n", "\x00", "gs://"]
    names = {"".join(parts) for n in range(1, 4) for parts in itertools.product(pieces, repeat=n)}
    relative = re.compile(r"(?![A-Za-z][A-Za-z0-9+.-]*://)[^/]")  # neither a URI nor an absolute path
    names = {n for n in names if relative.match(n)}
    mirrored = {fs.mirrored_name(n) for n in names}
    assert len(mirrored) == len(names)
    for name in mirrored:
        assert not {".", "..", ""} & set(name.split("/")) and not any(c in name for c in "\n\x00")


def test_exists_and_is_dir_locally(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f.txt").write_text("x")
    os.symlink(tmp_path / "gone", tmp_path / "broken")
    assert fs.exists(str(tmp_path / "d")) and fs.exists(str(tmp_path / "f.txt"))
    assert fs.exists(str(tmp_path / "broken"))  # the link itself is there
    assert not fs.exists(str(tmp_path / "missing"))
    assert fs.is_dir(str(tmp_path / "d")) and not fs.is_dir(str(tmp_path / "f.txt"))
    assert not fs.is_dir(str(tmp_path / "missing"))


def test_exists_and_is_dir_remotely(bucket):
    fs.write_text(f"{bucket}/out/a/x.txt", "x")
    assert fs.exists(f"{bucket}/out/a/x.txt")
    assert not fs.exists(f"{bucket}/out/a/y.txt")
    assert not fs.exists(f"{bucket}/out")  # object stores have no folders...
    assert fs.is_dir(f"{bucket}/out") and fs.is_dir(f"{bucket}/out/")  # ...but prefixes with objects under them
    assert not fs.is_dir(f"{bucket}/ou")  # a prefix of a name, not of a folder
    assert not fs.is_dir(f"{bucket}/empty")


@pytest.mark.parametrize("where", ["local", "mem"])
def test_match_is_sorted_and_double_star_crosses_folders(where, tmp_path, bucket):
    root = str(tmp_path) if where == "local" else bucket
    for name in ["b.txt", "a.txt", "sub/deeper/c.txt", "sub/d.csv"]:
        fs.write_text(fs.join(root, name), name)
    assert fs.match(fs.join(root, "*.txt")) == [fs.join(root, "a.txt"), fs.join(root, "b.txt")]
    assert fs.match(root + "/**") == [fs.join(root, n) for n in ["a.txt", "b.txt", "sub/d.csv", "sub/deeper/c.txt"]]
    assert fs.match(root + "/**.csv") == [fs.join(root, "sub/d.csv")]
    assert fs.match(fs.join(root, "nothing-*")) == []
    assert fs.match(fs.join(root, "no-folder/*")) == []
    assert fs.files_under(root) == fs.match(root + "/**")


@pytest.mark.parametrize("error, status", [
    (memfs.StorageError(401), 77), (memfs.StorageError(403), 77), (PermissionError("no"), 77),
    (memfs.StorageError(503), 74), (ConnectionResetError("reset"), 74)])
def test_a_listing_that_fails_is_an_error_not_an_empty_listing(error, status, bucket, monkeypatch):
    from common.errors import OperationalError

    fs.write_text(f"{bucket}/out/a.txt", "x")
    monkeypatch.setattr(memfs.MemoryFileSystem, "_list", memfs.listing_fails(error))
    with pytest.raises(OperationalError) as caught:
        fs.match(f"{bucket}/out/*")
    assert caught.value.exit_code == status and str(caught.value).startswith(f"cannot list {bucket}/out/*: ")
    assert str(error) in str(caught.value)
    with pytest.raises(OperationalError):
        fs.is_dir(f"{bucket}/out")


@pytest.mark.parametrize("error", [memfs.StorageError(404), FileNotFoundError("gone")])
def test_a_listing_of_what_does_not_exist_is_empty(error, bucket, monkeypatch):
    monkeypatch.setattr(memfs.MemoryFileSystem, "_list", memfs.listing_fails(error))
    assert fs.match(f"{bucket}/no-such-bucket/*") == [] and not fs.is_dir(f"{bucket}/no-such-bucket")


@pytest.mark.parametrize("where", ["local", "mem"])
def test_match_with_stats(where, tmp_path, bucket):
    root = str(tmp_path) if where == "local" else bucket
    fs.write_bytes(fs.join(root, "two.bin"), b"12")
    fs.write_bytes(fs.join(root, "five.bin"), b"12345")
    stats = list(fs.match_with_stats(fs.join(root, "*.bin")))
    assert [(path, size) for path, size, _, _ in stats] == [(fs.join(root, "five.bin"), 5), (fs.join(root, "two.bin"), 2)]
    if where == "local":
        assert stats[1][2] == pytest.approx(os.stat(tmp_path / "two.bin").st_mtime)
    else:
        assert stats[1][2] == memfs.OBJECTS[fs.join(root, "two.bin")][1]
    assert list(fs.match_with_stats(fs.join(root, "*.none"))) == []


@pytest.mark.parametrize("where", ["local", "mem"])
def test_read_and_write_bytes_text_and_json(where, tmp_path, bucket):
    root = str(tmp_path) if where == "local" else bucket
    fs.write_bytes(fs.join(root, "deep/er/raw.bin"), b"\x00\xff\x01")  # local parent folders are made
    fs.write_text(fs.join(root, "t.txt"), "héllo\nwörld\n")
    fs.write_json(fs.join(root, "v.json"), {"b": [1, 2], "a": "ü"})
    assert fs.read_bytes(fs.join(root, "deep/er/raw.bin")) == b"\x00\xff\x01"
    assert fs.read_text(fs.join(root, "t.txt")) == "héllo\nwörld\n"
    assert fs.read_bytes(fs.join(root, "t.txt")) == "héllo\nwörld\n".encode("utf-8")
    assert fs.read_json(fs.join(root, "v.json")) == {"a": "ü", "b": [1, 2]}
    # sorted keys, two-space indent, a final newline
    assert fs.read_text(fs.join(root, "v.json")) == '{\n  "a": "\\u00fc",\n  "b": [\n    1,\n    2\n  ]\n}\n'
    fs.write_text(fs.join(root, "t.txt"), "short")  # rewriting replaces the whole content
    assert fs.read_text(fs.join(root, "t.txt")) == "short"


@pytest.mark.parametrize("where", ["local", "mem"])
def test_a_gz_name_is_neither_compressed_nor_decompressed(where, tmp_path, bucket):
    root = str(tmp_path) if where == "local" else bucket
    fs.write_bytes(fs.join(root, "plain.gz"), b"not gzip at all")
    assert fs.read_bytes(fs.join(root, "plain.gz")) == b"not gzip at all"
    if where == "local":
        assert (tmp_path / "plain.gz").read_bytes() == b"not gzip at all"
    else:
        assert memfs.OBJECTS[f"{bucket}/plain.gz"][0] == b"not gzip at all"
    compressed = gzip.compress(b"inside")
    fs.write_bytes(fs.join(root, "real.json.gz"), compressed)
    assert fs.read_bytes(fs.join(root, "real.json.gz")) == compressed
    fs.copy_file(fs.join(root, "real.json.gz"), str(tmp_path / "copy.gz"))
    assert (tmp_path / "copy.gz").read_bytes() == compressed


def test_delete_and_remove_tree_locally(tmp_path):
    for name in ["tree/a.txt", "tree/sub/b.txt", "keep/c.txt"]:
        fs.write_text(str(tmp_path / name), "x")
    (tmp_path / "tree" / "empty").mkdir()
    fs.remove_tree(str(tmp_path / "tree"))
    assert not (tmp_path / "tree").exists() and (tmp_path / "keep" / "c.txt").exists()
    fs.remove_tree(str(tmp_path / "keep" / "c.txt"))  # a file
    assert not (tmp_path / "keep" / "c.txt").exists()
    fs.remove_tree(str(tmp_path / "missing"))  # nothing there: no error
    os.symlink(tmp_path / "keep", tmp_path / "link")
    fs.remove_tree(str(tmp_path / "link"))  # the link, not the folder it points to
    assert not os.path.lexists(tmp_path / "link") and (tmp_path / "keep").is_dir()
    fs.write_text(str(tmp_path / "x.txt"), "x")
    fs.delete([str(tmp_path / "x.txt"), str(tmp_path / "never.txt")])  # missing ones are skipped
    assert not (tmp_path / "x.txt").exists()
    fs.delete([])


def test_remove_tree_remotely_removes_only_that_prefix(bucket):
    for name in ["out/a.txt", "out/sub/b.txt", "output/c.txt", "other/d.txt"]:
        fs.write_text(f"{bucket}/{name}", "x")
    fs.remove_tree(f"{bucket}/out")
    assert objects_under(bucket) == ["other/d.txt", "output/c.txt"]
    fs.remove_tree(f"{bucket}/nothing-here")  # no error
    fs.delete([f"{bucket}/output/c.txt", f"{bucket}/missing.txt"])
    assert objects_under(bucket) == ["other/d.txt"]


def test_remove_tree_remotely_removes_a_single_object(bucket):
    """A path naming one object (what fs.match returns, and what publish's `replace` lists) is removed too."""
    fs.write_text(f"{bucket}/out/per_video/gone.csv", "x")
    fs.write_text(f"{bucket}/out/per_video/gone.csv.bak", "kept")
    fs.remove_tree(f"{bucket}/out/per_video/gone.csv")
    assert objects_under(bucket) == ["out/per_video/gone.csv.bak"]


def test_copy_file_across_filesystems(tmp_path, bucket):
    content = os.urandom(3 * 1024) * 2
    (tmp_path / "src.bin").write_bytes(content)
    fs.copy_file(str(tmp_path / "src.bin"), f"{bucket}/up/src.bin")
    assert memfs.OBJECTS[f"{bucket}/up/src.bin"][0] == content
    fs.copy_file(f"{bucket}/up/src.bin", str(tmp_path / "new" / "folder" / "down.bin"))
    assert (tmp_path / "new" / "folder" / "down.bin").read_bytes() == content
    fs.copy_file(f"{bucket}/up/src.bin", f"{bucket}/up/again.bin")
    assert fs.read_bytes(f"{bucket}/up/again.bin") == content
    assert (tmp_path / "src.bin").exists() and fs.exists(f"{bucket}/up/src.bin")  # copies keep the source


def test_move_on_one_filesystem_replaces_and_makes_folders(tmp_path, bucket):
    fs.write_text(str(tmp_path / "s" / "a.txt"), "new a")
    fs.write_text(str(tmp_path / "s" / "b.txt"), "new b")
    fs.write_text(str(tmp_path / "d" / "a.txt"), "old a")
    fs.move([str(tmp_path / "s" / "a.txt"), str(tmp_path / "s" / "b.txt")],
            [str(tmp_path / "d" / "a.txt"), str(tmp_path / "d" / "deep" / "b.txt")])
    assert (tmp_path / "d" / "a.txt").read_text() == "new a"
    assert (tmp_path / "d" / "deep" / "b.txt").read_text() == "new b"
    assert os.listdir(tmp_path / "s") == []
    fs.write_text(f"{bucket}/s/a.txt", "remote a")
    fs.write_text(f"{bucket}/d/a.txt", "old remote a")
    fs.move([f"{bucket}/s/a.txt"], [f"{bucket}/d/a.txt"])
    assert fs.read_text(f"{bucket}/d/a.txt") == "remote a" and not fs.exists(f"{bucket}/s/a.txt")
    fs.move([], [])  # nothing to move: no error


def test_move_across_filesystems(tmp_path, bucket):
    fs.write_text(str(tmp_path / "up.txt"), "going up")
    fs.write_text(f"{bucket}/down.txt", "coming down")
    fs.write_text(str(tmp_path / "local.txt"), "staying local")
    fs.write_text(f"{bucket}/there.txt", "to be replaced")
    fs.move([str(tmp_path / "up.txt"), f"{bucket}/down.txt", str(tmp_path / "local.txt")],
            [f"{bucket}/there.txt", str(tmp_path / "landed" / "down.txt"), str(tmp_path / "moved.txt")])
    assert fs.read_text(f"{bucket}/there.txt") == "going up"
    assert (tmp_path / "landed" / "down.txt").read_text() == "coming down"
    assert (tmp_path / "moved.txt").read_text() == "staying local"
    assert not (tmp_path / "up.txt").exists() and not fs.exists(f"{bucket}/down.txt")
    assert not (tmp_path / "local.txt").exists()


def test_local_copy(tmp_path, bucket):
    local = str(tmp_path / "clip.avi")
    fs.write_bytes(local, b"local bytes")
    with fs.local_copy(local) as path:
        assert path == local  # a local path is used in place
    assert os.path.exists(local)
    fs.write_bytes(f"{bucket}/videos/clip.mp4", b"remote bytes")
    with fs.local_copy(f"{bucket}/videos/clip.mp4") as path:
        assert not fs.is_remote(path) and path.endswith(".mp4")
        with open(path, "rb") as f:
            assert f.read() == b"remote bytes"
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))  # scratch removed
    with fs.local_copy(f"{bucket}/videos/clip.mp4", suffix=".bin") as path:
        assert path.endswith("file.bin")
    with pytest.raises(RuntimeError, match="inside"):
        with fs.local_copy(f"{bucket}/videos/clip.mp4") as path:
            raise RuntimeError("inside")
    assert not os.path.exists(path)  # removed on an exception too
