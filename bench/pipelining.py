"""The job at the speed of its slowest stage (issue 36): decoding ahead of the embedder, cores planned once.

Measured in one run, each job bracketed by the bare default embedder (OpenVINO, `auto` precision, on
ready-made batches, in this process, 2 s just before and just after the job) so that a change in the
machine's load hits both sides of a ratio alike:
- 60 and 300 short clips (the bench's generated clips, 20 frames sampled each): the job's marginal frames/s
  between them ((frames 300 - frames 60) / (wall 300 - wall 60): start-up cancels out) and the whole command's
  frames/s for 300, each over the bare embedder measured next to it; the peak RSS of the job's processes at
  60 and at 300 clips (flat: frames in flight are bounded).
- 300 clips with `--direct_num_workers 2 --direct_running_mode multi_processing` against one worker (and 60
  clips so: the line through the two gives both ways' frames/s as the job runs and what a job costs whatever
  its videos, start-up and exit), and with `--decoders 1` against the planned decoders.
- 10 of the 60 s 720p clips (the decoding benchmark's three, keyframes every 1, 2 and 10 s, copied to make
  ten), uniform sampling: the job's time beyond start-up (its whole command less that of a job on one short
  clip, measured alongside) against its limit, the slower of decoding the ten alone (the job's own decoder
  pool, `video.ahead`, with the core plan's decoders) and embedding their frames alone.

    python -m bench.run --only pipelining
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

from bench.data import clip_set
from bench.harness import WORK_DIR, cpu_model, load_average, log
from bench.throughput import IMAGE_SIZE, featurize, load_frames

SEED = 3
SMALL_PER_CLASS, LARGE_PER_CLASS = 10, 50  # 60 and 300 clips (clip i is the same in both sets)
HD_COPIES = 10
BATCH_SIZE = 32
TARGETS = {"marginal_vs_bare": 0.75, "whole_vs_bare": 0.55, "hd_vs_limit": 1.2, "two_workers_vs_one": 1.0,
           "rss_growth": 1.15}


class BareDefaultEmbedder:
    """The default embedder (`--engine auto --precision auto`, every core) on ready-made batches."""

    def __init__(self, frames):
        from model.engines import EmbedderOptions, make_embedder

        self.options = EmbedderOptions("random", IMAGE_SIZE, "auto", "auto").resolved()
        self.embedder = make_embedder(self.options, BATCH_SIZE)
        self.batches = [frames[i : i + BATCH_SIZE] for i in range(0, len(frames), BATCH_SIZE)]
        self.embedder(self.batches[0])

    def frames_per_s(self, min_seconds: float = 3.0) -> float:
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < min_seconds:
            for batch in self.batches:
                self.embedder(batch)
                done += len(batch)
        return done / (time.perf_counter() - started)


def hd_clips() -> Path:
    """HD_COPIES 60 s 720p clips: the decoding benchmark's three (the same seeds), copied in turn."""
    from bench.decoding import FPS, HD_KINDS, SECONDS
    from bench.harness import cached, sources as digests

    kinds = [(i, w, h, k) for i, (w, h, k) in enumerate(HD_KINDS) if h == 720]

    def build(directory: Path) -> None:
        from bench.hd_clips import write_hd_clip

        for i, w, h, k in kinds:
            log(f"encoding a {SECONDS} s {h}p clip, a keyframe every {k} frames")
            write_hd_clip(directory / f"{h}p_k{k}.mp4", w, h, SECONDS, FPS, k, seed=i)

    cache, _ = cached("hd-720p-clips", {"kinds": kinds, "seconds": SECONDS, "fps": FPS},
                      digests("bench/hd_clips.py"), build)
    sources = [cache / f"{h}p_k{k}.mp4" for _, w, h, k in kinds]
    directory = WORK_DIR / "pipelining-hd"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for i in range(HD_COPIES):
        shutil.copyfile(sources[i % len(sources)], directory / f"hd_{i:02d}_{sources[i % len(sources)].name}")
    return directory


