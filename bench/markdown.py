"""RESULTS.md from the results `python -m bench.run` measures (and keeps in bench/results.json): the targets, then
one section per benchmark with its figures, its method and the provenance of cached results."""

from __future__ import annotations

import math


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _header(results: dict) -> list[str]:
    m, s = results["machine"], results["settings"]
    changes = m["git"]["uncommitted_product_files"]
    return [
        "# Benchmark results",
        "",
        f"Written by `python -m bench.run --{s['mode']}` on {results['finished_at']}; the run took "
        f"{results['wall_s'] / 60:.1f} minutes. What the figures mean for the product's defaults and design, and "
        "what was tried and did not help, is in [docs/FINDINGS.md](../docs/FINDINGS.md).",
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
        "thumbnails and writes the HTML report; its steady rate is counted from the progress lines it logs. The model "
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
        "different path, and paths end a few points apart as different seeds do (docs/FINDINGS.md), so the "
        "storage question is answered by the same model on both encodings of the test records: "
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
        "pair.",
        "",
    ]


def _gap(cosine_gap: float) -> str:
    """A min cosine written with the digits its gap to 1 needs (at most 7: float32 features)."""
    if cosine_gap < 5e-8:
        return "1.0000000"
    digits = min(7, max(4, 1 - math.floor(math.log10(cosine_gap))))
    return f"{1 - cosine_gap:.{digits}f}"


def _engines(e: dict) -> list[str]:
    rates, cpu, ratio, fid = e["frames_per_s"], e["cpu_s_per_frame"], e["vs_tensorflow"], e["fidelity"]
    m = e.get("machine", {})
    when = (f"`python -m bench.run --only engines` ({e['mode']}) on {e['finished_at']}, {e['wall_s'] / 60:.1f} minutes, "
            f"load average {e['load_start']} at its start and {e['load_end']} at its end"
            if "wall_s" in e else f"this run ({e['mode']}), finished {e['finished_at']}, load average {e['load_end']} at its end")
    lines = [
        f"## 8. Engines (issue 22): the bare embedder per engine and precision, batch {e['batch_size']}, 128x128",
        "",
        f"Measured by {when}. CPU: {e['cpu_model']}; flags {' '.join(e['cpu_flags'])}; OpenVINO finds "
        f"{', '.join(e['openvino_capabilities']) or 'nothing (not importable)'}"
        + (f"; OpenVINO {m['packages'].get('openvino')}, NNCF {m['packages'].get('nncf')}" if m else "") + ". "
        f"`--engine auto --precision auto` chose **{e['default']}** here. Each round times every engine in turn on "
        f"the same {e['frames']} frames of generated clips (at least 3 s each, after a warm-up call), then the "
        f"reference; median of {len(e['rounds'])} rounds. int8 is calibrated on {e['calibration']['frames']} frames "
        f"of {e['calibration']['clips']} other clips (seed {e['calibration']['seed']}), as a job calibrates on its own "
        "inputs. `--weights random` (no ImageNet weights on this machine): fidelity is that of the seeded random "
        "network, whose features reach "
        f"{fid['tensorflow f32']['reference_max_abs']:.2f}.",
        "",
        "Ratios are the median of each round's ratio (engines timed seconds apart); frames/s the median of the rounds.",
        "",
        "| engine | frames/s | vs TF fp32 | CPU s/frame | min cosine vs TF fp32 | max abs diff (of the largest feature) |",
        "|---|---|---|---|---|---|",
    ]
    for name in fid:
        lines.append(f"| {name}{' (default)' if name == e['default'] else ''} | {rates[name]:.1f} | {ratio[name]:.2f}x | "
                     f"{cpu[name]:.4f} | {_gap(fid[name]['cosine_gap'])} | {fid[name]['max_abs']:.2g} "
                     f"({100 * fid[name]['max_abs_relative']:.2g}%) |")
    lines.append(f"| reference: one `predict()` per frame (TF; the default engine is "
                 f"{e['default_vs_reference']:.1f}x this) | {rates['reference']:.2f} | "
                 f"{rates['reference'] / rates['tensorflow f32']:.2f}x | {cpu['reference']:.4f} | 1.0 | 0 |")
    lines += ["", "| round | 1-min load before | " + " | ".join(fid) + " | reference |",
              "|---|---|" + "---|" * (len(fid) + 1)]
    for i, r in enumerate(e["rounds"], 1):
        lines.append(f"| {i} | {r['load_before'][0]} | " + " | ".join(f"{r[n]['frames_per_s']:.1f}" for n in fid)
                     + f" | {r['reference']['frames_per_s']:.2f} |")
    lab = e["labelling"]
    lines += ["", "A classifier trained in the benchmark's process (150 epochs) on TF fp32 features of the timed clips, "
              "applied to the features each engine gives of the calibration clips:", "",
              "| engine | labels identical to TF fp32's | largest probability difference | accuracy |", "|---|---|---|---|"]
    for name, v in lab.items():
        lines.append(f"| {name} | {100 * v['labels_identical']:.0f}% | {v['max_probability_difference']:.1e} | "
                     f"{100 * v['accuracy']:.0f}% |")
    t = e.get("threads") or {}
    if t:
        lines += ["", f"Threads: the default engine ({t['precision']}) on 1 thread and on every core, alone and beside a "
                  "child process that decodes clips without pause, as the job's decoder child does while other worker "
                  f"threads feed it (alone it decodes {t['decoder_alone_frames_per_s']:.0f} frames/s); medians of "
                  f"{len(t['rounds'])} interleaved rounds:", "",
                  "| OpenVINO threads | alone frames/s | beside the decoder | the decoder meanwhile |", "|---|---|---|---|"]
        for name, v in t.items():
            if name.startswith("threads="):
                lines.append(f"| {name.split('=')[1]} | {v['alone_frames_per_s']:.1f} | "
                             f"{v['beside_decoder_frames_per_s']:.1f} | {v['decoder_frames_per_s']:.1f} |")
    if e["jobs"]:
        lines += ["", "| featurize job on the 8N clips | steady frames/s | whole-job frames/s | wall s |", "|---|---|---|---|"]
        for name, j in e["jobs"].items():
            lines.append(f"| `--engine {name.split()[0]} --precision {name.split()[1]}` | "
                         f"{j['steady_state']['frames_per_s']:.1f} | {j['whole_job_frames_per_s']:.1f} | {j['wall_s']:.0f} |")
    else:
        lines += ["", "The featurize job per engine is not measured yet: `beam_jobs.featurize` has no `--engine` flag "
                  "in this tree."]
    return lines + [""]


