"""The labelling job on a schedule, tried as an adversarial user would: overlapping runs, a killed holder,
a full disk, broken model files, an output that is a file, a partial previous output, Ctrl-C, edits that
keep size and modification time. Each fault ends in one line and a stated exit status, and leaves nothing
finished-looking (README: "Running on a schedule").

The jobs run as users run them, `python -m beam_jobs.predict` in child processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_csv
from test_report import make_model_dir, write_clips

REPO = Path(__file__).resolve().parents[1]
PREDICT = [sys.executable, "-m", "beam_jobs.predict", "--runner", "DirectRunner", "--batch-size", "8"]
TIMEOUT_S = 300


def predict_command(clips, model, output, *extra) -> list[str]:
    return [*PREDICT, "--input", str(clips), "--model", str(model), "--output", str(output), *map(str, extra)]


def start(command) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    # An ignored SIGINT is inherited across exec, and Python then installs no KeyboardInterrupt handler: give
    # the job the default disposition whatever this process has.
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=TIMEOUT_S)
    return process.returncode, err


def run(command) -> tuple[int, str]:
    return finish(start(command))


def last_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_one_line_failure(err: str, status: int, expected_status: int, prefix: str) -> None:
    assert status == expected_status, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert last_line(err).startswith(prefix), err[-3000:]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes (staging and lease files included, by their names)."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def index_of(output: Path) -> dict[str, dict]:
    """The labelling run's index entries (its index-*-of-*.jsonl shards), by video id."""
    return {e["video_id"]: e for shard in sorted(output.glob("index-*-of-*.jsonl"))
            for e in map(json.loads, shard.read_text().splitlines())}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".staging-", ".lease")))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("safety_model") / "model")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("safety_clips"), per_class=1, seed=8)


@pytest.fixture(scope="module")
def finished(clips, model_dir, tmp_path_factory) -> Path:
    """One finished run over `clips`; tests copy it before changing anything."""
    output = tmp_path_factory.mktemp("safety_finished") / "labels"
    status, err = run(predict_command(clips, model_dir, output))
    assert status == 0, err[-3000:]
    return output


@pytest.mark.parametrize("runs", [2, 3])
def test_overlapping_runs_one_publishes_the_others_are_skipped(runs, clips, model_dir, tmp_path):
    output = tmp_path / "labels"
    processes = [start(predict_command(clips, model_dir, output)) for _ in range(runs)]
    results, finished_order = {}, []
    while len(results) < runs:
        for i, process in enumerate(processes):
            if i not in results and process.poll() is not None:
                results[i] = finish(process)
                finished_order.append(i)
        time.sleep(0.1)
    winners = [i for i, (status, _) in results.items() if status == 0]
    assert len(winners) == 1, {i: (s, last_line(e)) for i, (s, e) in results.items()}
    for i, (status, err) in results.items():
        if i != winners[0]:
            assert_one_line_failure(err, status, 75, f"skipped: {output} is being written by another run (host ")
            assert "pid " in last_line(err) and "since " in last_line(err)
    assert finished_order[-1] == winners[0]  # the skipped runs did not wait for the winner
    assert len(read_csv(output / "labels.csv")) == 3
    assert json.loads((output / "manifest.json").read_text())["videos_labelled"] == 3
    assert leftovers(output) == []


