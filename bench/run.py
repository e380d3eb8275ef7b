"""Run every benchmark of issue 6, check its targets, and write bench/RESULTS.md and bench/results.json.

    python -m bench.run            # --quick (the default; what `make bench` runs): under 10 minutes on
                                   # 2 idle cores once the accuracy runs are cached
    python -m bench.run --full     # bigger N, more runs and seeds; the accuracy runs take long the first time
    python -m bench.run --refresh  # rebuild every cached clip set, record set and accuracy run it uses
    python -m bench.run --render   # measure nothing: rewrite RESULTS.md from results.json and ANALYSIS.md

Targets are checked here and printed as PASS/FAIL; nothing here is a timed test of `make test`. The first
run featurizes the accuracy clips and trains the accuracy models, which takes far longer than 10 minutes on
2 cores; those results are cached under bench/_work/cache (see bench.harness: keyed by parameters, with
their provenance) and reused. bench/ANALYSIS.md (written by hand: what the profile shows, what to change)
is appended to RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

from bench import accuracy, harness, labelling, throughput, training
from bench.data import clip_set
from bench.harness import REPO, load_average, log, machine, median

RESULTS_MD = REPO / "bench" / "RESULTS.md"
RESULTS_JSON = REPO / "bench" / "results.json"
ANALYSIS_MD = REPO / "bench" / "ANALYSIS.md"
THROUGHPUT_SEED = 21
UCF101_TOP5_TRAIN_VIDEOS = 594  # the training set of the keras-io example: a realistic job size


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much each benchmark measures; `--quick` and `--full` differ only here."""

    mode: str
    per_class: int  # N = 6 * per_class clips; the large set is 8N
    rounds: int  # featurize rounds: bare model, job on 8N, bare model, job on N, reference
    bare_frames: int
    reference_frames: int
    batch_size: int
    train_videos: int
    train_epochs: int
    train_runs: int
    accuracy_sizes: tuple[int, ...]
    accuracy_seeds: tuple[int, ...]
    float16_seeds: tuple[int, ...]
    test_per_class: int
    labelling_runs: int


QUICK = Settings("quick", per_class=2, rounds=3, bare_frames=320, reference_frames=40, batch_size=32,
                 train_videos=600, train_epochs=4, train_runs=1, accuracy_sizes=(10, 20, 30, 60),
                 accuracy_seeds=(0,), float16_seeds=(0,), test_per_class=20, labelling_runs=1)
FULL = Settings("full", per_class=4, rounds=3, bare_frames=640, reference_frames=100, batch_size=32,
                train_videos=600, train_epochs=8, train_runs=3, accuracy_sizes=(10, 20, 30, 60),
                accuracy_seeds=(0, 1, 2), float16_seeds=(0, 1, 2), test_per_class=20, labelling_runs=3)

TARGETS = {
    "featurize_vs_bare": 0.9,
    "speedup_vs_reference": 10.0,
    "memory_ratio_8n_vs_n": 1.2,
    "test_accuracy": 0.97,
    "shuffled_test_accuracy": 0.40,
    "float16_accuracy_points": 0.5,
}


def rounded(value, digits=5):
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def _median_of(rounds: list[dict], path: str) -> float:
    values = []
    for entry in rounds:
        for key in path.split("."):
            entry = entry[key]
        values.append(entry)
    return median(values)


