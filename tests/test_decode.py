"""beam_jobs.decode: the launcher's video list, failure reasons, and DecodeFrames over generated clips."""

from __future__ import annotations

import hashlib
import os
import stat

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

import memfs
from beam_jobs.decode import (
    FAILURES,
    DecodeFrames,
    FrameOptions,
    ReadVideoList,
    file_kind,
    read_error,
)
from beam_jobs.matching import VideoRef, parse_ref, ref_line, write_listing
from common import fs
from tools.sample_videos import render_clip, write_clip
from video.frames import SampledFrames

TestPipeline.__test__ = False  # a Beam class, not a test class for pytest to collect

IMAGE_SIZE = 32
MAX_FRAMES = 6


def clip(path, num_frames: int, seed: int = 0) -> str:
    frames = render_clip("growing", np.random.default_rng(seed), num_frames, 48, 32)
    write_clip(str(path), frames, "MJPG")
    return str(path)


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_listing_lines_round_trip(tmp_path):
    refs = [VideoRef("Klasse/vidéo 1.avi", "/data/Klasse/vidéo 1.avi", "Klasse", 1234, 1700000000.5, "1:2:3"),
            VideoRef("gs://b/x.mp4", "gs://b/x.mp4"),
            VideoRef("broken.avi", "/data/broken.avi", "", -1, 0.0)]
    path = str(tmp_path / "inputs.jsonl")
    assert write_listing(iter(refs), path) == 3
    assert [parse_ref(line) for line in open(path, encoding="utf-8")] == refs
    assert write_listing(iter([]), path) == 0 and open(path).read() == ""


@pytest.mark.parametrize("where", ["local", "mem"])
def test_read_video_list_in_a_pipeline(where, tmp_path, bucket):
    refs = [VideoRef(f"v{i}.avi", f"/data/v{i}.avi", "a" if i % 2 else "b", i, float(i)) for i in range(7)]
    path = fs.join(str(tmp_path) if where == "local" else bucket, "staging/inputs.jsonl")
    fs.write_text(path, "".join(ref_line(r) for r in refs))
    with TestPipeline() as pipeline:
        assert_that(pipeline | ReadVideoList(path), equal_to(refs))


def test_read_error_reasons(tmp_path):
    os.symlink(tmp_path / "gone.avi", tmp_path / "link.avi")
    missing = FileNotFoundError(2, "No such file or directory")
    assert read_error(str(tmp_path / "link.avi"), missing) == "broken symbolic link (its target does not exist)"
    assert read_error(str(tmp_path / "plain.avi"), missing) == "file not found (removed after it was listed?)"
    assert read_error("x.avi", PermissionError(13, "Permission denied")) == "cannot read the file: permission denied"
    assert read_error("x.avi", IsADirectoryError(21, "Is a directory")) == "is a directory, not a video file"
    assert read_error("x.avi", OSError(5, "Input/output error")) == "cannot read the file: Input/output error"
    assert read_error("x.avi", OSError("stale handle")) == "cannot read the file: stale handle"


@pytest.mark.parametrize("mode, kind", [
    (stat.S_IFIFO, "a named pipe"),
    (stat.S_IFSOCK, "a socket"),
    (stat.S_IFCHR, "a device"),
    (stat.S_IFBLK, "a device"),
    (stat.S_IFDIR, "a directory"),
    (stat.S_IFLNK, "an unusual file type"),
])
def test_file_kind(mode, kind):
    assert file_kind(mode | 0o644) == kind