def scale_table(s: dict) -> list[str]:
    lines = ["| run | pipeline graph bytes | launcher peak RSS | whole-job peak RSS | wall | report.html | "
             "labelled this run | labels.csv = from scratch | load before |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in s["runs"].items():
        equal = r.get("labels_equal_from_scratch")
        same = "" if equal is None else ("yes" if equal else f"no ({r['rows_differing_from_scratch']} rows)")
        if equal and r.get("rows_differing_as_text"):
            same += (f" ({r['rows_differing_as_text']} rows in the 6th decimal, at most "
                     f"{r['largest_probability_difference']:.0e})")
        lines.append(f"| {name.replace('_', ' ')} | {r['graph_bytes']:,} | {r['launcher_peak_rss_mb']} MB | "
                     f"{r['whole_job_peak_rss_mb']} MB | {r['wall_s']} s | {r['report_bytes'] / 1024:.0f} KB | "
                     f"{r['labelled_this_run']:,} of {r['videos_labelled']:,} | {same} | {r['load_before'][0]} |")
    return lines


def _scale(s: dict) -> list[str]:
    cpu = s.get("machine", {}).get("cpu_model", "")
    lines = ["## Bucket scale: scheduled re-runs of `python -m beam_jobs.predict` (issues 23, 35)", "",
             f"N videos as hard links of {s['sources']} generated clips, a previous finished run of the same model "
             "in the job's own format, DirectRunner in one process (so the whole job's RSS includes the runner's "
             "buffers: a distributed runner spreads them over workers). The launcher works out what changed by a "
             "streaming merge of the listing with the previous index (beam_jobs.plan); a re-run with nothing to do "
             "builds no pipeline (graph 0 bytes; its launcher's peak RSS is the process's at exit), otherwise the "
             "launcher's peak RSS is taken as the pipeline starts. The removed-and-changed run starts from a "
             "previous run whose rows are a from-scratch run's (each source clip labelled by a real run) but for "
             "1,000 stale rows and 1,000 videos no longer there (see bench/scale.py). `python -m bench.scale` runs "
             f"it alone. CPU: {cpu}. Load at the end: {s.get('load_end')}.", ""]
    return lines + scale_table(s) + [""]


def write_markdown(results: dict) -> str:
    lines = _header(results) + _targets(results)
    if "featurize" in results:
        f, a = results["featurize"], results["accuracy"]
        lines += (_featurize(f) + _training(results["training"]) + _labelling(f, results["labelling"])
                  + _accuracy(f, a))
    if "engines" in results:
        lines += _engines(results["engines"])
    if "scale" in results:
        lines += _scale(results["scale"])
    if "decoding" in results:
        from bench.decoding import markdown

        lines += markdown(results["decoding"])
    if "segments" in results:
        from bench.segments import markdown

        lines += markdown(results["segments"])
    if "runners" in results:
        from bench.runners import markdown

        lines += markdown(results["runners"])
    if "pipelining" in results:
        from bench.pipelining import markdown

        lines += markdown(results["pipelining"])
    if "training_scale" in results:  # written by `python -m bench.training_scale --merge`, kept as it rendered
        lines += ["", *results["training_scale"]["markdown"]]
    return "\n".join(lines) + "\n"
