"""Tests for tools.sample_videos: order-only classes, exact pair reversal, decodable files, the CLI."""

from __future__ import annotations

import colorsys
import csv
import dataclasses
import logging
import os

import cv2
import numpy as np
import pytest

from tools import sample_videos as sv

SMALL_SIZES = ((64, 48), (48, 64))


def _decode(path: str) -> np.ndarray:
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def _quiet_params(label: str, seed: int, num_frames: int = 30, width: int = 160, height: int = 120):
    """Scene params without noise or texture, so the shape can be measured exactly."""
    params = sv.sample_clip_params(label, np.random.default_rng(seed), num_frames, width, height)
    return dataclasses.replace(params, noise_sigma=0.0, texture="flat")


def test_class_names_are_the_three_order_pairs():
    assert sv.CLASSES == ("growing", "shrinking", "fading_in", "fading_out", "hue_forward", "hue_backward")
    assert sv.ORDER_FREE_CLASSES == ("static", "flicker")
    assert not set(sv.CLASSES) & set(sv.ORDER_FREE_CLASSES)
    for forward, backward in sv.ORDER_PAIRS:
        assert sv.REVERSE_CLASS[forward] == backward and sv.REVERSE_CLASS[backward] == forward


@pytest.mark.parametrize("width,height", [(96, 72), (176, 144), (48, 64)])
def test_render_clip_shape_and_dtype(width, height):
    frames = sv.render_clip("hue_forward", np.random.default_rng(0), 17, width, height)
    assert frames.shape == (17, height, width, 3)
    assert frames.dtype == np.uint8


def test_same_seed_same_frames_and_different_seed_different_frames():
    for label in sv.CLASSES + sv.ORDER_FREE_CLASSES:
        first = sv.render_clip(label, np.random.default_rng(7), 12, 64, 48)
        again = sv.render_clip(label, np.random.default_rng(7), 12, 64, 48)
        other = sv.render_clip(label, np.random.default_rng(8), 12, 64, 48)
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)


@pytest.mark.parametrize("forward,backward", sv.ORDER_PAIRS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_classes_are_exact_reverses(forward, backward, seed):
    forward_rng, backward_rng = np.random.default_rng(seed), np.random.default_rng(seed)
    forward_frames = sv.render_clip(forward, forward_rng, 20, 96, 72)
    backward_frames = sv.render_clip(backward, backward_rng, 20, 96, 72)
    np.testing.assert_array_equal(backward_frames, forward_frames[::-1])
    assert not np.array_equal(forward_frames, forward_frames[::-1])
    # Both labels consume the generator identically, so clips drawn after them stay paired too.
    assert forward_rng.integers(2**62) == backward_rng.integers(2**62)


@pytest.mark.parametrize("seed", range(5))
def test_fading_in_brightens_and_fading_out_darkens(seed):
    frames = sv.render_clip("fading_in", np.random.default_rng(seed), 40, 96, 72)
    brightness = frames.reshape(len(frames), -1).mean(axis=1)
    assert brightness[-1] - brightness[0] > 20
    assert np.corrcoef(np.arange(len(brightness)), brightness)[0, 1] > 0.98
    assert np.mean(np.diff(brightness) > 0) > 0.9

    fading_out = sv.render_clip("fading_out", np.random.default_rng(seed), 40, 96, 72)
    out_brightness = fading_out.reshape(len(fading_out), -1).mean(axis=1)
    np.testing.assert_allclose(out_brightness, brightness[::-1])


@pytest.mark.parametrize("seed", range(5))
def test_growing_shape_area_grows(seed):
    frames = sv.render_frames(_quiet_params("growing", seed)).astype(np.int16)
    background = np.median(frames[0].reshape(-1, 3), axis=0)  # the shape starts small
    area = (np.abs(frames - background).max(axis=-1) > 30).sum(axis=(1, 2))
    assert area[-1] > 8 * area[0] > 0
    assert np.all(np.diff(area) >= -2)  # anti-aliasing and drift may cost a pixel or two


@pytest.mark.parametrize("seed", range(5))
def test_hue_forward_turns_the_shape_colour_forward(seed):
    params = _quiet_params("hue_forward", seed)
    frames = sv.render_frames(params)
    # The centre drifts by a few pixels at most, and the shape's half-size is far larger.
    x, y = int(params.centre[0]), int(params.centre[1])
    hues = np.unwrap([colorsys.rgb_to_hsv(*(frame[y, x, ::-1] / 255.0))[0] * 2 * np.pi
                      for frame in frames])
    turned = np.degrees(hues[-1] - hues[0])
    assert turned == pytest.approx(params.hue_end - params.hue_start, abs=6)
    assert 144 <= turned <= 246
    assert np.all(np.diff(hues) > 0)
    # Always from red (within 20 degrees, plus rounding) towards the cool end, never across red.
    start = (np.degrees(hues[0]) + 180.0) % 360.0 - 180.0
    assert -26 <= start <= 26


@pytest.mark.parametrize("label", sv.CLASSES)
def test_order_classes_change_the_globally_pooled_colour(label):
    # Global average pooling of raw pixels stands in for DenseNet's: the change must not average away.
    for seed in range(4):
        frames = sv.render_clip(label, np.random.default_rng(seed), 24, 96, 72).astype(np.float32)
        pooled = frames.mean(axis=(1, 2))
        assert np.linalg.norm(pooled[-1] - pooled[0]) > 10


def test_static_class_keeps_the_pooled_colour():
    frames = sv.render_clip("static", np.random.default_rng(0), 24, 96, 72).astype(np.float32)
    pooled = frames.mean(axis=(1, 2))
    assert np.abs(pooled - pooled[0]).max() < 2.5


@pytest.mark.parametrize("fourcc,extension", sorted(sv.CODEC_EXTENSIONS.items()))
def test_write_clip_decodes_back(tmp_path, fourcc, extension):
    frames = sv.render_clip("growing", np.random.default_rng(3), 15, 96, 72)
    path = str(tmp_path / f"clip{extension}")
    sv.write_clip(path, frames, fourcc)
    decoded = _decode(path)
    assert decoded.shape == frames.shape
    # Lossy, but close: the codecs keep each frame's mean colour.
    assert np.abs(decoded.mean(axis=(1, 2)) - frames.mean(axis=(1, 2))).max() < 4
    assert os.listdir(tmp_path) == [f"clip{extension}"]


def test_write_clip_rejects_bad_frames_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="even"):
        sv.write_clip(str(tmp_path / "odd.mp4"), np.zeros((3, 73, 97, 3), np.uint8))
    with pytest.raises(ValueError, match=r"uint8 \[frames, height, width, 3\]"):
        sv.write_clip(str(tmp_path / "float.mp4"), np.zeros((3, 72, 96, 3), np.float32))
    with pytest.raises(sv.CodecUnavailableError, match="ABCD"):
        sv.write_clip(str(tmp_path / "bogus.mp4"), np.zeros((3, 72, 96, 3), np.uint8), "ABCD")
    assert os.listdir(tmp_path) == []


