"""Decoding benchmark (issue 21): long HD videos at the embedder's speed.

The corpus is encoded here (bench.hd_clips, PyAV's libx264, cached): 60 s clips at 1280x720 and 1920x1080,
30 fps, a keyframe every 30, 60 and 250 frames; and the UCF101-like short clips of the sample clip
generator. Per clip kind, in this process and interleaved kind by kind (`ROUNDS` rounds, medians):

- `opencv_all_s`: the method before PyAV, OpenCV decoding every frame (grab) and converting the 20 it
  keeps; `pyav_all_s`: the same with PyAV, threaded as the product decodes through, converting the 20;
- `uniform_s`, `keyframes_s`: `video.frames.decode_and_sample` in each sampling, opening the file and reading
  its index included; `index_s` the index alone; `keyframes_read_s` decoding just the chosen keyframes;
- `embed_s`: the job's default embedder on 20 frames (at the job's batch size), measured in the same run.

Then the whole featurize job, one run per kind and sampling, on a folder of one short clip plus n copies
of the kind's clip (n: enough for about JOB_WORK_S seconds of work), against a run on the short clip alone:
one more video costs the job `(wall - wall alone) / n`, and the job's videos/s is its inverse. Its ratio to
the embedder's own videos/s at 20 frames a video says how close decoding lets the job come to the
embedder's speed.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from bench.data import clip_set, featurize_args
from bench.harness import WORK_DIR, cached, load_average, log, median, run_job, sources

FRAMES, IMAGE_SIZE = 20, 128
SECONDS, FPS = 60, 30
HD_KINDS = [(w, h, k) for w, h in ((1280, 720), (1920, 1080)) for k in (30, 60, 250)]
SHORT_SEED, SHORT_PER_CLASS = 31, 2  # 12 short clips
ROUNDS = 2
COPIES = 6
MAX_COPIES = 60
JOB_WORK_S = 10.0
SAMPLINGS = ("uniform", "keyframes")
TARGETS = {"keyframes_vs_opencv": 1 / 6, "keyframes_vs_limit": 1.5, "uniform_vs_pyav_all": 1.0,
           "uniform_speedup_hd_2s": 2.5}


def kind_name(width: int, height: int, interval: int) -> str:
    return f"{height}p k{interval}"


def hd_corpus() -> dict[str, Path]:
    """The six 60 s HD clips, encoded once (a few minutes on 2 cores) and cached."""
    def build(directory: Path) -> None:
        from bench.hd_clips import write_hd_clip

        for i, (w, h, k) in enumerate(HD_KINDS):
            log(f"decoding benchmark: encoding a {SECONDS} s {w}x{h} clip, keyframe every {k} frames")
            write_hd_clip(directory / f"{h}p_k{k}.mp4", w, h, SECONDS, FPS, k, seed=i)

    params = {"kinds": HD_KINDS, "seconds": SECONDS, "fps": FPS}
    directory, _ = cached("hd-clips", params, sources("bench/hd_clips.py"), build)
    return {kind_name(w, h, k): directory / f"{h}p_k{k}.mp4" for w, h, k in HD_KINDS}


def _opencv_all(path: str) -> float:
    """Decode every frame with OpenCV and convert the 20 uniform ones (the frame count from the container,
    as a best case for OpenCV: the product's old decoder had to count as it went)."""
    import cv2

    from video.frames import sample_frame_indices

    started = time.perf_counter()
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    wanted = set(sample_frame_indices(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), FRAMES))
    count, kept = 0, []
    while capture.grab():
        if count in wanted:
            ok, frame = capture.retrieve()
            side = min(frame.shape[:2])
            square = cv2.resize(frame[:side, :side], (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
            kept.append(cv2.cvtColor(square, cv2.COLOR_BGR2RGB))
        count += 1
    capture.release()
    np.stack(kept)
    return time.perf_counter() - started


def _pyav_all(path: str) -> float:
    """Decode every frame with PyAV as the product configures it to decode through (its thread count) and
    convert the 20 uniform ones (the
    count from the container's header; no index pass)."""
    import av

    from video.frames import sample_frame_indices, square_rgb
    from video.reader import set_decoder_threads

    started = time.perf_counter()
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        set_decoder_threads(stream.codec_context, seeking=False)
        wanted = set(sample_frame_indices(stream.frames, FRAMES))
        np.stack([square_rgb(frame, IMAGE_SIZE) for count, frame in enumerate(container.decode(stream))
                  if count in wanted])
    return time.perf_counter() - started


def _sampled(path: str, sampling: str) -> tuple[float, dict]:
    from video.frames import decode_and_sample

    started = time.perf_counter()
    sampled = decode_and_sample(path, FRAMES, IMAGE_SIZE, sampling)
    return time.perf_counter() - started, {"method": sampled.read_method,
                                           "count": sampled.decoded_frame_count}


def _index_and_keyframes(path: str) -> dict:
    """Seconds to open and index the file, and to read just its chosen keyframes; how far each pick lies
    from its uniform position, in keyframe intervals (of the interval it falls in)."""
    from video.frames import keyframe_positions, sample_frame_indices, square_rgb
    from video.reader import VideoReader

    started = time.perf_counter()
    with VideoReader(path) as reader:
        index_s = time.perf_counter() - started
        keys = reader.index.positions_of_keyframes
        picks = keyframe_positions(reader.index.frame_count, keys, FRAMES)
        started = time.perf_counter()
        reader.read(picks, lambda frame: square_rgb(frame, IMAGE_SIZE))
        read_s = time.perf_counter() - started
        count = reader.index.frame_count
    bounds = list(keys) + [count]
    distances = []
    for pick, uniform in zip(picks, sample_frame_indices(count, FRAMES)):
        k = int(np.searchsorted(keys, uniform, side="right")) - 1
        distances.append(abs(pick - uniform) / (bounds[k + 1] - bounds[k]))
    return {"index_s": index_s, "keyframes_read_s": read_s, "max_distance_in_intervals": max(distances)}


def _embedder_s_per_video() -> tuple[float, str]:
    """The job's default embedder (engine and precision as featurize resolves them) on 20-frame videos at
    the job's batch size of 32: seconds per video, steady state."""
    from model.engines import EmbedderOptions, describe_options, make_embedder

    options = EmbedderOptions("random", IMAGE_SIZE, "auto", "auto").resolved()
    embedder = make_embedder(options, batch_size=32)
    frames = np.random.default_rng(0).integers(0, 256, (32, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    embedder(frames)
    started = time.perf_counter()
    for _ in range(10):
        embedder(frames)
    described = describe_options(options)
    return (time.perf_counter() - started) / (10 * 32) * FRAMES, f"{described['engine']} {described['precision']}"


def _in_process(kinds: dict[str, list[Path]]) -> dict:
    first = str(next(iter(kinds.values()))[0])
    _opencv_all(first), _pyav_all(first), _sampled(first, "uniform")  # libraries loaded before timing
    rounds = []
    for r in range(ROUNDS):
        log(f"decoding benchmark: in-process round {r + 1}/{ROUNDS}, load {load_average()}")
        entry = {"load_before": load_average()}
        for name, paths in kinds.items():
            rows = []
            for path in paths:
                row = {"opencv_all_s": _opencv_all(str(path)), "pyav_all_s": _pyav_all(str(path))}
                for sampling in SAMPLINGS:
                    row[f"{sampling}_s"], row[sampling] = _sampled(str(path), sampling)
                row.update(_index_and_keyframes(str(path)))
                rows.append(row)
            entry[name] = rows
        entry["embed_s"], entry["embedder"] = _embedder_s_per_video()
        rounds.append(entry)
    return {"rounds": rounds}


def _job_folder(name: str, short: Path, clips: list[Path]) -> Path:
    """A folder of one short clip and `clips` (hard links under other names: every one is a video to the job)."""
    folder = WORK_DIR / "decoding" / "inputs" / name.replace(" ", "_")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "short").mkdir(parents=True)
    os.link(short, folder / "short" / short.name)
    for i, clip in enumerate(clips):
        os.link(clip, folder / "short" / f"copy{i:02d}_{clip.name}")
    return folder


def _job(name: str, folder: Path, sampling: str) -> dict:
    output = WORK_DIR / "decoding" / "out" / name.replace(" ", "_")
    run = run_job(f"decoding-{name.replace(' ', '_')}",
                  featurize_args(folder, output) + ["--sampling", sampling, "--num-shards", "1"]).check()
    shutil.rmtree(output, ignore_errors=True)
    return {"wall_s": run.wall_s, "cpu_s": run.cpu_s, "load_before": run.load_before}


def copies_for(estimate_s: float) -> int:
    """How many copies of a clip make the job's extra work about JOB_WORK_S seconds (from the in-process
    estimate of one video), so that the job's start-up, which varies by a second or so, does not swamp a
    cheap video's cost: from COPIES to MAX_COPIES."""
    return max(COPIES, min(MAX_COPIES, math.ceil(JOB_WORK_S / max(estimate_s, 1e-3))))


def _jobs(kinds: dict[str, list[Path]], short_clips: list[Path], estimates: dict[tuple[str, str], float]) -> dict:
    """Per kind and sampling, the job's cost of one more video: (wall with n more - wall alone) / n (the short
    kind: all its clips, several times over), against a baseline run before and after."""
    alone_folder = _job_folder("alone", short_clips[0], [])
    runs = {"alone_before": _job("alone before", alone_folder, "uniform")}
    for name, paths in kinds.items():
        for sampling in SAMPLINGS:
            copies = copies_for(estimates[name, sampling] * len(paths))
            clips = (paths * copies)[1:] if name == "short sample clips" else paths * copies
            folder = _job_folder(f"{name} {sampling}", short_clips[0], clips)
            log(f"decoding benchmark: featurize job, {name}, {sampling}, {len(clips)} videos, load {load_average()}")
            runs[f"{name} {sampling}"] = {**_job(f"{name} {sampling}", folder, sampling), "videos": len(clips)}
            shutil.rmtree(folder)
    runs["alone_after"] = _job("alone after", alone_folder, "uniform")
    alone = (runs["alone_before"]["wall_s"] + runs["alone_after"]["wall_s"]) / 2
    for key, run in runs.items():
        if "videos" in run:
            run["s_per_video"] = (run["wall_s"] - alone) / run["videos"]
    runs["alone_s"] = alone
    return runs


def measure() -> dict:
    """The whole benchmark: corpus, in-process rounds, jobs; summarised per kind."""
    load_start = load_average()
    hd = hd_corpus()
    short_dir = clip_set(SHORT_PER_CLASS, SHORT_SEED)
    short_clips = sorted(p for p in short_dir.rglob("*") if p.suffix in (".mp4", ".avi"))
    kinds = {"short sample clips": short_clips, **{name: [path] for name, path in hd.items()}}
    in_process = _in_process(kinds)
    embed_s = median(r["embed_s"] for r in in_process["rounds"])
    estimates = {(name, sampling): float(np.mean([row[f"{sampling}_s"] for row in in_process["rounds"][-1][name]]))
                 + embed_s for name in kinds for sampling in SAMPLINGS}
    jobs = _jobs(kinds, short_clips, estimates)
    summary = {}
    for name in kinds:
        def med(key: str) -> float:
            return median(float(np.mean([row[key] for row in r[name]])) for r in in_process["rounds"])

        rows = in_process["rounds"][0][name]
        entry = {key: med(key) for key in ("opencv_all_s", "pyav_all_s", "uniform_s", "keyframes_s", "index_s",
                                            "keyframes_read_s")}
        entry.update(
            frames=int(np.mean([row["uniform"]["count"] for row in rows])),
            methods={s: sorted({row[s]["method"] for row in rows}) for s in SAMPLINGS},
            max_keyframe_distance=max(row["max_distance_in_intervals"] for r in in_process["rounds"]
                                      for row in r[name]),
            uniform_speedup=median(float(np.mean([row["pyav_all_s"] / row["uniform_s"] for row in r[name]]))
                                   for r in in_process["rounds"]),
            limit_s=med("keyframes_read_s") + embed_s,
        )
        for sampling in SAMPLINGS:
            job = jobs[f"{name} {sampling}"]
            entry[f"job_{sampling}_s_per_video"] = job["s_per_video"]
            entry[f"job_{sampling}_videos_per_s"] = 1 / job["s_per_video"] if job["s_per_video"] > 0 else None
            entry[f"job_{sampling}_vs_embedder"] = embed_s / job["s_per_video"] if job["s_per_video"] > 0 else None
        summary[name] = entry
    return {"kinds": summary, "embed_s_per_video": embed_s, "embedder": in_process["rounds"][0]["embedder"],
            "embedder_videos_per_s": 1 / embed_s, "in_process": in_process, "jobs": jobs,
            "load_start": load_start, "load_end": load_average(), "copies": COPIES, "rounds": ROUNDS}


def check(d: dict, add) -> None:
    """The issue's targets, for bench.run's table."""
    kinds = d["kinds"]
    key = kinds.get("1080p k60")
    if key:
        cost = key["job_keyframes_s_per_video"]
        add("21a. keyframes, 60 s 1080p, keyframe every 2 s: one more video costs the job", "<= 1/6 of decoding "
            "all its frames with OpenCV", f"{cost:.2f} s vs {key['opencv_all_s']:.2f} s "
            f"({key['opencv_all_s'] / cost:.1f}x less)" if cost > 0 else f"{cost:.2f} s",
            cost <= key["opencv_all_s"] * TARGETS["keyframes_vs_opencv"], f"load {d['load_start']}")
        add("21b. keyframes, 60 s 1080p, keyframe every 2 s: one more video costs the job", "<= 1.5x decoding "
            "its 20 keyframes + embedding 20 frames", f"{cost / key['limit_s']:.2f}x ({cost:.2f} s vs "
            f"{key['keyframes_read_s']:.2f} + {d['embed_s_per_video']:.2f} s)",
            cost <= key["limit_s"] * TARGETS["keyframes_vs_limit"], d["embedder"])
    slowest = min(kinds.items(), key=lambda kv: kv[1]["uniform_speedup"])
    add("21c. uniform vs decoding every frame with PyAV, every clip kind", "never slower (>= 1.0x)",
        f"{slowest[1]['uniform_speedup']:.2f}x at worst ({slowest[0]})",
        slowest[1]["uniform_speedup"] >= TARGETS["uniform_vs_pyav_all"],
        ", ".join(f"{name} {k['uniform_speedup']:.2f}x" for name, k in kinds.items()))
    hd_2s = {name: k for name, k in kinds.items() if name.endswith("k60")}
    worst = min((k["uniform_speedup"] for k in hd_2s.values()), default=float("nan"))
    add("21d. uniform vs decoding every frame, 60 s HD clips with a keyframe every 2 s", ">= 2.5x",
        f"{worst:.2f}x at worst", worst >= TARGETS["uniform_speedup_hd_2s"],
        ", ".join(f"{name} {k['uniform_speedup']:.2f}x" for name, k in hd_2s.items()))
    far = max(k["max_keyframe_distance"] for k in kinds.values())
    add("21e. keyframes: sampled positions within one keyframe interval of the uniform ones", "<= 1 interval",
        f"{far:.2f} intervals at most", far <= 1.0, "over every clip kind")


def markdown(d: dict) -> list[str]:
    lines = ["## Decoding long HD videos (issue 21)", "",
             f"60 s clips at {FPS} fps encoded by the benchmark (PyAV's libx264, veryfast, CRF 23, B-frames, a fixed "
             "keyframe interval; moving shapes over a drifting gradient with per-frame grain), and the "
             f"generator's {SHORT_PER_CLASS * 6} short sample clips (96x72 to 320x240). {FRAMES} frames a video at {IMAGE_SIZE}x{IMAGE_SIZE}. Decode seconds are per video, in "
             f"one process, medians of {d['rounds']} interleaved rounds; the job's cost of one more video is "
             f"(featurize wall with n copies - wall alone) / n, n from {COPIES} to {MAX_COPIES} so that the copies "
             f"take about {JOB_WORK_S:g} s (the n of each run is in results.json). Embedder: {d['embedder']}, "
             f"{d['embed_s_per_video']:.3f} s per video ({d['embedder_videos_per_s']:.1f} videos/s). Load "
             f"{d['load_start']} at the start, {d['load_end']} at the end. `python -m bench.run --only decoding` "
             "runs it alone.", "",
             "| clip kind | frames | OpenCV all | PyAV all | index | uniform | (read) | keyframes | (read) | "
             "uniform speed-up | job s/video uniform | keyframes | job videos/s uniform | keyframes | "
             "job vs embedder uniform | keyframes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def rate(value):
        return f"{value:.2f}" if value else "n/a"

    for name, k in d["kinds"].items():
        lines.append(
            f"| {name} | {k['frames']} | {k['opencv_all_s']:.3f} s | {k['pyav_all_s']:.3f} s | {k['index_s']:.3f} s | "
            f"{k['uniform_s']:.3f} s | {'/'.join(k['methods']['uniform'])} | {k['keyframes_s']:.3f} s | "
            f"{'/'.join(k['methods']['keyframes'])} | {k['uniform_speedup']:.2f}x | "
            f"{k['job_uniform_s_per_video']:.3f} s | {k['job_keyframes_s_per_video']:.3f} s | "
            f"{rate(k['job_uniform_videos_per_s'])} | {rate(k['job_keyframes_videos_per_s'])} | "
            f"{rate(k['job_uniform_vs_embedder'])} | {rate(k['job_keyframes_vs_embedder'])} |")
    return lines + ["", "\"job vs embedder\" is the job's videos/s over the bare embedder's at 20 frames a video: 1.0 "
                    "would be a job that costs only its embedding.", ""]
