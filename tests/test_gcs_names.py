"""Odd object names on gs:// (against the Cloud Storage emulator of tests/test_gcs.py): object names may hold
`..` and `.` parts, tabs and spreadsheet formulas, and the video id keeps them. predict into a local output and
into a gs:// one: the ids read back exactly, the per-video files, thumbnails and tracks get names that cannot
leave the output, and when such a video is removed its files go and nothing outside the output does."""

from __future__ import annotations

import csv
import io
import os
import urllib.parse
from pathlib import Path

import pytest

from test_gcs import BUCKET, JOB_TIMEOUT_S, gcs  # noqa: F401 (the emulator fixture, one for this module)
from test_names import FORMULA, PER_VIDEO, mirrored_files, read_csv, tree, unsafe_paths, write_named_clips
from test_report import make_model_dir

NAMES = ("../../escape/evil.avi", "./dot.avi", "tab\there.avi", FORMULA, "plain.avi")
PREFIX = "odd/in/"


@pytest.fixture(scope="module")
def odd_bucket(gcs, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    """The clips uploaded as gs://BUCKET/odd/in/<name>, and a model directory (local)."""
    root = write_named_clips(tmp_path_factory.mktemp("gcs_odd"), [f"clip{i}.avi" for i in range(len(NAMES))], seed=3)
    for i, name in enumerate(NAMES):
        gcs.bucket.upload(PREFIX + name, (root / f"clip{i}.avi").read_bytes())
    assert gcs.bucket.list(PREFIX) == sorted(PREFIX + name for name in NAMES)  # the emulator keeps them as named
    return make_model_dir(tmp_path_factory.mktemp("gcs_odd_model") / "model")


def predict(gcs, model: Path, *outputs: str):  # noqa: F811
    """One predict run into each of `outputs`, all at once."""
    runs = [gcs.start("beam_jobs.predict", "--input", f"gs://{BUCKET}/{PREFIX}", "--model", str(model), "--output",
                      output, "--per-video", "--segments", "0.5", "--runner", "DirectRunner", "--batch-size", "8")
            for output in outputs]
    for run in runs:
        _, err = run.communicate(timeout=JOB_TIMEOUT_S)
        assert run.returncode == 0, err[-4000:]


def delete_object(gcs, name: str) -> None:  # noqa: F811
    gcs.bucket._request("DELETE", f"/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe='')}")


def test_odd_object_names_into_local_and_gcs_outputs(gcs, odd_bucket, tmp_path):  # noqa: F811
    world = tmp_path / "world"
    local = world / "job" / "out"
    world.mkdir()
    before = tree(world)
    predict(gcs, odd_bucket, str(local), f"gs://{BUCKET}/odd-out")

    assert [r["video_id"] for r in read_csv(local / "labels.csv")] == sorted(NAMES)
    assert read_csv(local / "failures.csv") == []
    assert tree(world, skip=local) == before  # nothing written outside the output
    for name in NAMES:
        assert all(path.is_file() for path in mirrored_files(local, name)), name
    assert (local / "per_video" / "%2E%2E" / "%2E%2E" / "escape" / "evil.avi.csv").is_file()
    assert (local / "thumbnails" / "%2E" / "dot.avi.jpg").is_file()
    assert all(local not in path.parents for path in unsafe_paths(local, NAMES[0]))  # where the raw id would go

    remote = gcs.bucket.list("odd-out/")
    assert not [n for n in remote if {"..", "."} & set(n.split("/")) or "\t" in n]
    rows = list(csv.DictReader(io.StringIO(gcs.bucket.text("odd-out/labels.csv"), newline="")))
    assert [r["video_id"] for r in rows] == sorted(NAMES)
    local_names = sorted(p.relative_to(local).as_posix() for folder in PER_VIDEO for p in (local / folder).rglob("*")
                         if p.is_file())
    assert sorted(n[len("odd-out/"):] for n in remote if n.split("/")[1] in PER_VIDEO) == local_names

    # The ..-named video is removed from the bucket: its files go, and a user's files where the raw id points
    # (locally; on gs:// other objects of the bucket) stay.
    for path in unsafe_paths(local, NAMES[0]):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("the user's own file")
    for folder, ext in PER_VIDEO.items():
        gcs.bucket.upload(f"{folder}-escape/evil.avi{ext}", b"another user's object")
    delete_object(gcs, PREFIX + NAMES[0])
    decoys, objects = tree(world, skip=local), gcs.bucket.list("")
    predict(gcs, odd_bucket, str(local), f"gs://{BUCKET}/odd-out")
    assert [r["video_id"] for r in read_csv(local / "labels.csv")] == sorted(NAMES[1:])
    assert not [path for path in mirrored_files(local, NAMES[0]) if path.exists()]
    assert tree(world, skip=local) == decoys
    gone = {f"odd-out/{os.path.relpath(path, local)}" for path in mirrored_files(local, NAMES[0])}
    assert gone <= set(objects) and not gone & set(gcs.bucket.list(""))
    assert [n for n in gcs.bucket.list("") if not n.startswith(("odd-out/", "odd/in/"))] == [
        n for n in objects if not n.startswith(("odd-out/", "odd/in/"))]