def wait_for(predicate, process: subprocess.Popen, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert process.poll() is None, f"the run ended before {what}: {finish(process)[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.05)


def test_a_killed_holders_lease_expires_and_the_next_run_completes(clips, model_dir, tmp_path):
    output = tmp_path / "labels"
    holder = start(predict_command(clips, model_dir, output, "--lease-ttl", "4"))
    wait_for(lambda: output.exists() and any(p.name.startswith(".staging-") for p in output.iterdir()), holder,
             "staging")
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (output / ".lease.json").exists() and not (output / "manifest.json").exists()
    # Within the lease's time the output stays the dead run's; then the next run takes over and completes.
    for _ in range(5):
        status, err = run(predict_command(clips, model_dir, output, "--lease-ttl", "4"))
        if status != 75:
            break
        time.sleep(4)
    assert status == 0, err[-3000:]
    assert "taking over the lease of a run that stopped renewing it" in err
    assert len(read_csv(output / "labels.csv")) == 3 and leftovers(output) == []


def _decoder_started(parent: int) -> bool:
    """Whether `parent` has started its frame decoder child (multiprocessing's spawn): the pipeline runs."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"multiprocessing" in cmdline:
            return True
    return False


def test_ctrl_c_ends_with_one_line_and_exit_130_and_leaves_nothing(clips, model_dir, tmp_path):
    output = tmp_path / "labels"
    process = start(predict_command(clips, model_dir, output))
    wait_for(lambda: output.exists() and any(p.name.startswith(".staging-") for p in output.iterdir()), process,
             "staging")
    # Interrupt once the pipeline runs: while Beam tries its Prism runner first (offline, it falls back), an
    # interrupt can be taken as that attempt's failure and lost.
    wait_for(lambda: _decoder_started(process.pid), process, "the frame decoder")
    os.kill(process.pid, signal.SIGINT)
    status, err = finish(process)
    assert_one_line_failure(err, status, 130, "interrupted: nothing was published")
    assert tree(output) == {}  # no staging, no lease, no manifest


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_a_full_disk_is_one_line_and_the_previous_output_is_kept(clips, model_dir, finished, tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("cannot mount a tmpfs here (needs root); tests/test_cli.py covers ENOSPC's mapping")
    try:
        output = disk / "labels"
        shutil.copytree(finished, output)
        before = tree(output)
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        with open(disk / "filler", "wb") as filler:  # leave room for the lease, not for a new report
            filler.write(b"\0" * max(free - 16 * 1024, 0))
        status, err = run(predict_command(clips, model_dir, output, "--overwrite"))
        assert_one_line_failure(err, status, 74, "error: disk full")
        assert tree(output) == before  # byte for byte, and no staging or lease left behind
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_broken_model_files_are_one_line_each(clips, model_dir, tmp_path):
    cases = {}
    for case in ("garbage", "truncated", "missing"):
        broken = tmp_path / case
        shutil.copytree(model_dir, broken)
        keras_file = broken / "model.keras"
        data = keras_file.read_bytes()
        if case == "garbage":
            middle = len(data) // 2
            keras_file.write_bytes(data[:middle] + os.urandom(4096) + data[middle + 4096:])
        elif case == "truncated":
            keras_file.write_bytes(data[: len(data) // 2])
        else:
            keras_file.unlink()
        cases[case] = start(predict_command(clips, broken, tmp_path / f"out_{case}"))
    for case, process in cases.items():
        status, err = finish(process)
        if case == "missing":
            assert_one_line_failure(err, status, 2, f"error: {tmp_path / case} is not a model directory")
        else:
            assert_one_line_failure(err, status, 65, f"error: {tmp_path / case / 'model.keras'} is corrupt or truncated")
        assert not (tmp_path / f"out_{case}").exists()


def test_an_output_that_is_a_file_is_one_line(clips, model_dir, tmp_path):
    output = tmp_path / "labels"
    output.write_text("not a folder\n")
    status, err = run(predict_command(clips, model_dir, output))
    assert_one_line_failure(err, status, 73, f"error: --output {output} exists and is not a directory")
    assert output.read_text() == "not a folder\n"


def test_a_partial_previous_output_is_labelled_again_with_a_warning(clips, model_dir, finished, tmp_path):
    output = tmp_path / "labels"
    shutil.copytree(finished, output)
    (output / "labels.csv").unlink()
    status, err = run(predict_command(clips, model_dir, output))
    assert status == 0, err[-3000:]
    assert "is incomplete (no labels.csv): labelling every video again" in err
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["labelled_this_run"] == 3 and len(read_csv(output / "labels.csv")) == 3


def write_raw_avi(path: Path, frames) -> None:
    """Uncompressed video: the file size depends on the frame count and size only, not on what they show."""
    import cv2

    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), 0, 25.0, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()


def test_an_in_place_edit_that_keeps_size_and_mtime_is_relabelled(clips, model_dir, tmp_path):
    import numpy as np

    from tools.sample_videos import render_clip

    local = tmp_path / "clips"
    shutil.copytree(clips, local)
    frames = render_clip("growing", np.random.default_rng(3), 10, 64, 48)
    target, edited = local / "raw" / "clip.avi", tmp_path / "reversed.avi"
    target.parent.mkdir()
    write_raw_avi(target, frames)
    write_raw_avi(edited, frames[::-1])  # the same frames the other way round: same size, other content
    output = tmp_path / "labels"
    status, err = run(predict_command(local, model_dir, output))
    assert status == 0, err[-3000:]
    before = {row["video_id"]: row for row in read_csv(output / "labels.csv")}
    info, content = target.stat(), edited.read_bytes()
    assert len(content) == info.st_size and content != target.read_bytes()
    with open(target, "r+b") as f:  # in place, like rsync --inplace
        f.write(content)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))  # and its modification time put back (-t)
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (info.st_size, info.st_mtime_ns)
    status, err = run(predict_command(local, model_dir, output))
    assert status == 0, err[-3000:]
    manifest = json.loads((output / "manifest.json").read_text())
    assert (manifest["labelled_this_run"], manifest["reused_from_previous_run"], manifest["failures"]) == (1, 3, 0)
    assert index_of(output)["raw/clip.avi"]["fingerprint"] == hashlib.sha256(content).hexdigest()
    # Its row is the edited video's: the frames the other way round give the model other probabilities. The
    # other rows are the first run's.
    after = {row["video_id"]: row for row in read_csv(output / "labels.csv")}
    probabilities = [column for column in after["raw/clip.avi"] if column.startswith("p_")]
    assert probabilities and set(after) == set(before)
    assert [after["raw/clip.avi"][p] for p in probabilities] != [before["raw/clip.avi"][p] for p in probabilities]
    assert all(after[video] == before[video] for video in before if video != "raw/clip.avi")


def test_verify_reads_every_video_and_catches_a_changed_fingerprint(clips, model_dir, finished, tmp_path):
    output = tmp_path / "labels"
    shutil.copytree(finished, output)
    (shard,) = output.glob("index-*-of-*.jsonl")
    entries = [json.loads(line) for line in shard.read_text().splitlines()]
    entries[0]["fingerprint"] = "0" * 64  # what the listing cannot see: the content is not what was labelled
    shard.write_text("".join(json.dumps(e) + "\n" for e in entries))
    status, err = run(predict_command(clips, model_dir, output))  # trusts the listing: nothing to do
    assert status == 0, err[-3000:]
    assert json.loads((output / "manifest.json").read_text())["labelled_this_run"] == 0
    status, err = run(predict_command(clips, model_dir, output, "--verify"))
    assert status == 0, err[-3000:]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["labelled_this_run"] == 1 and manifest["reused_from_previous_run"] == 2
    index = index_of(output)
    path = Path(index[entries[0]["video_id"]]["uri"])
    assert index[entries[0]["video_id"]]["fingerprint"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_predict_features_into_a_finished_output_needs_overwrite(model_dir, finished, tmp_path):
    output = tmp_path / "labels"
    shutil.copytree(finished, output)
    before = tree(output)
    records = tmp_path / "features-00000-of-00001.tfrecord"
    write_record(records)
    status, err = run([*PREDICT, "--features", str(records), "--model", str(model_dir), "--output", str(output)])
    assert_one_line_failure(err, status, 2, f"error: {output} already holds a finished run (manifest.json); "
                                            "pass --overwrite")
    assert tree(output) == before
    status, err = run([*PREDICT, "--features", str(records), "--model", str(model_dir), "--output", str(output),
                       "--overwrite"])
    assert status == 0, err[-3000:]
    assert [row["video_id"] for row in read_csv(output / "labels.csv")] == ["from/records.avi"]


def test_predict_features_with_one_video_in_two_record_files_is_one_line(model_dir, tmp_path):
    for name in ("features-00000-of-00002.tfrecord", "features-00001-of-00002.tfrecord"):
        write_record(tmp_path / "records" / name)  # the same video, featurized into two sets
    output = tmp_path / "labels"
    status, err = run([*PREDICT, "--features", str(tmp_path / "records"), "--model", str(model_dir), "--output",
                       str(output)])
    expected = ("error: video id 'from/records.avi' is in 2 feature records (from /nowhere/from/records.avi): "
                "give --features records that hold each video once")
    assert_one_line_failure(err, status, 2, expected)
    assert last_line(err) == expected  # not the Beam step it was raised in
    assert not output.exists()


def write_record(path: Path) -> None:
    import numpy as np
    import tensorflow as tf

    from test_report import FRAMES, IMAGE_SIZE
    from tfrecords_schema import VideoRecord, encode_video_record

    record = VideoRecord(video_id="from/records.avi", uri="/nowhere/from/records.avi", label="",
                         features=np.full((FRAMES, 1024), 0.5, np.float32), num_valid_frames=2,
                         frame_indices=[0, 5], source_fps=25.0, decoded_frame_count=10, frame_height=48,
                         frame_width=64, backbone_id="densenet121/random-seed1337", image_size=IMAGE_SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(encode_video_record(record))


def test_a_folder_of_the_users_own_files_is_refused_and_nothing_of_theirs_is_removed(clips, model_dir, tmp_path):
    """Issue 39, finding 3, as a new user tried it: predict into a folder of their own files."""
    output = tmp_path / "music"
    own = {"tracks/song1.flac": b"fLaC", "per_video/notes.txt": b"notes", "thumbnails/holiday.jpg": b"\xff\xd8",
           "README.txt": b"my folder", "labels.csv": b"song,mood\nsong1,happy\n"}
    for name, data in own.items():
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_bytes(data)
    status, err = run(predict_command(clips, model_dir, output))
    assert_one_line_failure(err, status, 2, f"error: --output {output} holds files this program did not write (")
    assert tree(output) == own
    # --overwrite: its own names are replaced (labels.csv), nothing else of the user's is removed.
    status, err = run(predict_command(clips, model_dir, output, "--overwrite"))
    assert status == 0, err[-3000:]
    kept = {name: data for name, data in own.items() if name != "labels.csv"}
    assert kept.items() <= tree(output).items() and len(read_csv(output / "labels.csv")) == 3
    # An incremental run removes only what the manifest names: still nothing of the user's.
    status, err = run(predict_command(clips, model_dir, output))
    assert status == 0, err[-3000:]
    assert kept.items() <= tree(output).items() and leftovers(output) == []