def decode_alone_s(clips: Path) -> float:
    """Seconds to decode every clip with the job's decoder pool and core plan, nothing else running."""
    from beam_jobs.cores import CoreRequest
    from video.ahead import DecodeAhead
    from video.isolated import IsolatedDecoder

    plan = CoreRequest().plan()
    pool = DecodeAhead(lambda decoder, path, emit: decoder.decode(path, 20, IMAGE_SIZE, "uniform"), plan.decoders,
                       plan.max_in_flight,
                       make_decoder=lambda: IsolatedDecoder(600, decoder_threads=plan.decoder_threads))
    paths = sorted(str(p) for p in clips.iterdir())
    try:
        list(pool.submit(paths[0]))  # children started before timing
        list(pool.drain())
        started = time.perf_counter()
        for path in paths:
            list(pool.submit(path))
        list(pool.drain())
        return time.perf_counter() - started
    finally:
        pool.close()


def _job(name: str, clips: Path, extra: tuple[str, ...] = ()) -> dict:
    run = featurize(f"pipelining-{name}", clips, batch_size=BATCH_SIZE, extra=extra)
    manifest = json.loads((WORK_DIR / "runs" / f"pipelining-{name}" / "manifest.json").read_text())
    return {"videos": run.videos, "frames": run.frames, "wall_s": run.job.wall_s, "cpu_s": run.job.cpu_s,
            "peak_rss_mb": run.job.peak_rss_mb, "load_before": run.job.load_before, "cores": manifest.get("cores")}