def test_decode_frames_splits_videos_and_failures(tmp_path, bucket):
    short = clip(tmp_path / "short.avi", 4, seed=1)
    long = clip(tmp_path / "long.avi", 15, seed=2)
    remote_source = clip(tmp_path / "upload.avi", 9, seed=3)
    remote = f"{bucket}/videos/remote.avi"
    fs.copy_file(remote_source, remote)
    (tmp_path / "notes.avi").write_text("this is a text file, not a video\n" * 4)
    (tmp_path / "empty.avi").write_bytes(b"")
    os.mkfifo(tmp_path / "pipe.avi")
    (tmp_path / "folder.avi").mkdir()
    refs = [
        VideoRef("short.avi", short, "a"),
        VideoRef("long.avi", long, "b"),
        VideoRef("remote.avi", remote, "a"),
        VideoRef("notes.avi", str(tmp_path / "notes.avi")),
        VideoRef("empty.avi", str(tmp_path / "empty.avi")),
        VideoRef("pipe.avi", str(tmp_path / "pipe.avi")),
        VideoRef("folder.avi", str(tmp_path / "folder.avi")),
        VideoRef("gone.avi", str(tmp_path / "gone.avi")),
    ]
    pipeline = TestPipeline()
    decoded = pipeline | beam.Create(refs) | DecodeFrames(FrameOptions(MAX_FRAMES, IMAGE_SIZE, decode_timeout_s=60))
    summary = decoded.videos | beam.Map(lambda v: (
        v.ref.video_id, v.ref.label, len(v.sampled.frame_indices), v.sampled.frames.shape, str(v.sampled.frames.dtype),
        v.sampled.decoded_frame_count, (v.sampled.frame_height, v.sampled.frame_width), v.fingerprint,
        v.features is None))
    assert_that(summary, equal_to([
        ("short.avi", "a", 4, (4, IMAGE_SIZE, IMAGE_SIZE, 3), "uint8", 4, (32, 48), sha256(short), True),
        ("long.avi", "b", MAX_FRAMES, (MAX_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3), "uint8", 15, (32, 48), sha256(long),
         True),
        ("remote.avi", "a", MAX_FRAMES, (MAX_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3), "uint8", 9, (32, 48),
         sha256(remote_source), True),
    ]), label="Videos")
    # Sampled frame indices rise from the first frame and stay within the clip.
    indices = decoded.videos | beam.Map(lambda v: (
        v.ref.video_id, v.sampled.frame_indices[0], v.sampled.frame_indices == sorted(set(v.sampled.frame_indices)),
        v.sampled.frame_indices[-1] < v.sampled.decoded_frame_count))
    assert_that(indices, equal_to([("short.avi", 0, True, True), ("long.avi", 0, True, True),
                                   ("remote.avi", 0, True, True)]), label="Indices")
    assert_that(decoded[FAILURES], equal_to([
        ("notes.avi", str(tmp_path / "notes.avi"), "cannot open as a video: the file holds text"),
        ("empty.avi", str(tmp_path / "empty.avi"), "empty file (0 bytes)"),
        ("pipe.avi", str(tmp_path / "pipe.avi"), "not a regular file (a named pipe)"),
        ("folder.avi", str(tmp_path / "folder.avi"), "not a regular file (a directory)"),
        ("gone.avi", str(tmp_path / "gone.avi"), "file not found (removed after it was listed?)"),
    ]), label="Failures")
    result = pipeline.run()
    result.wait_until_finish()

    def counter(name):  # a counter never incremented is not reported
        found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
        return found[0].committed if found else 0

    assert (counter("videos_decoded"), counter("videos_failed"), counter("frames_sampled")) == (3, 5, 4 + 6 + 6)
    assert counter("videos_read_seeking") + counter("videos_read_through") == 3
    assert memfs.OBJECTS[remote][0] == open(remote_source, "rb").read()  # the remote file is only read


def test_decoded_frames_are_the_clip_frames_cropped_and_resized(tmp_path):
    """The sampled frames are RGB, centre square crops of the clip: compare with the rendered frames."""
    import cv2

    frames = render_clip("fading_in", np.random.default_rng(5), 3, 48, 32)
    write_clip(str(tmp_path / "c.avi"), frames, "MJPG")
    with TestPipeline() as pipeline:
        decoded = (pipeline | beam.Create([VideoRef("c.avi", str(tmp_path / "c.avi"))])
                   | DecodeFrames(FrameOptions(MAX_FRAMES, IMAGE_SIZE, decode_timeout_s=60)))
        squares = [f[:, 8:40] for f in frames]  # 48x32: the centre 32x32
        expected = np.stack([cv2.cvtColor(cv2.resize(s, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA),
                                          cv2.COLOR_BGR2RGB) for s in squares]).astype(np.int16)
        # MJPG is lossy: a mean error of a few levels, nowhere near the other channel order's.
        errors = decoded.videos | beam.Map(lambda v, e: (
            v.sampled.frame_indices,
            bool(np.abs(v.sampled.frames.astype(np.int16) - e).mean() < 6),
            bool(np.abs(v.sampled.frames[..., ::-1].astype(np.int16) - e).mean() > np.abs(
                v.sampled.frames.astype(np.int16) - e).mean())), expected)
        assert_that(errors, equal_to([([0, 1, 2], True, True)]))


def test_reads_that_gave_up_seeking_are_counted(tmp_path, monkeypatch):
    """Each video counts once under how it was read; a fallback (video.reader) counts in its own counter."""
    import video.isolated

    methods = {"a.avi": "seek", "b.avi": "fallback", "c.avi": "through", "d.avi": "fallback"}

    class Decoder:
        def __init__(self, timeout_s, decoder_threads=0):
            pass

        def decode(self, path, max_seq_length, image_size, sampling):
            return SampledFrames(np.zeros((1, 2, 2, 3), np.uint8), [0], 1, 25.0, 2, 2,
                                 read_method=methods[os.path.basename(path)], fallback_reason="test")

        def close(self):
            pass

    monkeypatch.setattr(video.isolated, "IsolatedDecoder", Decoder)
    refs = []
    for name in methods:
        (tmp_path / name).write_bytes(b"not empty")
        refs.append(VideoRef(name, str(tmp_path / name)))
    pipeline = TestPipeline()
    _ = pipeline | beam.Create(refs) | DecodeFrames(FrameOptions(MAX_FRAMES, IMAGE_SIZE))
    result = pipeline.run()
    result.wait_until_finish()
    counts = {c.key.metric.name: c.committed for c in result.metrics().query(MetricsFilter())["counters"]}
    assert (counts["videos_read_seeking"], counts["videos_read_through"], counts["videos_seek_fallbacks"]) == (1, 1, 2)