def featurize_benchmarks(s: Settings, accuracy_result: dict) -> dict:
    """Benchmarks 1, 2, 3 and the record sizes of 6; also checks the cached accuracy records still come out
    of today's code."""
    small = clip_set(s.per_class, THROUGHPUT_SEED)
    large = clip_set(8 * s.per_class, THROUGHPUT_SEED)  # clip i is the same in both sets
    log("building the bare DenseNet121 and the reference extractor in this process")
    frames = throughput.load_frames(large, max(s.bare_frames, s.reference_frames))
    bare = throughput.BareModel(s.batch_size)
    reproduced = accuracy.reproduce_records(bare.embedder, Path(accuracy_result["test_records"]),
                                            Path(accuracy_result["test_clips"]))
    reference = throughput.ReferenceExtractor()
    rounds = []
    for r in range(s.rounds):
        log(f"featurize round {r + 1}/{s.rounds}")
        bare_before = bare.measure(frames[: s.bare_frames])
        large_run = throughput.featurize(f"featurize-8n-r{r}", large, batch_size=s.batch_size)
        bare_after = bare.measure(frames[: s.bare_frames])
        small_run = throughput.featurize(f"featurize-n-r{r}", small, batch_size=s.batch_size)
        reference_run = reference.measure(frames[: s.reference_frames])
        # The bare rate is taken just before and just after the job it is compared with.
        bare_run = {key: (bare_before[key] + bare_after[key]) / 2 for key in ("frames_per_s", "cpu_s_per_frame")}
        bare_run.update(before=bare_before, after=bare_after)
        steady = large_run.steady_state()
        rounds.append({
            "bare": bare_run, "job_8n": large_run.summary(), "job_n": small_run.summary(),
            "reference": reference_run,
            "steady_vs_bare": steady["frames_per_s"] / bare_run["frames_per_s"],
            "steady_vs_bare_cpu": bare_run["cpu_s_per_frame"] / steady["cpu_s_per_frame"],
            "whole_job_vs_bare": large_run.whole_job_frames_per_s / bare_run["frames_per_s"],
            "steady_vs_reference": steady["frames_per_s"] / reference_run["frames_per_s"],
            "whole_job_vs_reference": large_run.whole_job_frames_per_s / reference_run["frames_per_s"],
            "memory_ratio_rss": large_run.job.peak_rss_mb / small_run.job.peak_rss_mb,
            "memory_ratio_pss": large_run.job.peak_pss_mb / small_run.job.peak_pss_mb,
            "load_after": load_average(),
        })
        log(f"round {r + 1}: bare {bare_run['frames_per_s']:.1f} frames/s, job steady {steady['frames_per_s']:.1f} "
            f"frames/s ({rounds[-1]['steady_vs_bare']:.2f}x), whole job {large_run.whole_job_frames_per_s:.1f} "
            f"frames/s, reference {reference_run['frames_per_s']:.2f} frames/s")
    del bare, reference

    log("featurize with --feature-encoding float16 (record size)")
    float16_run = throughput.featurize("featurize-n-float16", small, encoding="float16", batch_size=s.batch_size)

    def med(path: str) -> float:
        return _median_of(rounds, path)

    n_videos, large_videos = rounds[0]["job_n"]["videos"], rounds[0]["job_8n"]["videos"]
    # Whole-job time as a line in the number of frames, through the medians at N and 8N.
    t_small, t_large = med("job_n.wall_s"), med("job_8n.wall_s")
    f_small, f_large = rounds[0]["job_n"]["frames"], rounds[0]["job_8n"]["frames"]
    marginal = (f_large - f_small) / (t_large - t_small)
    startup = t_small - f_small / marginal
    frames_per_video = f_large / large_videos
    ucf_frames = UCF101_TOP5_TRAIN_VIDEOS * frames_per_video
    float32_bytes = med("job_n.bytes_per_video")
    float16_bytes = float16_run.summary()["bytes_per_video"]
    return {
        "clips": {"n": n_videos, "8n": large_videos, "frames_per_video": frames_per_video,
                  "seed": THROUGHPUT_SEED, "n_dir": str(small), "8n_dir": str(large)},
        "batch_size": s.batch_size,
        "bare_frames_per_s": med("bare.frames_per_s"),
        "bare_cpu_s_per_frame": med("bare.cpu_s_per_frame"),
        "job_steady_frames_per_s": med("job_8n.steady_state.frames_per_s"),
        "job_steady_cpu_s_per_frame": med("job_8n.steady_state.cpu_s_per_frame"),
        "job_8n_whole_frames_per_s": med("job_8n.whole_job_frames_per_s"),
        "job_8n_whole_videos_per_s": med("job_8n.whole_job_videos_per_s"),
        "job_8n_wall_s": t_large,
        "job_n_wall_s": t_small,
        "job_n_whole_frames_per_s": med("job_n.whole_job_frames_per_s"),
        "first_record_after_s": med("job_8n.first_record_after_s"),
        "linear_fit": {"startup_s": startup, "marginal_frames_per_s": marginal,
                       "ucf101_top5_train_videos": UCF101_TOP5_TRAIN_VIDEOS,
                       "ucf101_top5_whole_job_frames_per_s": ucf_frames / (startup + ucf_frames / marginal)},
        "steady_vs_bare": med("steady_vs_bare"),
        "steady_vs_bare_cpu": med("steady_vs_bare_cpu"),
        "whole_job_vs_bare": med("whole_job_vs_bare"),
        "reference_frames_per_s": med("reference.frames_per_s"),
        "reference_frames_measured": s.reference_frames,
        "steady_vs_reference": med("steady_vs_reference"),
        "whole_job_vs_reference": med("whole_job_vs_reference"),
        "peak_rss_mb_n": med("job_n.peak_rss_mb"),
        "peak_rss_mb_8n": med("job_8n.peak_rss_mb"),
        "peak_pss_mb_n": med("job_n.peak_pss_mb"),
        "peak_pss_mb_8n": med("job_8n.peak_pss_mb"),
        "memory_ratio_rss": med("memory_ratio_rss"),
        "memory_ratio_pss": med("memory_ratio_pss"),
        "peak_processes": rounds[0]["job_8n"]["peak_processes"],
        "bytes_per_video": {"float32": float32_bytes, "float16": float16_bytes,
                            "float16_over_float32": float16_bytes / float32_bytes},
        "accuracy_records_reproduced_max_abs_diff": reproduced,
        "rounds": rounds,
        "float16_job": float16_run.summary(),
    }