def test_write_sample_set_files_labels_and_decoding(tmp_path):
    written = sv.write_sample_set(str(tmp_path), per_class=2, seed=0, min_frames=10, max_frames=14,
                                  sizes=SMALL_SIZES)
    assert len(written) == 12
    assert written == sorted(written)
    assert sorted({label for _, label in written}) == sorted(sv.CLASSES)
    for relative_path, label in written:
        assert relative_path.startswith(f"{label}/{label}_000")
        assert os.path.splitext(relative_path)[1] in {".mp4", ".avi"}

    with open(tmp_path / "labels.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["video_name", "tag"]
    assert [tuple(row) for row in rows[1:]] == written

    video_files = sorted(os.path.relpath(os.path.join(root, name), tmp_path).replace(os.sep, "/")
                         for root, _, names in os.walk(tmp_path) for name in names if name != "labels.csv")
    assert video_files == [path for path, _ in written]

    decoded = {path: _decode(str(tmp_path / path)) for path, _ in written}
    for path, frames in decoded.items():
        assert 10 <= len(frames) <= 14
        assert (frames.shape[2], frames.shape[1]) in SMALL_SIZES
    # Clip i of a class and of its reverse share length, size and codec.
    for forward, backward in sv.ORDER_PAIRS:
        for index in range(2):
            forward_path = next(p for p, _ in written if p.startswith(f"{forward}/{forward}_{index:04d}"))
            backward_path = next(p for p, _ in written if p.startswith(f"{backward}/{backward}_{index:04d}"))
            assert os.path.splitext(forward_path)[1] == os.path.splitext(backward_path)[1]
            assert decoded[forward_path].shape == decoded[backward_path].shape


def test_write_sample_set_exact_length_and_chosen_classes(tmp_path):
    written = sv.write_sample_set(str(tmp_path), per_class=3, seed=1, classes=["shrinking", "static"],
                                  min_frames=9, max_frames=9, sizes=[(64, 48)], codecs=["MJPG"])
    assert [label for _, label in written] == ["shrinking"] * 3 + ["static"] * 3
    for path, _ in written:
        assert path.endswith(".avi")
        assert _decode(str(tmp_path / path)).shape == (9, 48, 64, 3)


def test_write_sample_set_order_free_only_when_asked(tmp_path):
    default = sv.write_sample_set(str(tmp_path / "a"), 1, min_frames=4, max_frames=4, sizes=SMALL_SIZES)
    extra = sv.write_sample_set(str(tmp_path / "b"), 1, min_frames=4, max_frames=4, sizes=SMALL_SIZES,
                                include_order_free=True)
    assert {label for _, label in default} == set(sv.CLASSES)
    assert {label for _, label in extra} == set(sv.CLASSES + sv.ORDER_FREE_CLASSES)


def test_same_seed_same_files_different_seed_different_files(tmp_path):
    kwargs = dict(per_class=1, min_frames=6, max_frames=10, sizes=SMALL_SIZES)
    first = sv.write_sample_set(str(tmp_path / "a"), seed=4, **kwargs)
    again = sv.write_sample_set(str(tmp_path / "b"), seed=4, **kwargs)
    other = sv.write_sample_set(str(tmp_path / "c"), seed=5, **kwargs)
    assert first == again
    for path, _ in first:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
    differing = [path for path, _ in other
                 if not (tmp_path / "a" / path).exists()
                 or (tmp_path / "a" / path).read_bytes() != (tmp_path / "c" / path).read_bytes()]
    assert len(differing) == len(other)


def test_unavailable_codec_falls_back_with_a_log_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sv, "codec_available", lambda fourcc: fourcc != "XVID")
    with caplog.at_level(logging.WARNING, logger=sv.__name__):
        written = sv.write_sample_set(str(tmp_path), per_class=2, codecs=["XVID", "mp4v"],
                                      min_frames=4, max_frames=4, sizes=SMALL_SIZES)
    assert all(path.endswith(".mp4") for path, _ in written)
    assert "codec XVID is unavailable" in caplog.text and "with mp4v instead" in caplog.text


