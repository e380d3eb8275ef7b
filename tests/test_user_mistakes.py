"""User mistakes through the command line: one clear line on stderr, exit status 2, and nothing written.

Each case runs the real entry point (`python -m beam_jobs.featurize` / `beam_jobs.predict`) in a subprocess.
They start together, since each spends most of its time importing TensorFlow and Beam.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tools.sample_videos import render_clip, write_clip

FRAMES, IMAGE_SIZE = 4, 32
BACKBONE = "densenet121/random-seed1337"

# TensorFlow 2.21's native libraries print these on import and on first use, before (or regardless of)
# TF_CPP_MIN_LOG_LEVEL (tensorflow/tensorflow#100442). They are not the job's words; any other line is.
TENSORFLOW_NATIVE_NOTES = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:.]+ +\d+ (cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics)\.cc:\d+\] .*")


def stderr_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not TENSORFLOW_NATIVE_NOTES.fullmatch(line)]


def snapshot(path) -> dict:
    """Every file and folder under `path` with its size and modification time (empty when absent)."""
    found = {}
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(folder, name)
            info = os.lstat(full)
            found[os.path.relpath(full, path)] = (info.st_size, info.st_mtime_ns)
    return found


def record_file(path, num_frames: int, backbone_id: str) -> None:
    """One feature record of `num_frames` frames from `backbone_id`, as another featurize run would write."""
    import tensorflow as tf

    from tfrecords_schema import VideoRecord, encode_video_record

    record = VideoRecord(video_id="a/v.avi", uri="/data/a/v.avi", label="a",
                         features=np.ones((num_frames, 1024), np.float32), num_valid_frames=num_frames,
                         frame_indices=list(range(num_frames)), source_fps=25.0, decoded_frame_count=num_frames,
                         frame_height=48, frame_width=64, backbone_id=backbone_id, image_size=IMAGE_SIZE)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(encode_video_record(record))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Inputs for every mistake: clips, labels CSVs, a model directory, one without its model, records."""
    import keras

    from model.classifier import ClassifierConfig, build_classifier
    from model.export import export_model_dir
    from tfrecords_schema import RecordSpec

    root = tmp_path_factory.mktemp("mistakes")
    videos = root / "videos"
    for label in ("a", "b"):
        (videos / label).mkdir(parents=True)
        frames = render_clip("growing", np.random.default_rng(len(label)), 12, 64, 48)
        write_clip(str(videos / label / "v.avi"), frames, "MJPG")
    (root / "unknown_columns.csv").write_text("name,label\nv.avi,a\n")
    (root / "ghost_videos.csv").write_text("video_name,tag\na/v.avi,a\nb/v.avi,b\nmissing.avi,b\n")

    keras.utils.set_random_seed(0)
    model = build_classifier(ClassifierConfig(num_classes=2, max_seq_length=FRAMES))
    export_model_dir(model, ["a", "b"], RecordSpec(1024, FRAMES, BACKBONE, IMAGE_SIZE), str(root / "model"),
                     saved_model=False)
    incomplete = root / "incomplete_model"
    incomplete.mkdir()
    for name in ("labels.txt", "preprocessing.json"):
        (incomplete / name).write_bytes((root / "model" / name).read_bytes())
    (root / "records").mkdir()
    record_file(root / "records" / "other_run.tfrecord", 6, "densenet121/imagenet")
    (root / "other.weights.h5").write_bytes(b"the weights of another DenseNet121")

    finished = root / "finished"
    finished.mkdir()
    (finished / "manifest.json").write_text('{"job": "featurize"}\n')
    (finished / "features-00000-of-00001.tfrecord").write_bytes(b"records of an earlier run")
    return root


FEATURIZE = [sys.executable, "-m", "beam_jobs.featurize", "--weights", "random", "--runner", "DirectRunner"]
PREDICT = [sys.executable, "-m", "beam_jobs.predict", "--runner", "DirectRunner"]

# name -> (command, with {root} for the workspace; the expected error line, a regular expression)
CASES = {
    "missing input": (
        FEATURIZE + ["--input", "{root}/no_such_folder", "--output", "{root}/out"],
        r"error: input {root}/no_such_folder does not exist"),
    "glob matching nothing": (
        FEATURIZE + ["--input", "{root}/videos/*/*.mkv", "--output", "{root}/out"],
        r"error: input {root}/videos/\*/\*\.mkv matches no video files \(extensions: \.avi \.mp4 .*\)"),
    "finished output": (
        FEATURIZE + ["--input", "{root}/videos", "--output", "{root}/finished"],
        r"error: {root}/finished already holds a finished run \(manifest\.json\); pass --overwrite to replace it"),
    "labels with unknown columns": (
        FEATURIZE + ["--input", "{root}/videos", "--output", "{root}/out", "--labels", "{root}/unknown_columns.csv"],
        r"error: labels CSV {root}/unknown_columns\.csv must have exactly the columns video_name,tag; "
        r"found name,label"),
    "labels naming missing videos": (
        FEATURIZE + ["--input", "{root}/videos", "--output", "{root}/out", "--labels", "{root}/ghost_videos.csv"],
        r"error: the labels CSV names 1 video\(s\) not found in the inputs: missing\.avi"),
    "model directory missing files": (
        PREDICT + ["--input", "{root}/videos", "--model", "{root}/incomplete_model", "--output", "{root}/out"],
        r"error: {root}/incomplete_model is not a model directory: it has no model\.keras"),
    "features of another frame count and backbone": (
        PREDICT + ["--features", "{root}/records/other_run.tfrecord", "--model", "{root}/model",
                   "--output", "{root}/out"],
        r"error: the feature records do not match the model: max_seq_length 6 \(expected 4\); "
        r"backbone_id 'densenet121/imagenet' \(expected '{backbone}'\)"),
    "weights of another backbone than the model's": (
        PREDICT + ["--input", "{root}/videos", "--model", "{root}/model", "--weights", "{root}/other.weights.h5",
                   "--output", "{root}/out"],
        r"error: --weights {root}/other\.weights\.h5 gives backbone densenet121/file-[0-9a-f]+, the model needs "
        r"{backbone}"),
}


@pytest.fixture(scope="module")
def outcomes(workspace):
    """name -> (exit status, stderr, files under the output before, after); all cases run at once."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def run(command):
        argv = [part.format(root=workspace) for part in command]
        output = argv[argv.index("--output") + 1]
        before = snapshot(output)
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        return done.returncode, done.stderr, before, snapshot(output), output

    with ThreadPoolExecutor(max_workers=min(len(CASES), os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(run, command) for name, (command, _) in CASES.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_mistake_is_one_line_exit_2_and_writes_nothing(case, workspace, outcomes):
    code, stderr, before, after, output = outcomes[case]
    expected = CASES[case][1].format(root=re.escape(str(workspace)), backbone=re.escape(BACKBONE))
    lines = stderr_lines(stderr)
    assert len(lines) == 1, stderr
    assert re.fullmatch(expected, lines[0]), lines[0]
    assert code == 2
    assert after == before
    if case != "finished output":
        assert not os.path.exists(output)