def labelling_benchmark(s: Settings, clips: Path, model: Path) -> dict:
    runs = [labelling.label_videos(f"predict-8n-r{r}", clips, model, s.batch_size) for r in range(s.labelling_runs)]
    return {
        "runs": len(runs), "videos": runs[0]["videos"],
        **{k: median(r[k] for r in runs) for k in ("wall_s", "whole_job_videos_per_s", "labelled_as_folder_class",
                                                    "steady_state_videos_per_s", "peak_rss_mb")},
        "each": runs,
    }


def check_targets(results: dict) -> list[dict]:
    f, a = results["featurize"], results["accuracy"]
    checks = []

    def add(name, goal, measured, passed, detail):
        checks.append({"target": name, "goal": goal, "measured": measured, "pass": bool(passed), "detail": detail})

    add("1. featurize end to end vs bare DenseNet121 (steady state, frames/s)", ">= 0.90x",
        f"{f['steady_vs_bare']:.2f}x", f["steady_vs_bare"] >= TARGETS["featurize_vs_bare"],
        f"job {f['job_steady_frames_per_s']:.1f} vs bare {f['bare_frames_per_s']:.1f} frames/s; by CPU time per "
        f"frame {f['steady_vs_bare_cpu']:.2f}x; whole job incl. start-up on {f['clips']['8n']} clips "
        f"{f['whole_job_vs_bare']:.2f}x")
    add("2. ours vs the reference (one predict() per frame)", ">= 10x", f"{f['steady_vs_reference']:.1f}x",
        f["steady_vs_reference"] >= TARGETS["speedup_vs_reference"],
        f"reference {f['reference_frames_per_s']:.2f} frames/s; whole job incl. start-up "
        f"{f['whole_job_vs_reference']:.1f}x")
    add("3. peak RSS of the job's process tree, 8N / N clips", "<= 1.2", f"{f['memory_ratio_rss']:.2f}",
        f["memory_ratio_rss"] <= TARGETS["memory_ratio_8n_vs_n"],
        f"{f['peak_rss_mb_8n']:.0f} MB at {f['clips']['8n']} clips vs {f['peak_rss_mb_n']:.0f} MB at "
        f"{f['clips']['n']}; PSS ratio {f['memory_ratio_pss']:.2f}")
    top = max(a["by_training_size"], key=lambda x: x["per_class"])
    add(f"7a. test accuracy, {top['per_class']} training clips per class, default settings", ">= 97%",
        f"{100 * top['test_accuracy_median']:.1f}%", top["test_accuracy_median"] >= TARGETS["test_accuracy"],
        f"median of {top['runs']} seed(s) {top['seeds']} on {a['test_videos']} unseen clips")
    add("7b. the same models with the test frames shuffled in time", "<= 40%",
        f"{100 * top['shuffled_test_accuracy_median']:.1f}%",
        top["shuffled_test_accuracy_median"] <= TARGETS["shuffled_test_accuracy"],
        "chance is 16.7%; 50% for a model that tells the pairs apart but not the order (section 7)")
    diff = a["same_model_float16_minus_float32_points"]
    add("6. float16 records: accuracy within 0.5 points of float32 (the same model on the test records stored "
        "both ways)", "at most 0.5 points either way", f"{diff:+.2f} points", abs(diff) <= TARGETS["float16_accuracy_points"],
        f"{100 * a['same_model_float16_test_accuracy']:.1f}% vs {100 * a['same_model_float32_test_accuracy']:.1f}%, "
        f"{100 * a['same_model_predictions_agree']:.1f}% of predictions identical; retrained on float16 records: "
        f"{a['float16_minus_float32_points']:+.2f} points ({100 * a['float16']['test_accuracy_median']:.1f}% vs "
        f"{100 * a['float32_same_seeds_test_accuracy']:.1f}%, seeds {a['float16']['seeds']}); "
        f"{f['bytes_per_video']['float16_over_float32']:.2f}x the bytes")
    return checks


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _header(results: dict) -> list[str]:
    m, s = results["machine"], results["settings"]
    changes = m["git"]["uncommitted_product_files"]
    return [
        "# Benchmark results",
        "",
        f"Written by `python -m bench.run --{s['mode']}` on {results['finished_at']}; the run took "
        f"{results['wall_s'] / 60:.1f} minutes.",
        "",
        f"- Machine: {m['usable_cores']} usable cores ({m['logical_cores']} logical), {m['cpu_model']}, "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}.",
        f"- Software: Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".",
        f"- Code: HEAD {m['git']['head']}" + (f", with uncommitted changes to {', '.join(changes)}" if changes else "")
        + ".",
        f"- Load average (1, 5, 15 min): {results['load_start']} at the start, {results['load_end']} at the end; "
        f"1-minute load before the measured jobs: {results['load_min']} to {results['load_max']}. The machine is "
        "shared with other engineers' test runs, so absolute rates move with their load; each ratio is taken "
        "between measurements made a minute or two apart in this run (the bare model right before and after "
        "the job it is compared with).",
        "",
    ]