@pytest.mark.parametrize("kwargs,message", [
    (dict(per_class=0), "per_class"),
    (dict(per_class=1, classes=["growing", "sideways"]), "sideways"),
    (dict(per_class=1, min_frames=10, max_frames=5), "min_frames"),
    (dict(per_class=1, sizes=[(97, 73)]), "97x73"),
    (dict(per_class=1, codecs=["H264"]), "H264"),
])
def test_write_sample_set_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sv.write_sample_set(str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_writes_the_set(tmp_path, capsys):
    out = tmp_path / "videos"
    assert sv.main([str(out), "--per-class", "2", "--seed", "3", "--min-frames", "5",
                    "--max-frames", "8"]) == 0
    with open(out / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12
    assert sorted({row["tag"] for row in rows}) == sorted(sv.CLASSES)
    for row in rows:
        assert 5 <= len(_decode(str(out / row["video_name"]))) <= 8
    assert capsys.readouterr().out.strip() == (
        f"wrote 12 clips (6 classes) under {out}; labels in {out / 'labels.csv'}")


def test_cli_classes_and_extra_classes(tmp_path):
    out = tmp_path / "videos"
    assert sv.main([str(out), "--per-class", "1", "--classes", "fading_in,fading_out", "--extra-classes",
                    "--min-frames", "4", "--max-frames", "4"]) == 0
    with open(out / "labels.csv", newline="") as handle:
        tags = [row["tag"] for row in csv.DictReader(handle)]
    assert sorted(tags) == sorted(["fading_in", "fading_out", "static", "flicker"])


@pytest.mark.parametrize("argv,message", [
    (["--per-class", "0"], "--per-class"),
    (["--per-class", "x"], "--per-class"),
    (["--per-class", "1", "--classes", "growing,leftward"], "leftward"),
    (["--per-class", "1", "--min-frames", "9", "--max-frames", "3"], "--min-frames"),
    (["--per-class", "1", "--seed", "-1"], "--seed"),
])
def test_cli_bad_arguments_exit_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        sv.main([str(tmp_path / "out"), *argv])
    assert exited.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "out").exists()


def test_cli_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as exited:
        sv.main(["--help"])
    assert exited.value.code == 0
    assert "python -m tools.sample_videos demo_videos --per-class 10" in capsys.readouterr().out


def test_first_index_numbers_the_clips_from_it_and_changes_no_frame(tmp_path):
    """The demo's held-back clips keep the frames they had when both sets were numbered from 0."""
    plain = sv.write_sample_set(str(tmp_path / "a"), per_class=2, seed=0, classes=["growing"])
    moved = sv.write_sample_set(str(tmp_path / "b"), per_class=2, seed=0, classes=["growing"], first_index=30)
    assert [path.rsplit(".", 1)[0] for path, _ in moved] == ["growing/growing_0030", "growing/growing_0031"]
    for (a, _), (b, _) in zip(plain, moved):
        assert (tmp_path / "a" / a).read_bytes() == (tmp_path / "b" / b).read_bytes()


def test_the_demos_training_and_held_back_clips_share_no_video_id(tmp_path):
    """`make demo` trains on one generated set and tests on another; training refuses sets that share a video
    id, and the two sets were both numbered from 0 (the demo failed at its training step). The Makefile's own
    two commands, with 2 clips a class."""
    import re
    import shlex
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    demo = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    commands = [shlex.split(line.split("-m tools.sample_videos", 1)[1]) for line in demo.splitlines()
                if "-m tools.sample_videos" in line]
    assert len(commands) == 2, demo
    ids = []
    for number, argv in enumerate(commands):
        argv[0] = str(tmp_path / f"set{number}")
        argv[argv.index("--per-class") + 1] = "2"
        assert sv.main(argv) == 0
        ids.append({p.relative_to(tmp_path / f"set{number}").as_posix()
                    for p in (tmp_path / f"set{number}").rglob("*") if re.search(r"_\d{4}\.\w+$", p.name)})
    assert ids[0] and ids[1] and not ids[0] & ids[1]
