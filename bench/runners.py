"""The featurize job on Prism (the runner `--runner DirectRunner` picks where it finds Prism) against the
in-process runner (`--runner FnApiRunner`, what DirectRunner falls back to without Prism), issue 32.

    python -m bench.run --only runners   # merged into results.json and RESULTS.md
    python -m bench.runners              # prints the markdown section (bench/_work/runners.json)

Two inputs, both cached under bench/_work/cache: 300 short generated clips (50 per class of the six
order-only classes, tools.sample_videos) and 10 videos of 60 s 1280x720 H.264 at 30 fps (bench.hd_clips,
5 distinct clips, each twice under another name). The job runs at the product's defaults (20 frames of
128 px, uniform sampling, the default engine, --weights random) as `python -m beam_jobs.featurize` in a
subprocess (bench.harness: wall and CPU time of the whole process tree, Prism's included), on each runner in
turn, interleaved: `ROUNDS` rounds, the runners' order swapped from input to input and round to round; medians.
videos/s is videos over the job's wall time, start-up included. Prism is the binary `make prism` builds
(tools.prism).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bench.data import clip_set
from bench.harness import WORK_DIR, cached, cpu_model, load_average, log, median, python_module, run_job, sources

SHORT_PER_CLASS, SHORT_SEED = 50, 61
HD_DISTINCT, HD_VIDEOS, HD_SECONDS, HD_FPS, HD_KEYFRAME_INTERVAL = 5, 10, 60, 30, 60
ROUNDS = 2  # each round runs both inputs on both runners, the runners' order swapped input by input
TARGET = 0.8  # Prism's videos/s over the in-process runner's, on both inputs
RESULTS = WORK_DIR / "runners.json"


def runner_args() -> dict[str, list[str]]:
    from tools.prism import prism_args, prism_binary

    if not prism_binary().is_file():
        raise SystemExit(f"Prism is not built at {prism_binary()}: run `make prism` first")
    # In process, named: `--runner DirectRunner` would pick Prism wherever Beam finds it in its own cache.
    return {"in_process": ["--runner", "FnApiRunner"], "prism": prism_args()}


def hd_clips() -> Path:
    """A folder of HD_VIDEOS 60 s 720p videos (HD_DISTINCT clips encoded once, hard-linked under more names)."""
    def build(directory: Path) -> None:
        from bench.hd_clips import write_hd_clip

        (directory / "clips" / "hd").mkdir(parents=True)
        for seed in range(HD_DISTINCT):
            log(f"runners benchmark: encoding 60 s 720p clip {seed + 1} of {HD_DISTINCT}")
            write_hd_clip(directory / "clips" / "hd" / f"hd{seed}.mp4", 1280, 720, HD_SECONDS, HD_FPS,
                          HD_KEYFRAME_INTERVAL, seed=100 + seed)
        for i in range(HD_DISTINCT, HD_VIDEOS):
            os.link(directory / "clips" / "hd" / f"hd{i % HD_DISTINCT}.mp4", directory / "clips" / "hd" / f"hd{i}.mp4")

    params = {"distinct": HD_DISTINCT, "videos": HD_VIDEOS, "seconds": HD_SECONDS, "fps": HD_FPS,
              "keyframe_interval": HD_KEYFRAME_INTERVAL, "size": [1280, 720]}
    directory, _ = cached("runner-hd-clips", params, sources("bench/hd_clips.py"), build)
    return directory / "clips"


def _featurize(name: str, clips: Path, args: list[str]) -> dict:
    output = WORK_DIR / "runners" / name
    shutil.rmtree(output, ignore_errors=True)
    run = run_job(f"runners-{name}", python_module("beam_jobs.featurize", "--input", str(clips), "--output",
                                                   str(output), "--weights", "random", "--overwrite", *args)).check()
    manifest = json.loads((output / "manifest.json").read_text())
    shutil.rmtree(output, ignore_errors=True)
    videos = manifest["records_written"] + manifest["failures"]
    return {"wall_s": round(run.wall_s, 2), "cpu_s": round(run.cpu_s, 1), "peak_rss_mb": round(run.peak_rss_mb),
            "videos": videos, "failures": manifest["failures"], "videos_per_s": round(videos / run.wall_s, 4),
            "load_before": run.load_before}


def measure() -> dict:
    load_start = load_average()
    runners = runner_args()
    inputs = {"short": clip_set(SHORT_PER_CLASS, SHORT_SEED), "hd720": hd_clips()}
    rounds = []
    for number in range(ROUNDS):
        entry = {}
        for position, (input_name, clips) in enumerate(inputs.items()):
            order = list(runners) if (number + position) % 2 == 0 else list(runners)[::-1]
            for runner in order:
                log(f"runners benchmark: round {number + 1}, {input_name} on {runner}, load {load_average()}")
                entry[f"{input_name}/{runner}"] = _featurize(f"{input_name}-{runner}", clips, runners[runner])
        rounds.append(entry)
    summary = {}
    for input_name in inputs:
        rates = {r: median(x[f"{input_name}/{r}"]["videos_per_s"] for x in rounds) for r in runners}
        walls = {r: median(x[f"{input_name}/{r}"]["wall_s"] for x in rounds) for r in runners}
        summary[input_name] = {"videos": rounds[0][f"{input_name}/prism"]["videos"],
                               "videos_per_s": {r: round(v, 4) for r, v in rates.items()},
                               "wall_s": {r: round(v, 1) for r, v in walls.items()},
                               "prism_vs_in_process": round(rates["prism"] / rates["in_process"], 3)}
    result = {"rounds": rounds, "summary": summary, "rounds_run": ROUNDS, "cpu_model": cpu_model(),
              "usable_cores": len(os.sched_getaffinity(0)), "load_start": load_start, "load_end": load_average(),
              "short_clips": f"{6 * SHORT_PER_CLASS} generated clips (tools.sample_videos, seed {SHORT_SEED})",
              "hd_clips": f"{HD_VIDEOS} videos of {HD_SECONDS} s 1280x720 H.264 at {HD_FPS} fps, a keyframe every "
                          f"{HD_KEYFRAME_INTERVAL} frames ({HD_DISTINCT} distinct clips, bench.hd_clips)"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


def check(d: dict, add) -> None:
    for input_name, label in (("short", "300 short clips"), ("hd720", "10 60 s 720p videos")):
        s = d["summary"][input_name]
        add(f"32. featurize on Prism vs the in-process runner, {label} (videos/s)", f">= {TARGET}x",
            f"{s['prism_vs_in_process']:.2f}x", s["prism_vs_in_process"] >= TARGET,
            f"Prism {s['videos_per_s']['prism']:.3f} vs in process {s['videos_per_s']['in_process']:.3f} videos/s "
            f"(wall {s['wall_s']['prism']} vs {s['wall_s']['in_process']} s, medians of {d['rounds_run']} rounds)")


def markdown(d: dict) -> list[str]:
    lines = [
        "## Runners: featurize on Prism and in process",
        "",
        "`--runner PrismRunner --prism_location` (the binary `make prism` builds; what `--runner DirectRunner` "
        "runs on where Beam finds Prism) against the in-process runner (`--runner FnApiRunner`, what DirectRunner "
        "falls back to without Prism), "
        f"the featurize job at its defaults as a subprocess, interleaved, medians of {d['rounds_run']} rounds "
        "(wall time includes start-up). "
        f"Inputs: {d['short_clips']}; {d['hd_clips']}. CPU: {d['cpu_model']}, {d['usable_cores']} cores; load "
        f"average {d['load_start']} at the start, {d['load_end']} at the end.",
        "",
        "| input | videos | in process videos/s (wall) | Prism videos/s (wall) | Prism / in process |",
        "|---|---|---|---|---|",
    ]
    for input_name, s in d["summary"].items():
        v, w = s["videos_per_s"], s["wall_s"]
        lines.append(f"| {input_name} | {s['videos']} | {v['in_process']:.3f} ({w['in_process']} s) | "
                     f"{v['prism']:.3f} ({w['prism']} s) | {s['prism_vs_in_process']:.2f}x |")
    lines += ["", "Each run, in order (load average before it):", "",
              "| round | run | wall s | CPU s | peak RSS MB | videos/s | load before |",
              "|---|---|---|---|---|---|---|"]
    for number, entry in enumerate(d["rounds"], 1):
        for name, r in entry.items():
            lines.append(f"| {number} | {name} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mb']} | "
                         f"{r['videos_per_s']:.3f} | {r['load_before']} |")
    return lines + [""]


def main() -> int:
    print("\n".join(markdown(measure())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
