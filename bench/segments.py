"""Labels along a long video (issue 28): a 10-minute 720p clip made of pieces of the generated classes, labelled
by `predict --segments 10`: wall time per minute of video, and how many of the true class boundaries the
events recover within one window.

    python -m bench.segments   # writes bench/_work/segments.json and prints a markdown section

The model is trained here (cached) with `model.train`'s defaults on generated clips of exactly one window:
10 s at 25 fps (250 frames, 20 of them sampled), 30 per class of the six order-only classes, featurized with
`--weights random`. The long clip is made the same way, 10 s period by 10 s period: each period is a fresh
generated scene of its piece's class whose temporal pattern (growing, fading in, ...) spans the period, so
a window aligned with the periods sees one whole pattern, as the training clips do. That is the window
sampling assumption: windows of SECONDS at the clip's rate must contain the class's temporal pattern, as a
clip the model was trained on does; a class whose pattern is longer or shorter than the window, or out of
step with it, is another question. Pieces last 20 to 60 s and change class at any frame, mostly inside a
period: the window there sees two classes, and an event boundary within one window (10 s) of the true one
counts as recovered. Scenes are rendered at 320x180 by tools.sample_videos, scaled to 1280x720 and encoded
with PyAV's libx264 (veryfast, crf 23, a keyframe every 2 s, B-frames), cached.

The job runs as `python -m beam_jobs.predict` in a subprocess (bench.harness), once with `--segments 10` and
once without (the whole-video label alone) on the same clip, for the cost of the windows.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np

from bench.data import featurized
from bench.harness import (CLIP_SOURCES, TRAIN_SOURCES, WORK_DIR, cached, cpu_model, file_digest, load_average, log,
                           python_module, run_job, sources)

WINDOW_S, FPS, MINUTES = 10.0, 25, 10
WIDTH, HEIGHT, RENDER = 1280, 720, (320, 180)
PIECE_S = (20.0, 60.0)
TRAIN_PER_CLASS, TRAIN_SEED, CLIP_SEED, MODEL_SEED = 30, 41, 42, 0
MIN_CONFIDENCE = 0.5
RESULTS = WORK_DIR / "segments.json"


def training_clips() -> Path:
    """Generated clips of one window each (250 frames at 25 fps), made once."""
    def build(directory: Path) -> None:
        from tools.sample_videos import write_sample_set

        frames = int(WINDOW_S * FPS)
        log(f"segments benchmark: generating {TRAIN_PER_CLASS} clips per class of {frames} frames")
        write_sample_set(str(directory / "clips"), TRAIN_PER_CLASS, seed=TRAIN_SEED, min_frames=frames,
                         max_frames=frames, sizes=[RENDER])

    params = {"per_class": TRAIN_PER_CLASS, "seed": TRAIN_SEED, "frames": int(WINDOW_S * FPS), "size": RENDER}
    directory, _ = cached("segment-clips", params, CLIP_SOURCES, build)
    return directory / "clips"


def trained_model(records: Path) -> Path:
    """`model.train` at its defaults on the window-long clips' records, made once."""
    def build(directory: Path) -> None:
        log("segments benchmark: training on the window-long clips (default settings)")
        run_job("segments-train", python_module("model.train", "--train", str(records), "--output",
                                                 str(directory / "model"), "--seed", str(MODEL_SEED))).check()

    params = {"records": str(records.relative_to(records.parents[1])), "seed": MODEL_SEED,
              "trainer": {path: file_digest(path) for path in TRAIN_SOURCES}}
    directory, _ = cached("segment-model", params, TRAIN_SOURCES, build)
    return directory / "model"


def plan_pieces(seed: int) -> list[tuple[str, int, int]]:
    """(class, first frame, end frame) of the long clip's pieces: 20-60 s each, consecutive classes differ."""
    from tools.sample_videos import CLASSES

    rng = np.random.default_rng(seed)
    total, pieces, start, label = MINUTES * 60 * FPS, [], 0, None
    while start < total:
        label = str(rng.choice([c for c in CLASSES if c != label]))
        end = min(start + int(rng.uniform(*PIECE_S) * FPS), total)
        if total - end < PIECE_S[0] * FPS:  # no piece shorter than the shortest at the end
            end = total
        pieces.append((label, start, end))
        start = end
    return pieces


