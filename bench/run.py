"""Run every benchmark of issue 6, check its targets, and write bench/RESULTS.md and bench/results.json.

    python -m bench.run            # --quick (the default; what `make bench` runs): under 10 minutes on
                                   # 2 idle cores once the accuracy runs are cached
    python -m bench.run --full     # bigger N, more runs and seeds; the accuracy runs take long the first time
    python -m bench.run --refresh  # rebuild every cached clip set, record set and accuracy run it uses
    python -m bench.run --render   # measure nothing: rewrite RESULTS.md from results.json
    python -m bench.run --only engines  # only the engine benchmark (issue 22), merged into results.json
    python -m bench.run --only scale    # only the bucket-scale re-runs (issues 23, 35), likewise
    python -m bench.run --only decoding # only the long-HD-video decoding benchmark (issue 21), likewise
    python -m bench.run --only segments # only the per-segment labelling benchmark (issue 28), likewise
    python -m bench.run --only runners  # only featurize on Prism vs in process (issue 32), likewise; not
                                        # part of a full run (3 minutes; making its clips first, 15 more)

Targets are checked here and printed as PASS/FAIL; nothing here is a timed test of `make test`. The first
run featurizes the accuracy clips and trains the accuracy models, which takes far longer than 10 minutes on
2 cores; those results are cached under bench/_work/cache (see bench.harness: keyed by parameters, with
their provenance) and reused. What the figures mean for the product's defaults is in docs/FINDINGS.md.
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

from bench import (accuracy, decoding, harness, labelling, pipelining, runners, scale, segments, throughput,
                   training)
from bench.data import clip_set
from bench.harness import REPO, load_average, log, machine, median
from bench.markdown import write_markdown

RESULTS_MD = REPO / "bench" / "RESULTS.md"
RESULTS_JSON = REPO / "bench" / "results.json"
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
    "default_engine_vs_tensorflow": 2.5,
    "default_engine_vs_tensorflow_without_bf16": 1.3,
    "default_engine_vs_reference": 25.0,
    "default_engine_featurize_vs_bare": 0.85,
    "int8_vs_tensorflow": 5.0,
    "engine_probability_difference": 1e-3,
}
ENGINE_CALIBRATION_SEED = THROUGHPUT_SEED + 1  # int8 calibrates on other clips than those it is timed on


def rounded(value, digits=5):
    """Floats to `digits` decimals, and those smaller than 1e-3 to 3 significant digits (a gap to 1 in cosine,
    a max abs difference), so that they do not round to 0."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.3g}") if 0 < abs(value) < 1e-3 else round(value, digits)
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


def _featurize_knows_engines() -> bool:
    from beam_jobs import featurize

    return "--engine" in featurize.build_parser().format_help()