def measure(rounds: int = 1) -> dict:
    small, large = clip_set(SMALL_PER_CLASS, SEED), clip_set(LARGE_PER_CLASS, SEED)
    one = WORK_DIR / "pipelining-one"
    shutil.rmtree(one, ignore_errors=True)
    one.mkdir(parents=True)
    first = sorted(p for p in small.rglob("*") if p.is_file() and p.suffix in (".mp4", ".avi"))[0]
    shutil.copyfile(first, one / first.name)
    hd = hd_clips()
    bare = BareDefaultEmbedder(load_frames(large, 320))
    result: dict = {"cpu_model": cpu_model(), "load_start": load_average(), "engine": bare.options.engine,
                    "precision": bare.options.precision, "rounds": []}
    for r in range(rounds):
        log(f"pipelining round {r + 1}/{rounds}, load {load_average()}")
        entry: dict = {"bare": []}

        def bracketed(name: str, clips: Path, extra: tuple[str, ...] = ()) -> dict:
            """The job with the bare embedder measured just before and just after it: its own bare rate."""
            before = bare.frames_per_s(2.0)
            job = _job(name, clips, extra)
            after = bare.frames_per_s(2.0)
            entry["bare"] += [before, after]
            return dict(job, bare_frames_per_s=(before + after) / 2)

        entry["job_60"] = bracketed("60", small)
        entry["job_300"] = bracketed("300", large)
        entry["job_300_one_decoder"] = bracketed("300-d1", large, ("--decoders", "1"))
        two = ("--direct_num_workers", "2", "--direct_running_mode", "multi_processing")
        entry["job_300_two_processes"] = bracketed("300-mp", large, two)
        entry["job_60_two_processes"] = bracketed("60-mp", small, two)
        entry["job_one_clip"] = bracketed("one", one)
        entry["job_hd"] = bracketed("hd", hd)
        entry["decode_hd_alone_s"] = decode_alone_s(hd)
        j60, j300 = entry["job_60"], entry["job_300"]
        bare_fps = (j60["bare_frames_per_s"] + j300["bare_frames_per_s"]) / 2
        marginal = (j300["frames"] - j60["frames"]) / (j300["wall_s"] - j60["wall_s"])
        m300, m60 = entry["job_300_two_processes"], entry["job_60_two_processes"]
        marginal_two = (m300["frames"] - m60["frames"]) / (m300["wall_s"] - m60["wall_s"])
        hd_frames = entry["job_hd"]["frames"]
        embed_hd_alone_s = hd_frames / entry["job_hd"]["bare_frames_per_s"]
        limit = max(entry["decode_hd_alone_s"], embed_hd_alone_s)
        beyond_startup = entry["job_hd"]["wall_s"] - entry["job_one_clip"]["wall_s"]
        entry.update(
            bare_frames_per_s=bare_fps, marginal_frames_per_s=marginal, marginal_vs_bare=marginal / bare_fps,
            whole_frames_per_s=j300["frames"] / j300["wall_s"],
            whole_vs_bare=j300["frames"] / j300["wall_s"] / j300["bare_frames_per_s"],
            two_processes_vs_one=entry["job_300_two_processes"]["wall_s"] / j300["wall_s"],
            # The line through the 60- and 300-clip jobs: frames/s as the job runs, and the seconds it costs
            # whatever the number of videos (start-up and exit), for 2 processes and for one.
            two_processes_marginal_vs_one=marginal_two / marginal,
            two_processes_fixed_s=m300["wall_s"] - m300["frames"] / marginal_two,
            one_process_fixed_s=j300["wall_s"] - j300["frames"] / marginal,
            one_decoder_vs_planned=entry["job_300_one_decoder"]["wall_s"] / j300["wall_s"],
            rss_growth_60_to_300=j300["peak_rss_mb"] / j60["peak_rss_mb"],
            embed_hd_alone_s=embed_hd_alone_s, hd_limit_s=limit, hd_beyond_startup_s=beyond_startup,
            hd_vs_limit=beyond_startup / limit, load_end=load_average(),
        )
        log(f"  bare {[round(b) for b in entry['bare']]} f/s; marginal {marginal:.0f} f/s "
            f"({entry['marginal_vs_bare']:.2f}); whole {entry['whole_frames_per_s']:.0f} f/s "
            f"({entry['whole_vs_bare']:.2f}); 2 processes {entry['two_processes_vs_one']:.2f}x the time of one; "
            f"HD {beyond_startup:.1f}s vs limit {limit:.1f}s; RSS 60 {j60['peak_rss_mb']:.0f} MB, 300 "
            f"{j300['peak_rss_mb']:.0f} MB")
        result["rounds"].append(entry)
    keys = ("marginal_vs_bare", "whole_vs_bare", "two_processes_vs_one", "rss_growth_60_to_300", "hd_vs_limit",
            "bare_frames_per_s", "marginal_frames_per_s", "whole_frames_per_s", "two_processes_marginal_vs_one",
            "two_processes_fixed_s", "one_process_fixed_s")
    result["median"] = {k: statistics.median(r[k] for r in result["rounds"]) for k in keys}
    result["load_end"] = load_average()
    return result