def _long_clip_frames(pieces: list[tuple[str, int, int]], seed: int):
    """RGB frames at WIDTH x HEIGHT, one period of a window at a time: each class present in a period
    rendered as a fresh scene over the whole period, each frame taken from its piece's class."""
    import cv2

    from tools.sample_videos import render_clip

    period = int(WINDOW_S * FPS)
    total = pieces[-1][2]
    labels = np.empty(total, dtype=object)
    for label, start, end in pieces:
        labels[start:end] = label
    for first in range(0, total, period):
        here = labels[first : first + period]
        scenes = {label: render_clip(label, np.random.default_rng([seed, first, k]), period, *RENDER)
                  for k, label in enumerate(dict.fromkeys(here))}
        for offset, label in enumerate(here):
            frame = cv2.resize(scenes[label][offset], (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def long_clip() -> tuple[Path, list[tuple[str, int, int]]]:
    """The 10-minute 720p clip (alone in its folder) and its pieces, made once."""
    pieces = plan_pieces(CLIP_SEED)

    def build(directory: Path) -> None:
        import av

        log(f"segments benchmark: encoding a {MINUTES}-minute {WIDTH}x{HEIGHT} clip of {len(pieces)} pieces")
        (directory / "clip").mkdir()
        with av.open(str(directory / "clip" / "long.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            stream.codec_context.thread_type, stream.codec_context.thread_count = "FRAME", 0
            stream.options = {"preset": "veryfast", "crf": "23", "g": str(2 * FPS), "keyint_min": str(2 * FPS),
                              "sc_threshold": "0", "bf": "2"}
            for frame in _long_clip_frames(pieces, CLIP_SEED):
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    params = {"pieces": pieces, "size": [WIDTH, HEIGHT], "render": RENDER, "fps": FPS, "seed": CLIP_SEED}
    directory, _ = cached("segment-long-clip", params, CLIP_SOURCES + sources("bench/segments.py"), build)
    return directory / "clip", pieces


def _label(name: str, clip_dir: Path, model: Path, *extra: str):
    output = WORK_DIR / "runs" / name
    shutil.rmtree(output, ignore_errors=True)
    job = run_job(name, python_module("beam_jobs.predict", "--runner", "DirectRunner", "--input", str(clip_dir),
                                      "--model", str(model), "--output", str(output), "--overwrite", *extra)).check()
    return job, output


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def boundary_recovery(pieces, events: list[dict], window_s: float = WINDOW_S) -> dict:
    """How many true class boundaries have an event edge (an event's start or end inside the video) within
    `window_s`, and how many edges are near no true boundary."""
    duration = pieces[-1][2] / FPS
    truth = [start / FPS for _, start, _ in pieces[1:]]
    edges = sorted({float(e["start_s"]) for e in events} | {float(e["end_s"]) for e in events})
    edges = [t for t in edges if 0 < t < duration - 1e-3]
    errors = [min((abs(edge - b) for edge in edges), default=math.inf) for b in truth]
    recovered = [e for e in errors if e <= window_s]
    spurious = [t for t in edges if all(abs(t - b) > window_s for b in truth)]
    piece_labels = [label for label, _, _ in pieces]
    return {"true_boundaries": len(truth), "recovered": len(recovered), "spurious_edges": len(spurious),
            "median_error_s": round(float(np.median(recovered)), 2) if recovered else None,
            "max_error_s": round(max(recovered), 2) if recovered else None,
            "events": len(events), "pieces": len(pieces),
            "event_labels_match_pieces": [e["label"] for e in events] == piece_labels}


def window_accuracy(pieces, segments: list[dict]) -> dict:
    """The share of windows lying wholly inside one piece that got its class."""
    inside = right = 0
    for row in segments:
        start, end = float(row["start_s"]) * FPS, float(row["end_s"]) * FPS
        for label, first, last in pieces:
            if first <= start + 1e-6 and end <= last + 1e-6:
                inside += 1
                right += row["label"] == label
    return {"windows": len(segments), "inside_one_piece": inside, "right": right,
            "accuracy": round(right / inside, 4) if inside else None}


def measure() -> dict:
    load_start = load_average()
    clips = training_clips()
    model = trained_model(featurized(clips, "segments-train"))
    clip_dir, pieces = long_clip()
    log("segments benchmark: labelling the long clip with --segments 10, then without")
    windows, out = _label("segments-10s", clip_dir, model, "--segments", str(WINDOW_S), "--min-confidence",
                          str(MIN_CONFIDENCE))
    whole, _ = _label("segments-whole-only", clip_dir, model, "--min-confidence", str(MIN_CONFIDENCE))
    events, segments = _read_csv(out / "events.csv"), _read_csv(out / "segments.csv")
    metrics = json.loads((model / "metrics.json").read_text())
    result = {
        "clip": {"minutes": MINUTES, "width": WIDTH, "height": HEIGHT, "fps": FPS, "pieces": len(pieces),
                 "piece_s": PIECE_S, "codec": "H.264 (libx264 veryfast, crf 23, keyframe every 2 s, B-frames)"},
        "window_s": WINDOW_S, "min_confidence": MIN_CONFIDENCE,
        "model": {"train_clips": TRAIN_PER_CLASS * 6, "frames_per_clip": int(WINDOW_S * FPS),
                  "val_accuracy": metrics.get("val_accuracy"), "epochs_run": metrics.get("epochs_run")},
        "with_segments": {"wall_s": round(windows.wall_s, 1), "cpu_s": round(windows.cpu_s, 1),
                          "peak_rss_mb": round(windows.peak_rss_mb), "peak_pss_mb": round(windows.peak_pss_mb),
                          "wall_s_per_video_minute": round(windows.wall_s / MINUTES, 2),
                          "load_before": windows.load_before},
        "whole_video_only": {"wall_s": round(whole.wall_s, 1), "cpu_s": round(whole.cpu_s, 1),
                             "peak_rss_mb": round(whole.peak_rss_mb), "load_before": whole.load_before},
        "boundaries": boundary_recovery(pieces, events),
        "windows": window_accuracy(pieces, segments),
        "cpu_model": cpu_model(), "load_start": load_start, "load_end": load_average(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


def check(d: dict, add) -> None:
    """The issue's figure as a target, for bench.run's table."""
    b = d["boundaries"]
    add("28. events of 10 s windows along a 10-minute 720p clip recover its class boundaries within one window",
        "all of them", f"{b['recovered']} of {b['true_boundaries']}", b["recovered"] == b["true_boundaries"],
        f"{d['with_segments']['wall_s_per_video_minute']:.2f} s per minute of video; {b['spurious_edges']} "
        "spurious edges")


def markdown(d: dict) -> list[str]:
    c, w, b, s, whole = d["clip"], d["windows"], d["boundaries"], d["with_segments"], d["whole_video_only"]
    return [
        f"## Labels along a long video: `predict --segments {d['window_s']:g}`",
        "",
        f"One {c['minutes']}-minute {c['width']}x{c['height']} clip at {c['fps']} fps ({c['codec']}) of "
        f"{c['pieces']} pieces of the generated classes, {c['piece_s'][0]:g}-{c['piece_s'][1]:g} s each, labelled "
        f"in {d['window_s']:g} s windows by a model trained on {d['model']['train_clips']} generated clips of one "
        f"window ({d['model']['frames_per_clip']} frames; validation accuracy {d['model']['val_accuracy']:.3f}). "
        "Each piece is made of window-long scenes whose temporal pattern spans the window, in step with the "
        "windows (the window sampling assumption, see bench/segments.py); classes change at any frame. "
        f"`--min-confidence {d['min_confidence']:g}`. CPU: {d['cpu_model']}; load average {s['load_before']} "
        "before the job.",
        "",
        "| what | measured |",
        "|---|---|",
        f"| wall time per minute of video, `--segments {d['window_s']:g}` | {s['wall_s_per_video_minute']:.2f} s "
        f"({s['wall_s']:.1f} s for the clip, {s['cpu_s']:.0f} CPU s, peak RSS {s['peak_rss_mb']} MB) |",
        f"| the same job without `--segments` (one label for the video) | {whole['wall_s']:.1f} s "
        f"(peak RSS {whole['peak_rss_mb']} MB) |",
        f"| true class boundaries recovered by an event edge within one window | {b['recovered']} of "
        f"{b['true_boundaries']} (error median {b['median_error_s']} s, max {b['max_error_s']} s) |",
        f"| event edges near no true boundary | {b['spurious_edges']} |",
        f"| events / pieces; event labels in the pieces' order | {b['events']} / {b['pieces']}; "
        f"{'yes' if b['event_labels_match_pieces'] else 'no'} |",
        f"| windows wholly inside one piece labelled with its class | {w['right']} of {w['inside_one_piece']} "
        f"({100 * w['accuracy']:.1f}%) of {w['windows']} windows |",
        "",
    ]


def main() -> int:
    result = measure()
    print("\n".join(markdown(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