def engine_benchmarks(s: Settings) -> dict:
    """Issue 22: each engine's bare embedder, interleaved with the TF reference and the one-predict-per-frame
    reference, `s.rounds` rounds; fidelity to TF fp32; OpenVINO threads beside a busy decoder; a classifier
    trained on TF features applied to each engine's; and the featurize job per engine once it has --engine."""
    from beam_jobs.calibration import sample_calibration_frames
    from beam_jobs.decode import FrameOptions
    from model import engines

    large = clip_set(8 * s.per_class, THROUGHPUT_SEED)
    calibration_clips = clip_set(s.per_class, ENGINE_CALIBRATION_SEED)
    frames = throughput.load_frames(large, max(s.bare_frames, s.reference_frames))[: s.bare_frames]
    calibration, calibration_videos = sample_calibration_frames(
        [str(p) for p in calibration_clips.rglob("*") if p.suffix in (".mp4", ".avi")],
        FrameOptions(throughput.FRAMES_PER_VIDEO, throughput.IMAGE_SIZE))
    default = engines.resolve("auto", "auto")
    capabilities = list(engines.cpu_capabilities()) if not engines.openvino_import_error() else []
    log(f"engines: default {default}, OpenVINO capabilities {capabilities}, int8 calibrated on "
        f"{len(calibration)} frames of {len(calibration_videos)} clips")
    cases = [c for c in throughput.ENGINE_CASES if c[1] != "bf16" or "BF16" in capabilities]
    models = {f"{e} {p}": throughput.EngineModel(e, p, s.batch_size, calibration if p == "int8" else None)
              for e, p in cases}
    reference = throughput.ReferenceExtractor()
    features = {name: m.embedder(frames) for name, m in models.items()}
    fidelity = {name: throughput.fidelity(f, features["tensorflow f32"]) for name, f in features.items()}
    rounds = []
    for r in range(s.rounds):
        log(f"engine round {r + 1}/{s.rounds}")
        entry = {"load_before": load_average()}
        for name, m in models.items():
            entry[name] = m.measure(frames)
        entry["reference"] = reference.measure(frames[: s.reference_frames])
        rounds.append(entry)
        log("  " + ", ".join(f"{name} {entry[name]['frames_per_s']:.1f}" for name in [*models, "reference"]))
    threads = engine_threads(s, models[" ".join(default)] if default[0] == "openvino" else None, large, frames)
    del reference

    log("engines: a classifier trained on TF features, applied to each engine's features of other clips")
    train_inputs, train_labels, labels = throughput.clip_inputs(models["tensorflow f32"].embedder, large)
    test = {}
    for name, m in models.items():
        test[name], test_labels, _ = throughput.clip_inputs(m.embedder, calibration_clips)
    labelling = throughput.agreement_of_labels(train_inputs, test, labels, train_labels, test_labels)
    del models

    jobs = {}
    if _featurize_knows_engines():
        for engine, precision in (("tensorflow", "f32"), ("auto", "auto")):
            name = f"featurize-8n-engine-{engine}"
            run = throughput.featurize(name, large, batch_size=s.batch_size,
                                       extra=("--engine", engine, "--precision", precision))
            jobs[f"{engine} {precision}"] = run.summary()
    else:
        log("engines: beam_jobs.featurize has no --engine flag yet; the featurize job per engine is not measured")

    def med(name: str, key: str = "frames_per_s") -> float:
        return median(r[name][key] for r in rounds)

    default_name = " ".join(default)
    rates = {name: med(name) for name in [*features, "reference"]}
    # Ratios within each round (measured a few seconds apart), then their median.
    per_round = {name: median(r[name]["frames_per_s"] / r["tensorflow f32"]["frames_per_s"] for r in rounds)
                 for name in features}
    return {
        "cpu_model": harness.cpu_model(), "cpu_flags": harness.cpu_flags(), "openvino_capabilities": capabilities,
        "default": default_name, "batch_size": s.batch_size, "frames": len(frames),
        "calibration": {"frames": len(calibration), "clips": len(calibration_videos), "seed": ENGINE_CALIBRATION_SEED,
                        "digest": engines.calibration_digest(calibration)},
        "frames_per_s": rates,
        "cpu_s_per_frame": {name: med(name, "cpu_s_per_frame") for name in [*features, "reference"]},
        "vs_tensorflow": per_round,
        "default_vs_reference": median(r[default_name]["frames_per_s"] / r["reference"]["frames_per_s"]
                                       for r in rounds),
        "fidelity": fidelity, "labelling": labelling, "threads": threads, "jobs": jobs,
        "job_steady_vs_bare": (jobs["auto auto"]["steady_state"]["frames_per_s"] / rates[default_name]
                               if "auto auto" in jobs else None),
        "rounds": rounds, "load_end": load_average(),
    }


def engine_threads(s: Settings, default_model, clips: Path, frames) -> dict:
    """The default OpenVINO engine on 1 thread and on every core, alone and beside a child process that decodes
    clips without pause (as the job's decoder does while other worker threads feed it), and that decoder's rate
    alone: `s.rounds` interleaved rounds, medians. The embedder's default thread count is chosen from these."""
    if default_model is None:
        return {}
    counts = (1, len(os.sched_getaffinity(0)))
    precision = default_model.embedder.precision
    models = {n: throughput.EngineModel("openvino", precision, s.batch_size, threads=n) for n in counts}
    rounds = []
    for r in range(s.rounds):
        entry = {"load_before": load_average()}
        with throughput.DecoderLoad(clips) as decoder:
            time.sleep(3.0)
            entry["decoder_alone_frames_per_s"] = decoder.rate()
        for n, model in models.items():
            alone = model.measure(frames)["frames_per_s"]
            with throughput.DecoderLoad(clips) as decoder:
                busy = model.measure(frames)["frames_per_s"]
                decoder_rate = decoder.rate()
            entry[f"threads={n}"] = {"alone_frames_per_s": alone, "beside_decoder_frames_per_s": busy,
                                     "decoder_frames_per_s": decoder_rate}
        rounds.append(entry)
        log(f"  threads round {r + 1}: " + "; ".join(
            f"{n} thread(s) alone {entry[f'threads={n}']['alone_frames_per_s']:.1f}, beside the decoder "
            f"{entry[f'threads={n}']['beside_decoder_frames_per_s']:.1f} (decoder "
            f"{entry[f'threads={n}']['decoder_frames_per_s']:.0f})" for n in counts))
    result = {"precision": precision, "rounds": rounds,
              "decoder_alone_frames_per_s": median(r["decoder_alone_frames_per_s"] for r in rounds)}
    for n in counts:
        key = f"threads={n}"
        result[key] = {k: median(r[key][k] for r in rounds) for k in rounds[0][key]}
    return result


