"""python -m model.preview: the frames it samples are the labelling job's, its top-3 are the labelling job's,
and the GIF shows them (frame count, timing, picture, bar lengths); user mistakes are one line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model import preview

IMAGE_SIZE = 32
FRAMES = 4
CLASSES = ("fading_in", "growing", "shrinking")
REAL_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "real_videos"


def make_model_dir(path: Path) -> Path:
    """An untrained classifier for 32-px, 4-frame random-backbone features (outputs vary by video)."""
    import keras

    from model.classifier import ClassifierConfig, build_classifier
    from model.export import export_model_dir
    from tfrecords_schema import RecordSpec

    keras.utils.set_random_seed(5)
    model = build_classifier(ClassifierConfig(num_classes=len(CLASSES), max_seq_length=FRAMES))
    export_model_dir(model, list(CLASSES), RecordSpec(1024, FRAMES, "densenet121/random-seed1337", IMAGE_SIZE),
                     str(path), saved_model=False)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    from tools.sample_videos import write_sample_set

    root = tmp_path_factory.mktemp("preview_clips")
    write_sample_set(str(root), per_class=1, seed=8, classes=("growing", "shrinking"), min_frames=30,
                     max_frames=50, sizes=[(96, 72)])
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("preview_model") / "model")


def clip_path(clips: Path, label: str) -> Path:
    (path,) = (clips / label).iterdir()
    return path


# --- Sampling ---------------------------------------------------------------------------------------------

REAL_CLIPS = ("Punch/v_Punch_g03_c01.avi", "CricketShot/v_CricketShot_g04_c01_rgb.gif",
              "_other/moviepy__transparent.webm")


@pytest.mark.parametrize("sampling", ["uniform", "first"])
def test_preview_samples_the_frames_the_labelling_job_samples(clips, tmp_path, sampling):
    from video.frames import decode_and_sample
    from tools.sample_videos import render_clip, write_clip

    short = tmp_path / "short.avi"  # fewer frames than the model takes
    write_clip(str(short), render_clip("growing", np.random.default_rng(1), 3, 64, 48), "MJPG")
    videos = [clip_path(clips, "growing"), short]
    videos += [REAL_VIDEOS / name for name in REAL_CLIPS if (REAL_VIDEOS / name).exists()]
    for video in videos:
        for frames, size in ((FRAMES, IMAGE_SIZE), (20, 128)):
            job = decode_and_sample(str(video), frames, size, sampling)
            mine = preview.read_sampled_frames(str(video), frames, size, sampling, display_size=160)
            assert mine.frame_indices == job.frame_indices, video
            assert mine.decoded_frame_count == job.decoded_frame_count
            np.testing.assert_array_equal(mine.model_frames, job.frames, err_msg=str(video))
            assert mine.display_frames.shape == (len(job.frames), 160, 160, 3)
            # The display frames are the same pictures, larger.
            smaller = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR))
                                for f in mine.display_frames])
            assert np.abs(smaller.astype(int) - job.frames).mean() < 12, video
    assert len(preview.read_sampled_frames(str(short), FRAMES, IMAGE_SIZE, sampling).frame_indices) == 3


# --- The GIF ----------------------------------------------------------------------------------------------


def bar_lengths(image: np.ndarray, layout: preview.Layout) -> list[int]:
    """Filled bar pixels on the middle row of each bar track."""
    lengths = []
    for line in range(layout.lines):
        left, top, right, bottom = layout.bar_box(line)
        row = image[(top + bottom) // 2, left:right].astype(int)
        lengths.append(int((np.abs(row - preview.BAR).sum(axis=1) < 40).sum()))
    return lengths


def test_preview_gif_shows_the_labelling_jobs_top3_on_the_sampled_frames(clips, model_dir, tmp_path, capsys):
    from beam_jobs import predict

    labels_out = tmp_path / "labels"
    predict.run(["--input", str(clips), "--model", str(model_dir), "--output", str(labels_out),
                 "--runner", "DirectRunner"])
    with open(labels_out / "labels.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["video_id"].startswith("shrinking/"))
    video = clip_path(clips, "shrinking")
    out = tmp_path / "previews" / "shrinking.gif"
    capsys.readouterr()

    made = preview.run([str(video), "--model", str(model_dir), "--out", str(out), "--size", "160", "--fps", "5"])

    job_top = [(label, float(p)) for label, _, p in (pair.rpartition(":") for pair in row["top_k"].split(";"))]
    assert [label for label, _ in made.top] == [label for label, _ in job_top]
    np.testing.assert_allclose([p for _, p in made.top], [p for _, p in job_top], atol=2e-5)
    assert made.probabilities.sum() == pytest.approx(1.0)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{video}: {job_top[0][0]}"
    assert printed[1:4] == [f"  {label:>16}: {100 * p:6.2f}%" for label, p in made.top]

    gif = Image.open(out)
    layout = preview.Layout(160, 3)
    expected = preview.read_sampled_frames(str(video), FRAMES, IMAGE_SIZE, display_size=160)
    assert gif.format == "GIF" and gif.n_frames == FRAMES == len(made.frame_indices)
    assert gif.size == (160, layout.height) and gif.info["loop"] == 0
    for index in range(gif.n_frames):
        gif.seek(index)
        assert gif.info["duration"] == 200
        image = np.asarray(gif.convert("RGB"))
        picture = image[40:160, :].astype(int)  # below the frame counter
        assert np.abs(picture - expected.display_frames[index, 40:160]).mean() < 8
        track = layout.bar_box(0)[2] - layout.bar_box(0)[0]
        np.testing.assert_allclose(bar_lengths(image, layout), [track * p for _, p in made.top], atol=1.5)
    assert out.stat().st_mode & 0o044 == 0o044  # readable like any other file
    assert [p.name for p in out.parent.iterdir()] == ["shrinking.gif"]  # no temporary left behind


def test_draw_frame_grows_the_panel_with_top_k_and_fills_bars_by_probability():
    frame = np.zeros((128, 128, 3), np.uint8)
    top = [("a", 1.0), ("b", 0.5), ("c", 0.25), ("d", 0.0)]
    image = np.asarray(preview.draw_frame(frame, top, 0, 1))
    layout = preview.Layout(128, 4)
    assert image.shape == (layout.height, 128, 3)
    track = layout.bar_box(0)[2] - layout.bar_box(0)[0]
    assert bar_lengths(image, layout) == [track, round(track / 2), round(track / 4), 0]


def test_long_labels_are_cut_short_before_their_percentage():
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = preview._font(12)
    assert preview.fit_text(draw, "1. Punch", font, 200) == "1. Punch"
    cut = preview.fit_text(draw, "1. ApplyEyeMakeupAndThenSomeMoreWords", font, 90)
    assert cut.startswith("1. ApplyEye") and cut.endswith("\u2026") and draw.textlength(cut, font=font) <= 90
    long_label = np.asarray(preview.draw_frame(np.zeros((128, 128, 3), np.uint8), [("x" * 80, 0.5)], 0, 1))
    layout = preview.Layout(128, 1)
    left, top, right, _ = layout.bar_box(0)
    inked = (long_label[top - layout.font_size - 4 : top - 2, left:right].min(axis=2) < 128).any(axis=0)
    assert inked[-3:].any()  # the percentage ends at the right edge
    blank_runs = "".join("." if ink else " " for ink in inked[len(inked) // 2 :]).split(".")
    assert max(map(len, blank_runs)) >= 3  # a space between the cut label and the percentage: no overlap


# --- Mistakes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("not_a_video", "cannot open as a video"),
    ("not_gif", "--out must name a .gif file"),
    ("small", "--size must be at least 128"),
    ("no_model", "model directory"),
])
def test_preview_mistakes_are_one_line_and_write_nothing(case, message, model_dir, tmp_path, capsys):
    from common.cli import main

    video = tmp_path / "video.mp4"
    if case == "not_a_video":
        video.write_text("not a video\n" * 20)
    out = tmp_path / ("preview.png" if case == "not_gif" else "preview.gif")
    argv = [str(video), "--model", str(tmp_path / "nowhere" if case == "no_model" else model_dir), "--out", str(out)]
    if case == "small":
        argv += ["--size", "64"]
    assert main(preview.run, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["video.mp4"] if case == "not_a_video" else [])