def _targets(results: dict) -> list[str]:
    lines = ["## Targets", "", "| target | goal | measured | result | detail |", "|---|---|---|---|---|"]
    for c in results["targets"]:
        verdict = "PASS" if c["pass"] else "**FAIL**"
        lines.append(f"| {c['target']} | {c['goal']} | {c['measured']} | {verdict} | {c['detail']} |")
    return lines + [""]


def _featurize(f: dict) -> list[str]:
    n, n8, per_video = f["clips"]["n"], f["clips"]["8n"], f["clips"]["frames_per_video"]
    fit = f["linear_fit"]
    lines = [
        f"## 1-3. Featurize: DirectRunner, `--weights random`, batch {f['batch_size']}, 20 frames per clip at 128x128",
        "",
        f"Clips from the sample generator (seed {f['clips']['seed']}): N = {n} and 8N = {n8} clips of 24-72 frames, "
        f"96x72 to 320x240, mp4v/XVID/MJPG. Median of {len(f['rounds'])} rounds; a round is: bare model, job on 8N, "
        "bare model, job on N, reference. Jobs run as `python -m beam_jobs.featurize` in a subprocess; the bare "
        "model and the reference run in the benchmark's own process.",
        "",
        "| what | frames/s | videos/s | CPU s/frame |",
        "|---|---|---|---|",
        f"| bare DenseNet121: the product's `FrameEmbedder` on ready batches (the limit) | "
        f"{f['bare_frames_per_s']:.1f} | {f['bare_frames_per_s'] / per_video:.2f} | {f['bare_cpu_s_per_frame']:.4f} |",
        f"| featurize job, steady state (while records are written: 10-90% of the output) | "
        f"{f['job_steady_frames_per_s']:.1f} | {f['job_steady_frames_per_s'] / per_video:.2f} | "
        f"{f['job_steady_cpu_s_per_frame']:.4f} |",
        f"| featurize job, whole job on 8N = {n8} clips ({f['job_8n_wall_s']:.0f} s, start-up included) | "
        f"{f['job_8n_whole_frames_per_s']:.1f} | {f['job_8n_whole_videos_per_s']:.2f} | |",
        f"| featurize job, whole job on N = {n} clips ({f['job_n_wall_s']:.0f} s, start-up included) | "
        f"{f['job_n_whole_frames_per_s']:.1f} | {f['job_n_whole_frames_per_s'] / per_video:.2f} | |",
        f"| reference: one `predict()` per frame ({f['reference_frames_measured']} frames a round; decoding "
        f"not counted) | {f['reference_frames_per_s']:.2f} | {f['reference_frames_per_s'] / per_video:.3f} | |",
        "",
        f"- **Steady state / bare = {f['steady_vs_bare']:.2f}x** (by CPU seconds per frame "
        f"{f['steady_vs_bare_cpu']:.2f}x). The whole job on {n8} clips, start-up included, reaches "
        f"{f['whole_job_vs_bare']:.2f}x of bare.",
        f"- **Steady state / reference = {f['steady_vs_reference']:.1f}x**; whole job on {n8} clips / reference = "
        f"{f['whole_job_vs_reference']:.1f}x. The reference is favoured: it gets a warm-up call, `verbose=0` and no "
        "decoding.",
        f"- Start-up (imports, DenseNet121 build and tracing, decoder start): the first record is written "
        f"{f['first_record_after_s']:.0f} s after launch. The line through the N and 8N medians is "
        f"{fit['startup_s']:.0f} s + frames / {fit['marginal_frames_per_s']:.1f} frames/s, so on the "
        f"{fit['ucf101_top5_train_videos']} videos of the UCF101 top-5 training set a user would see "
        f"{fit['ucf101_top5_whole_job_frames_per_s']:.1f} frames/s for the whole job.",
        f"- Peak memory of the job's process tree (sampled every 0.2 s): RSS {f['peak_rss_mb_n']:.0f} MB at N, "
        f"{f['peak_rss_mb_8n']:.0f} MB at 8N (**ratio {f['memory_ratio_rss']:.2f}**); PSS, which counts pages "
        f"shared between processes once, {f['peak_pss_mb_n']:.0f} / {f['peak_pss_mb_8n']:.0f} MB (ratio "
        f"{f['memory_ratio_pss']:.2f}); at most {f['peak_processes']} processes.",
        "",
        "| round | 1-min load before | bare frames/s (before/after) | steady frames/s | steady/bare | "
        "whole-job 8N frames/s | reference frames/s | RSS N / 8N MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(f["rounds"], 1):
        b = r["bare"]
        lines.append(
            f"| {i} | {r['job_8n']['load_before'][0]} | {b['before']['frames_per_s']:.1f} / "
            f"{b['after']['frames_per_s']:.1f} | {r['job_8n']['steady_state']['frames_per_s']:.1f} | "
            f"{r['steady_vs_bare']:.2f} | {r['job_8n']['whole_job_frames_per_s']:.1f} | "
            f"{r['reference']['frames_per_s']:.2f} | {r['job_n']['peak_rss_mb']:.0f} / "
            f"{r['job_8n']['peak_rss_mb']:.0f} |")
    return lines + [""]


def _training(t: dict) -> list[str]:
    return [
        f"## 4. Training: `python -m model.train`, batch {t['batch_size']}, synthetic feature records",
        "",
        f"{t['videos']} videos ({t['num_train_examples']} train, {t['num_val_examples']} validation by the default "
        f"0.15 split), {t['epochs_per_run']} epochs a run (`--patience 0`), {len(t['runs'])} run(s): "
        f"**{t['seconds_per_epoch']:.1f} s per epoch, {t['train_examples_per_s']:.0f} training examples/s**. An epoch "
        "is timed as the user waits for it (training pass, validation pass, per-epoch checkpoints), from the "
        "trainer's per-epoch TensorBoard summaries, median over epochs 2 onwards. The whole command for "
        f"{t['epochs_per_run']} epochs took {t['whole_command_s']:.0f} s (start-up, record scan, export of model.keras "
        "and the SavedModel included).",
        "",
    ]


def _labelling(f: dict, lab: dict) -> list[str]:
    per_video = f["clips"]["frames_per_video"]
    steady = lab["steady_state_videos_per_s"]
    return [
        "## 5. Labelling: `python -m beam_jobs.predict`, videos -> labels.csv",
        "",
        "| job | clips | wall s | whole-job videos/s | steady videos/s | peak RSS MB |",
        "|---|---|---|---|---|---|",
        f"| featurize (medians above) | {f['clips']['8n']} | {f['job_8n_wall_s']:.1f} | "
        f"{f['job_8n_whole_videos_per_s']:.2f} | {f['job_steady_frames_per_s'] / per_video:.2f} | "
        f"{f['peak_rss_mb_8n']:.0f} |",
        f"| predict ({lab['runs']} run(s), median) | {lab['videos']} | {lab['wall_s']:.1f} | "
        f"{lab['whole_job_videos_per_s']:.2f} | {'n/a' if steady is None else f'{steady:.2f}'} | "
        f"{lab['peak_rss_mb']:.0f} |",
        "",
        "Predict does what featurize does up to the features, then classifies with RunInference, decodes "
        "thumbnails and writes the HTML report; its steady rate is counted from the thumbnails it stages. The model "
        f"is the accuracy benchmark's (30 clips per class, seed 0); it gave {pct(lab['labelled_as_folder_class'])} "
        "of these clips, which it never saw, their folder's class.",
        "",
    ]


def _accuracy(f: dict, a: dict) -> list[str]:
    lines = [
        "## 6. Record size",
        "",
        f"| encoding | bytes per video (20 frames x 1024) | test accuracy, {a['float16']['per_class']} clips per class |",
        "|---|---|---|",
        f"| float32 (default) | {f['bytes_per_video']['float32']:.0f} | {pct(a['float32_same_seeds_test_accuracy'])} |",
        f"| float16 (`--feature-encoding float16`) | {f['bytes_per_video']['float16']:.0f} | "
        f"{pct(a['float16']['test_accuracy_median'])} |",
        "",
        "Bytes per video: the finished shards (TFRecord framing included) over their videos, from real featurize runs "
        "on the same N clips. Accuracy: models of the same seeds trained and tested on the same records re-encoded "
        "as float16 (what `--feature-encoding float16` writes for the same features). A retrained model follows a "
        "different path (training here swings by several points from one epoch to the next, see ANALYSIS.md), so "
        "the storage question is answered by the same model on both encodings of the test records: "
        f"{pct(a['same_model_float32_test_accuracy'])} (float32) vs {pct(a['same_model_float16_test_accuracy'])} "
        f"(float16), {pct(a['same_model_predictions_agree'])} of the predictions identical, probabilities within "
        f"{a['same_model_max_probability_difference']:.1e}.",
        "",
        "## 7. Accuracy (issue 3): default `model.train` settings, `--weights random`",
        "",
        f"Training clips: sample generator seed {a['train_clips_seed']}, the first k clips of each of the 6 classes; "
        f"test: {a['test_videos']} other clips (seed {a['test_clips_seed']}, {a['test_per_class']} per class) that no "
        "model saw. Time-shuffled: each test record's valid frames permuted (seeded), same models. Chance is 16.7%.",
        "",
        *_shuffled_pairs(a),
        "| clips per class | training videos after the 15% validation split | seeds | test accuracy: median (each) "
        "| time-shuffled: median (each) | epochs run |",
        "|---|---|---|---|---|---|",
    ]
    for x in a["by_training_size"] + [a["float16"]]:
        name = f"{x['per_class']}" + (" (float16)" if x["encoding"] == "float16" else "")
        lines.append(
            f"| {name} | {x['train_examples']} | {x['seeds']} | {pct(x['test_accuracy_median'])} "
            f"({', '.join(pct(v) for v in x['test_accuracy_each'])}) | {pct(x['shuffled_test_accuracy_median'])} "
            f"({', '.join(pct(v) for v in x['shuffled_test_accuracy_each'])}) | {x['epochs_run_each']} |")
    made = sorted({(r["made_at"], r["git_head"]) for r in a["runs"]})
    changed = sorted({p for r in a["runs"] for p in r["changed_sources_since"]})
    records_changed = sorted({p for rec in a["records"].values() for p in rec["changed_sources"]})
    lines += [
        "",
        f"Featurizing the {a['train_videos_all']} + {a['test_videos']} accuracy clips and training these models takes "
        f"far longer than 10 minutes on 2 cores the first time ({sum(r['wall_s'] for r in a['runs']) / 60:.0f} minutes "
        "of training alone here), so records and finished runs are cached under bench/_work/cache. "
        + ("This run took every accuracy figure from that cache: " if a["all_cached"] else "Runs made: ")
        + "; ".join(f"{when} at {head}" for when, head in made) + ". "
        + (f"Trainer sources changed since: {', '.join(changed)}. " if changed else
           "No source that decides these runs has changed since. ")
        + (f"Featurize sources changed since the records were made: {', '.join(records_changed)}; " if records_changed
           else "")
        + "Today's code recomputes the features of the first cached test records to within "
        f"{f['accuracy_records_reproduced_max_abs_diff']:.1e} (max abs difference). `--refresh` rebuilds them all.",
        "",
    ]
    return lines


def _shuffled_pairs(a: dict) -> list[str]:
    """What the time-shuffled score is made of: the pair of reversed classes, then the order within it."""
    split = a.get("shuffled_pairs")
    if not split:
        return []
    test, shuffled = split["test"], split["shuffled"]
    return [
        "The classes come in pairs that show the same frames in opposite order, so a shuffled clip can only be told "
        "apart from its reverse by order: a model that reads order falls to 50% within the pair, and a model that "
        "also tells every pair apart by content scores about 50% overall, above the 40% of target 7b. Split that way, "
        f"the model of {split['model']} puts {pct(shuffled['right_pair'])} of the shuffled clips in the right pair "
        f"and labels {pct(shuffled['right_class_within_right_pair'])} of those right (on the unshuffled test clips: "
        f"{pct(test['right_pair'])} and {pct(test['right_class_within_right_pair'])}). So it reads order, and it "
        "stays under 40% partly because shuffled clips, unlike any it was trained on, often look to it like another "
        "pair. ANALYSIS.md section 7g has more.",
        "",
    ]


def write_markdown(results: dict) -> str:
    f, a = results["featurize"], results["accuracy"]
    lines = (_header(results) + _targets(results) + _featurize(f) + _training(results["training"])
             + _labelling(f, results["labelling"]) + _accuracy(f, a))
    if ANALYSIS_MD.exists():
        lines += [ANALYSIS_MD.read_text().rstrip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the default: fits in 10 minutes once cached")
    mode.add_argument("--full", action="store_true", help="more clips, runs and seeds")
    parser.add_argument("--refresh", action="store_true", help="rebuild the cached clips, records and accuracy runs")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing; rewrite RESULTS.md from results.json (after editing ANALYSIS.md)")
    args = parser.parse_args(argv)
    if args.render:
        RESULTS_MD.write_text(write_markdown(json.loads(RESULTS_JSON.read_text())))
        print(f"wrote {RESULTS_MD.relative_to(REPO)} from {RESULTS_JSON.relative_to(REPO)}")
        return 0
    settings = FULL if args.full else QUICK
    harness.REFRESH["enabled"] = args.refresh
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.monotonic()
    results: dict = {"settings": dataclasses.asdict(settings), "machine": machine(), "load_start": load_average()}
    log(f"{settings.mode} benchmarks on {results['machine']['usable_cores']} cores, load {results['load_start']}")

    results["accuracy"] = accuracy.accuracy(list(settings.accuracy_sizes), list(settings.accuracy_seeds),
                                            list(settings.float16_seeds), settings.test_per_class)
    results["featurize"] = featurize_benchmarks(settings, results["accuracy"])
    log("training speed")
    results["training"] = training.training_speed(settings.train_videos, settings.train_epochs, settings.train_runs)
    log("labelling")
    results["labelling"] = labelling_benchmark(settings, Path(results["featurize"]["clips"]["8n_dir"]),
                                               Path(results["accuracy"]["labelling_model"]))

    results["load_end"] = load_average()
    loads = [r[job]["load_before"][0] for r in results["featurize"]["rounds"] for job in ("job_8n", "job_n")]
    results["load_min"], results["load_max"] = min(loads), max(loads)
    results["wall_s"] = time.monotonic() - started
    results["finished_at"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    results["targets"] = check_targets(results)
    results = rounded(results)
    RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
    RESULTS_MD.write_text(write_markdown(results))

    print()
    for c in results["targets"]:
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['target']}: {c['measured']} (goal {c['goal']}); {c['detail']}")
    print(f"\nwrote {RESULTS_MD.relative_to(REPO)} and {RESULTS_JSON.relative_to(REPO)} "
          f"in {results['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