def labelling_benchmark(s: Settings, clips: Path, model: Path) -> dict:
    runs = [labelling.label_videos(f"predict-8n-r{r}", clips, model, s.batch_size) for r in range(s.labelling_runs)]
    return {
        "runs": len(runs), "videos": runs[0]["videos"],
        **{k: median(r[k] for r in runs) for k in ("wall_s", "whole_job_videos_per_s", "labelled_as_folder_class",
                                                    "steady_state_videos_per_s", "peak_rss_mb")},
        "each": runs,
    }


def engine_targets(e: dict, add) -> None:
    """Issue 22's targets: ratios within the engine benchmark's own run."""
    default, rates, ratio = e["default"], e["frames_per_s"], e["vs_tensorflow"]
    has_bf16 = "BF16" in e["openvino_capabilities"]
    goal = TARGETS["default_engine_vs_tensorflow" if has_bf16 else "default_engine_vs_tensorflow_without_bf16"]
    add(f"22a. default engine ({default}) vs the TensorFlow embedder, bare", f">= {goal}x",
        f"{ratio[default]:.2f}x", ratio[default] >= goal,
        f"{rates[default]:.1f} vs {rates['tensorflow f32']:.1f} frames/s, {e['cpu_model']}")
    add(f"22b. default engine ({default}) vs the reference (one predict() per frame)",
        f">= {TARGETS['default_engine_vs_reference']:.0f}x", f"{e['default_vs_reference']:.1f}x",
        e["default_vs_reference"] >= TARGETS["default_engine_vs_reference"],
        f"reference {rates['reference']:.2f} frames/s")
    if "openvino int8" in ratio:
        add("22c. int8 vs the TensorFlow embedder, bare", f">= {TARGETS['int8_vs_tensorflow']:.0f}x",
            f"{ratio['openvino int8']:.2f}x", ratio["openvino int8"] >= TARGETS["int8_vs_tensorflow"],
            f"{rates['openvino int8']:.1f} frames/s; min cosine to TF fp32 "
            f"{e['fidelity']['openvino int8']['min_cosine']:.5f}")
    floats = {k: v for k, v in e["labelling"].items() if not k.endswith("int8")}
    worst = max(v["max_probability_difference"] for v in floats.values())
    identical = min(v["labels_identical"] for v in floats.values())
    add("22d. one classifier on each float engine's features (TF f32, OpenVINO f32, bf16): same labels",
        "identical, probabilities within 1e-3", f"{100 * identical:.0f}% identical, {worst:.1e}",
        identical == 1.0 and worst <= TARGETS["engine_probability_difference"],
        "; ".join(f"{k}: accuracy {100 * v['accuracy']:.0f}%" for k, v in e["labelling"].items()))
    if e.get("job_steady_vs_bare") is not None:
        add(f"22e. featurize job with the default engine, steady state vs its bare embedder",
            f">= {TARGETS['default_engine_featurize_vs_bare']}x", f"{e['job_steady_vs_bare']:.2f}x",
            e["job_steady_vs_bare"] >= TARGETS["default_engine_featurize_vs_bare"],
            f"job {e['jobs']['auto auto']['steady_state']['frames_per_s']:.1f} vs bare {rates[default]:.1f} frames/s")


def check_targets(results: dict) -> list[dict]:
    checks = []

    def add(name, goal, measured, passed, detail):
        checks.append({"target": name, "goal": goal, "measured": measured, "pass": bool(passed), "detail": detail})

    if "featurize" in results:
        product_targets(results, add)
    if "engines" in results:
        engine_targets(results["engines"], add)
    if "scale" in results:
        scale_targets(results["scale"], add)
    if "decoding" in results:
        decoding.check(results["decoding"], add)
    if "segments" in results:
        segments.check(results["segments"], add)
    if "runners" in results:
        runners.check(results["runners"], add)
    if "pipelining" in results:
        pipelining.check(results["pipelining"], add)
    return checks