def check(p: dict, add) -> None:
    """The issue's targets, from the medians of the rounds."""
    m = p["median"]
    add("36a. marginal frames/s of featurize between 60 and 300 short clips, over the bare default embedder",
        f">= {TARGETS['marginal_vs_bare']}", f"{m['marginal_vs_bare']:.2f}", m["marginal_vs_bare"] >= TARGETS["marginal_vs_bare"],
        f"{m['marginal_frames_per_s']:.0f} against {m['bare_frames_per_s']:.0f} frames/s")
    add("36b. the whole command for 300 short clips, over the bare default embedder", f">= {TARGETS['whole_vs_bare']}",
        f"{m['whole_vs_bare']:.2f}", m["whole_vs_bare"] >= TARGETS["whole_vs_bare"],
        f"{m['whole_frames_per_s']:.0f} frames/s")
    add("36c. 10 of the 60 s 720p clips: the job beyond start-up over its limit (decode alone or embed alone)",
        f"<= {TARGETS['hd_vs_limit']}x", f"{m['hd_vs_limit']:.2f}x", m["hd_vs_limit"] <= TARGETS["hd_vs_limit"], "")
    add("36d. --direct_num_workers 2 multi_processing: its time over one worker's (300 clips)",
        f"<= {TARGETS['two_workers_vs_one']}", f"{m['two_processes_vs_one']:.2f}",
        m["two_processes_vs_one"] <= TARGETS["two_workers_vs_one"],
        f"as the job runs 2 processes give {m['two_processes_marginal_vs_one']:.2f}x the frames/s of one; "
        f"what a job costs whatever its videos (start-up, exit): {m['two_processes_fixed_s']:.1f} s against "
        f"{m['one_process_fixed_s']:.1f} s" if "two_processes_fixed_s" in m else "")
    add("36e. peak RSS of the job's processes, 300 clips over 60", f"<= {TARGETS['rss_growth']}",
        f"{m['rss_growth_60_to_300']:.2f}", m["rss_growth_60_to_300"] <= TARGETS["rss_growth"], "")


def markdown(p: dict) -> list[str]:
    lines = ["", "## Decoding ahead of the embedder, cores planned once (issue 36)", "",
             f"CPU: {p['cpu_model']}; load average at the start {p['load_start']}, at the end {p['load_end']}; "
             f"bare embedder: {p['engine']} {p['precision']} on ready batches of {BATCH_SIZE}, measured for 2 s just "
             "before and just after each job (a job's bare rate is the mean of its two; the marginal rate's is the "
             "mean of the 60- and 300-clip jobs'). Every bare figure of a round is listed: their spread says how "
             "much the load moved while it ran.", "",
             "| round | load before 300 | bare f/s | marginal f/s (vs bare) | whole 300 f/s (vs bare) | 2 processes / 1 "
             "| HD beyond start-up / limit | peak RSS 60 / 300 (MB) | decoders x threads, embed threads "
             "| 300 with --decoders 1 / planned | every bare f/s, in order |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for number, r in enumerate(p["rounds"], 1):
        c = r["job_300"]["cores"] or {}
        lines.append(
            f"| {number} | {r['job_300']['load_before']} | {r['bare_frames_per_s']:.0f} | "
            f"{r['marginal_frames_per_s']:.0f} ({r['marginal_vs_bare']:.2f}) | {r['whole_frames_per_s']:.0f} "
            f"({r['whole_vs_bare']:.2f} of {r['job_300'].get('bare_frames_per_s', r['bare_frames_per_s']):.0f}) | {r['job_300_two_processes']['wall_s']:.1f} s / {r['job_300']['wall_s']:.1f} s "
            f"= {r['two_processes_vs_one']:.2f} | {r['hd_beyond_startup_s']:.1f} s / {r['hd_limit_s']:.1f} s "
            f"(decode alone {r['decode_hd_alone_s']:.1f} s, embed alone {r['embed_hd_alone_s']:.1f} s) = "
            f"{r['hd_vs_limit']:.2f} | {r['job_60']['peak_rss_mb']:.0f} / {r['job_300']['peak_rss_mb']:.0f} | "
            f"{c.get('decoders')} x {c.get('decoder_threads')}, {c.get('embed_threads')} | "
            f"{r['job_300_one_decoder']['wall_s']:.1f} s / {r['job_300']['wall_s']:.1f} s = "
            f"{r['one_decoder_vs_planned']:.2f} | {', '.join(f'{b:.0f}' for b in r.get('bare', []))} |")
    for number, r in enumerate(p["rounds"], 1):
        spread = max(r.get("bare", [1])) / min(r.get("bare", [1]))
        if spread > 1.5:
            lines += ["", f"Round {number}: the bare embedder's rate moved {spread:.1f}x within the round (other work "
                      "on the same cores): its ratios cannot judge the targets fairly; re-run on a quiet machine."]
    return lines