def scale_targets(s: dict, add) -> None:
    runs, t = s["runs"], scale.TARGETS
    with_new = next((r for name, r in runs.items() if name.startswith("200000_") and name.endswith("_new")
                     and not name.endswith("_0_new")), None)
    alone = next((r for name, r in runs.items() if name.endswith("_new_alone")), None)
    if with_new and alone and alone["graph_bytes"]:
        growth = with_new["graph_bytes"] / alone["graph_bytes"] - 1
        add("23a. pipeline graph bytes, 200,000 videos with 1,000 new vs the 1,000 alone", "within 10%",
            f"{100 * growth:+.2f}%", abs(growth) <= t["graph_growth"],
            f"{with_new['graph_bytes']:,} vs {alone['graph_bytes']:,} bytes")
    for size, label, wall, rss in ((200_000, "35a", "rerun_200k_s", "launcher_rss_mb_200k"),
                                   (1_000_000, "35b", "rerun_1m_s", "launcher_rss_mb_1m")):
        rerun = next((r for name, r in runs.items() if name.endswith("_0_new") and size <= r["videos_labelled"]
                      < size * 1.01), None)
        if rerun:
            add(f"{label}. re-run over {size:,} videos, nothing new", f"<= {t[wall]:.0f} s, launcher <= {t[rss]} MB",
                f"{rerun['wall_s']:.1f} s, {rerun['launcher_peak_rss_mb']} MB",
                rerun["wall_s"] <= t[wall] and rerun["launcher_peak_rss_mb"] <= t[rss],
                f"pipeline graph {rerun['graph_bytes']:,} bytes (0: none built); load before {rerun['load_before']}")
    if with_new and alone:
        extra = with_new["wall_s"] - alone["wall_s"]
        add("35c. 200,000 videos with 1,000 new vs the 1,000 alone", f"<= +{t['new_1000_extra_s']:.0f} s",
            f"{extra:+.1f} s", extra <= t["new_1000_extra_s"],
            f"{with_new['wall_s']:.1f} s vs {alone['wall_s']:.1f} s; load before {with_new['load_before']} and "
            f"{alone['load_before']}")
    changed = next((r for name, r in runs.items() if name.endswith("_changed")), None)
    if changed:
        add("35d. 1,000 removed and 1,000 changed at 200,000: labels.csv equals a from-scratch run's", "equal",
            "equal" if changed["labels_equal_from_scratch"] else f"{changed['rows_differing_from_scratch']} rows differ",
            changed["labels_equal_from_scratch"],
            f"every row's cells equal, probabilities within 1e-5 ({changed.get('rows_differing_as_text', '?')} rows "
            f"differ as text, by at most {changed.get('largest_probability_difference', 0):.0e}: the 6th decimal of "
            f"a clip classified in another batch); {changed['wall_s']:.1f} s, {changed['labelled_this_run']:,} "
            f"labelled this run of {changed['videos_labelled']:,}; load before {changed['load_before']}")


def product_targets(results: dict, add) -> None:
    f, a = results["featurize"], results["accuracy"]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the default: fits in 10 minutes once cached")
    mode.add_argument("--full", action="store_true", help="more clips, runs and seeds")
    parser.add_argument("--refresh", action="store_true", help="rebuild the cached clips, records and accuracy runs")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing; rewrite RESULTS.md from results.json")
    parser.add_argument("--only", choices=["engines", "scale", "decoding", "segments", "runners", "pipelining"],
                        help="run only this benchmark and merge it into results.json (the rest is kept)")
    args = parser.parse_args(argv)
    if args.render:
        RESULTS_MD.write_text(write_markdown(json.loads(RESULTS_JSON.read_text())))
        print(f"wrote {RESULTS_MD.relative_to(REPO)} from {RESULTS_JSON.relative_to(REPO)}")
        return 0
    settings = FULL if args.full else QUICK
    harness.REFRESH["enabled"] = args.refresh
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.only == "scale":
        return only_scale()
    if args.only in ONLY_ONE:
        return only_one(args.only)
    if args.only:
        return only_engines(settings)
    started = time.monotonic()
    results: dict = {"settings": dataclasses.asdict(settings), "machine": machine(), "load_start": load_average()}
    log(f"{settings.mode} benchmarks on {results['machine']['usable_cores']} cores, load {results['load_start']}")

    results["accuracy"] = accuracy.accuracy(list(settings.accuracy_sizes), list(settings.accuracy_seeds),
                                            list(settings.float16_seeds), settings.test_per_class)
    results["featurize"] = featurize_benchmarks(settings, results["accuracy"])
    log("engines")
    results["engines"] = engine_benchmarks(settings)
    results["engines"].update(finished_at=_now(), mode=settings.mode)
    log("training speed")
    results["training"] = training.training_speed(settings.train_videos, settings.train_epochs, settings.train_runs)
    log("labelling")
    results["labelling"] = labelling_benchmark(settings, Path(results["featurize"]["clips"]["8n_dir"]),
                                               Path(results["accuracy"]["labelling_model"]))
    log("bucket scale")
    results["scale"] = scale.measure(list(scale.SIZES), scale.NEW)
    log("decoding long HD videos")
    results["decoding"] = decoding.measure()
    log("labels along a long video")
    results["segments"] = segments.measure()
    log("decoding ahead of the embedder")
    results["pipelining"] = pipelining.measure()

    results["load_end"] = load_average()
    loads = [r[job]["load_before"][0] for r in results["featurize"]["rounds"] for job in ("job_8n", "job_n")]
    results["load_min"], results["load_max"] = min(loads), max(loads)
    results["wall_s"] = time.monotonic() - started
    results["finished_at"] = _now()
    results["targets"] = check_targets(results)
    results = rounded(results)
    RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
    RESULTS_MD.write_text(write_markdown(results))

    print()
    _print_targets(results)
    print(f"\nwrote {RESULTS_MD.relative_to(REPO)} and {RESULTS_JSON.relative_to(REPO)} "
          f"in {results['wall_s'] / 60:.1f} min")
    return 0


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def only_engines(settings: Settings) -> int:
    """`--only engines`: measure the engines and merge them into results.json, keeping the rest."""
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    started = time.monotonic()
    load_start = load_average()
    log(f"engine benchmark ({settings.mode}), load {load_start}")
    engines = engine_benchmarks(settings)
    engines.update(load_start=load_start, wall_s=time.monotonic() - started, finished_at=_now(), mode=settings.mode,
                   machine=machine())
    results["engines"] = engines
    for key, value in (("settings", dataclasses.asdict(settings)), ("machine", engines["machine"]),
                       ("load_start", load_start), ("load_end", engines["load_end"]), ("load_min", load_start[0]),
                       ("load_max", engines["load_end"][0]), ("wall_s", engines["wall_s"]),
                       ("finished_at", engines["finished_at"])):
        results.setdefault(key, value)  # a results.json of its own when no full run wrote one
    results["targets"] = check_targets(results)
    results = rounded(results)
    RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
    RESULTS_MD.write_text(write_markdown(results))
    _print_targets(results, "22")
    print(f"wrote {RESULTS_MD.relative_to(REPO)} and {RESULTS_JSON.relative_to(REPO)} "
          f"in {engines['wall_s'] / 60:.1f} min")
    return 0


def only_scale() -> int:
    """`--only scale`: the bucket-scale re-runs, merged into results.json, keeping the rest."""
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    log(f"bucket-scale benchmark, load {load_average()}")
    results["scale"] = scale.measure(list(scale.SIZES), scale.NEW)
    results["scale"]["finished_at"] = _now()
    results.setdefault("machine", results["scale"]["machine"])
    results["targets"] = check_targets(results)
    results = rounded(results)
    RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
    RESULTS_MD.write_text(write_markdown(results))
    _print_targets(results, "23")
    _print_targets(results, "35")
    return 0


ONLY_ONE = {"decoding": (decoding, "21"), "segments": (segments, "28"), "runners": (runners, "32"),
            "pipelining": (pipelining, "36")}


def only_one(name: str) -> int:
    """`--only decoding`, `segments` or `runners`: that benchmark, merged into results.json, keeping the rest."""
    module, issue = ONLY_ONE[name]
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    log(f"{name} benchmark, load {load_average()}")
    results[name] = module.measure()
    results[name].update(finished_at=_now(), machine=machine())
    results.setdefault("machine", results[name]["machine"])
    results["targets"] = check_targets(results)
    results = rounded(results)
    RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
    RESULTS_MD.write_text(write_markdown(results))
    _print_targets(results, issue)
    return 0


def _print_targets(results: dict, prefix: str = "") -> None:
    for c in results["targets"]:
        if c["target"].startswith(prefix):
            print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['target']}: {c['measured']} (goal {c['goal']}); {c['detail']}")


if __name__ == "__main__":
    sys.exit(main())
