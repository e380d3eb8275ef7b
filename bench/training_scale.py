"""Training at scale (issues 24 and 38): `model.train` at 2,000, 20,000 and 200,000 videos of 1024-d features,
with the cache `--cache auto` chooses at each, and the memory cache's cost at its budget.

    python -m bench.training_scale                   # the three sizes and the budget, 2 epochs each
    python -m bench.training_scale --sizes 2000      # a quick look

The records are synthetic and in the schema: random float16 features of FRAMES x FEATURE_DIM (DenseNet121's
1024), 6 labels, 10..FRAMES valid frames, shards of SHARD_SIZE records, with labels.txt and the manifest.json
featurize writes, `split_counts` included (tfrecords_schema.split_counts). They are generated once under
bench/_work/training_scale/ and reused.

Each training run is a child process (`--child`) that does what model.loop does up to the end of `fit`:
counts the records (from the manifest), builds the datasets and the classifier, and fits 2 epochs with
model.loop.fit at the product's defaults otherwise (batch 32, moving average, 8 heads), timing the steps with
a callback; it reports its own peak RSS (VmHWM), and bench.harness.run_job samples its process tree's. The
runs: `--cache auto` at every size, and at the budget (the most videos `auto` still caches in memory,
model.datasets.memory_cache_bytes); beside each run that cached in memory, the bare run (`--cache none`) at
the same size, so that the cache's cost is peak RSS minus the bare run's, against the decoded bytes it holds
(issue 38's bound: at most 1.25x). `--counting` also times the counting pass a manifest without split counts
needs.

- time before the first step: from the child's start (TensorFlow imported) to the end of the first training
  step, which includes counting, building the model, the first batch's reading and the step's compilation;
- examples/s: training examples per second of training steps after the first (validation left out);
- peak RSS: the child's VmHWM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench.harness import WORK_DIR, load_average, log, machine, python_module, run_job

SIZES = (2_000, 20_000, 200_000)
FEATURE_DIM, FRAMES = 1024, 20
LABELS = ("archery", "bowling", "diving", "fencing", "punch", "rowing")
SHARD_SIZE = 1000
EPOCHS, BATCH_SIZE = 2, 32
CACHED_REFERENCE = 20_000
WORK = WORK_DIR / "training_scale"
TARGETS = {"rss_growth": 1.25, "rate_vs_cached": 0.9, "first_step_growth": 1.25, "cache_cost": 1.25}


# --- Records -------------------------------------------------------------------------------------------


def records_dir(size: int, dim: int, frames: int) -> Path:
    return WORK / f"records-{size}-{frames}x{dim}"


def make_records(size: int, dim: int, frames: int) -> Path:
    """`size` synthetic records in shards of SHARD_SIZE, with labels.txt and manifest.json (written last: its
    presence means the set is complete)."""
    import numpy as np
    import tensorflow as tf

    from tfrecords_schema import RecordSpec, VideoRecord, encode_video_record, write_vocabulary
    from tfrecords_schema.dataset import MANIFEST_FILE, add_split_counts, split_counts

    directory = records_dir(size, dim, frames)
    if (directory / MANIFEST_FILE).exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rng = np.random.default_rng(size)
    num_shards = -(-size // SHARD_SIZE)
    shards, counts = [], None
    for shard in range(num_shards):
        name = f"features-{shard:05d}-of-{num_shards:05d}.tfrecord"
        first, last = shard * SHARD_SIZE, min(size, (shard + 1) * SHARD_SIZE)
        features = rng.standard_normal((last - first, frames, dim), dtype=np.float32).astype(np.float16)
        valid = rng.integers(10, frames + 1, last - first)
        labels = [LABELS[i % len(LABELS)] for i in range(first, last)]
        ids = [f"{label}/v_{label}_{i:07d}.avi" for label, i in zip(labels, range(first, last))]
        with tf.io.TFRecordWriter(str(directory / name)) as writer:
            for j in range(last - first):
                rows = features[j].astype(np.float32)
                rows[valid[j]:] = 0.0
                writer.write(encode_video_record(VideoRecord(
                    video_id=ids[j], uri=f"file:///videos/{ids[j]}", label=labels[j], features=rows,
                    num_valid_frames=int(valid[j]), frame_indices=list(range(int(valid[j]))), source_fps=25.0,
                    decoded_frame_count=100, frame_height=240, frame_width=320, backbone_id="synthetic",
                    image_size=224), feature_encoding="float16"))
        part = split_counts(ids, labels)
        counts = part if counts is None else add_split_counts(counts, part)
        shards.append(name)
    write_vocabulary(str(directory / "labels.txt"), LABELS)
    spec = RecordSpec(dim, frames, "synthetic", 224, feature_encoding="float16")
    import dataclasses

    manifest = {"job": "featurize", "records_written": size, "labels": sorted(LABELS), "shards": shards,
                "record_spec": dataclasses.asdict(spec), "split_counts": counts, "synthetic": True}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    log(f"wrote {size} records ({_size_mb(directory):.0f} MB) in {time.monotonic() - started:.0f} s")
    return directory


def _size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.iterdir()) / 1e6


# --- One training run (the child) ----------------------------------------------------------------------


def child(records: str, cache: str, epochs: int, output: str, max_steps: int = 0) -> None:
    """One run; with `max_steps`, one epoch of that many steps (a throughput probe, not a whole epoch)."""
    started = time.monotonic()
    import dataclasses

    import keras

    from model import loop
    from model.callbacks import TrainingState
    from model.classifier import ClassifierConfig, build_classifier, compile_classifier
    from model.config import TrainConfig
    from model.data import load_training_data
    from model.datasets import cache_directory, decoded_bytes, model_datasets, record_errors, resolve_cache

    config = TrainConfig(train=(records,), output=output, epochs=epochs, patience=0, start_from_epoch=0,
                         batch_size=BATCH_SIZE, cache=cache)
    imported = time.monotonic()
    data = load_training_data(config.train, validation_split=config.validation_split)
    counted = time.monotonic() - imported
    loop.seed_everything(config.seed)
    timer = step_timer()
    cache = resolve_cache(cache, data)
    with cache_directory(cache) as cache_dir, record_errors(data.train.spec):
        datasets = model_datasets(data, config.batch_size, config.seed, cache, 0, config.epochs, cache_dir)
        if max_steps:
            datasets = datasets._replace(steps_per_epoch=min(max_steps, datasets.steps_per_epoch))
            config = dataclasses.replace(config, epochs=1)
        ready = time.monotonic() - started
        spec = data.train.spec
        model = compile_classifier(build_classifier(ClassifierConfig(
            num_classes=len(data.vocabulary), max_seq_length=spec.max_seq_length, feature_dim=spec.feature_dim,
            num_heads=config.num_heads)), config.learning_rate, config.ema_momentum)
        staging = os.path.join(output, "staging")
        tracker = TrainingState(staging, config.patience, {}, None, config.lr_patience, config.start_from_epoch)
        loop.fit(model, datasets, tracker, config, os.path.join(staging, "logs"), extra_callbacks=[timer])
    epochs = config.epochs
    steps = datasets.steps_per_epoch * epochs
    examples = min(steps * BATCH_SIZE, data.num_train * epochs) - BATCH_SIZE  # after the first step
    result = {
        "records": data.train.num_records, "train_examples": data.num_train, "val_examples": data.num_validation,
        "cache": datasets.cache, "counted_from": data.train.counted_from, "epochs": epochs,
        "decoded_mb": round(data.train.num_records * decoded_bytes(data.train.spec) / 1e6, 1),
        "count_s": round(counted, 2), "datasets_ready_s": round(ready, 2),
        "first_step_done_s": round(timer.first_step_end - started, 2),
        "examples_per_s": round(examples / max(timer.train_seconds - timer.first_step, 1e-9), 1) if steps > 1 else 0.0,
        "cores_used": round(timer.train_cpu_seconds / timer.train_seconds, 2),
        "first_step_s": round(timer.first_step, 2), "steps": steps, "keras": keras.__version__,
        "vm_hwm_mb": round(_vm_hwm_kb() / 1024, 1), "wall_s": round(time.monotonic() - started, 1),
    }
    print("RESULT " + json.dumps(result), flush=True)


def count_child(records: str) -> None:
    """Time the counting pass a manifest without split counts needs (today's featurize)."""
    from model.data import count_records
    from tfrecords_schema import dataset_spec, match_record_files

    started = time.monotonic()
    files = match_record_files([records])
    spec = dataset_spec(files, every_shard=False)
    counts = count_records("training", files, spec, 0.15)
    seconds = round(time.monotonic() - started, 2)
    print("RESULT " + json.dumps({"records": sum(counts.labels.values()), "count_s": seconds,
                                  "vm_hwm_mb": round(_vm_hwm_kb() / 1024, 1)}), flush=True)


def _vm_hwm_kb() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM")).split()[1])


def step_timer():
    """A Keras callback that notes when the first step ended, how long it took, and the seconds of training
    steps (from each epoch's start to its last step's end, validation left out)."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.first_step_end, self.first_step, self.train_seconds, self.train_cpu_seconds = None, 0.0, 0.0, 0.0
            self._epoch_start = self._last_end = self._epoch_cpu = self._last_cpu = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch_start = self._last_end = time.monotonic()
            self._epoch_cpu = self._last_cpu = time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            self._last_end, self._last_cpu = time.monotonic(), time.process_time()
            if self.first_step_end is None:
                self.first_step_end, self.first_step = self._last_end, self._last_end - self._epoch_start

        def on_epoch_end(self, epoch, logs=None):
            self.train_seconds += self._last_end - self._epoch_start
            self.train_cpu_seconds += self._last_cpu - self._epoch_cpu

    return StepTimer()


# --- The benchmark -------------------------------------------------------------------------------------


def _run_child(name: str, *args: str) -> dict:
    job = run_job(name, python_module("bench.training_scale", *args)).check()
    line = next(line for line in Path(job.log_path).read_text().splitlines() if line.startswith("RESULT "))
    return {**json.loads(line[len("RESULT "):]), "sampled_peak_rss_mb": round(job.peak_rss_mb, 1),
            "job_wall_s": round(job.wall_s, 1), "load_before": job.load_before}


def budget_size(dim: int = FEATURE_DIM, frames: int = FRAMES) -> int:
    """The most videos `--cache auto` still caches in memory (model.datasets.memory_cache_bytes)."""
    from model.config import MEMORY_CACHE_BUDGET
    from model.datasets import decoded_bytes, memory_cache_bytes
    from tfrecords_schema import RecordSpec

    spec = RecordSpec(dim, frames, "synthetic", 224, feature_encoding="float16")
    size = MEMORY_CACHE_BUDGET // decoded_bytes(spec)
    while memory_cache_bytes(size, spec) > MEMORY_CACHE_BUDGET:
        size -= 1
    return size


def run(sizes=SIZES, dim: int = FEATURE_DIM, frames: int = FRAMES, epochs: int = EPOCHS, at_budget: bool = True,
        counting: bool = False, steps: int = 0) -> dict:
    """The runs (see the module docstring); with `steps`, each run is one epoch of at most that many steps and
    its validation pass (peak RSS: the memory cache is filled before the first step, streaming is flat)."""
    started = time.monotonic()
    result = {"feature_dim": dim, "frames": frames, "epochs": 1 if steps else epochs, "steps": steps,
              "batch_size": BATCH_SIZE,
              "shard_size": SHARD_SIZE, "load_before": load_average(), "runs": [], "counting": []}
    sizes = tuple(sizes) + ((budget_size(dim, frames),) if at_budget else ())
    result["budget_size"] = sizes[-1] if at_budget else None
    for size in sizes:
        directory = make_records(size, dim, frames)
        result.setdefault("records_mb", {})[str(size)] = round(_size_mb(directory))
    for size in sizes:
        for cache in ("auto", "none"):
            log(f"training on {size} records, --cache {cache}")
            output = WORK / "runs" / f"{size}-{cache}"
            run_result = _run_child(f"training-scale-{size}-{cache}", "--child", str(records_dir(size, dim, frames)),
                                    "--cache", cache, "--epochs", str(epochs), "--output", str(output),
                                    "--max-steps", str(steps))
            result["runs"].append({"size": size, "asked": cache, **run_result})
            log(json.dumps(result["runs"][-1]))
            if run_result["cache"] != "memory":
                break  # auto streamed: that is the bare run
    for size in sizes if counting else ():
        counting = _run_child(f"training-scale-count-{size}", "--count", str(records_dir(size, dim, frames)))
        result["counting"].append({"size": size, **counting})
    result["load_after"] = load_average()
    result["seconds"] = round(time.monotonic() - started)
    result["targets"] = targets(result)
    return result


def probe(sizes, dim: int, frames: int, steps: int) -> dict:
    """Streamed at the largest size against cached at CACHED_REFERENCE, `steps` steps each, alternating
    (cached, streamed, cached, streamed): on a shared machine, runs next to each other see the same load."""
    large = max(sizes)
    pairs = []
    for _ in range(2):
        pair = {}
        for size, cache in ((CACHED_REFERENCE, "memory"), (large, "none")):
            run = _run_child(f"training-scale-probe-{size}-{cache}", "--child", str(records_dir(size, dim, frames)),
                             "--cache", cache, "--max-steps", str(steps), "--output",
                             str(WORK / "runs" / f"probe-{size}-{cache}"))
            pair[f"{size}_{cache}"] = {k: run[k] for k in ("examples_per_s", "cores_used", "vm_hwm_mb",
                                                           "load_before")}
            log(json.dumps(pair))
        pair["ratio"] = round(pair[f"{large}_none"]["examples_per_s"] /
                              pair[f"{CACHED_REFERENCE}_memory"]["examples_per_s"], 3)
        pairs.append(pair)
    return {"steps": steps, "feature_dim": dim, "frames": frames, "pairs": pairs}


def targets(result: dict) -> list[dict]:
    """The issues' targets where the runs measured them, as bench.run's check_targets lists them."""
    streamed = {r["size"]: r for r in result["runs"] if r["cache"] == "none"}
    cached = {r["size"]: r for r in result["runs"] if r["cache"] == "memory"}
    small, large = (streamed[min(streamed)], streamed[max(streamed)]) if streamed else (None, None)
    checks = []

    def add(name, goal, measured, passed, detail):
        checks.append({"target": name, "goal": goal, "measured": measured, "pass": bool(passed), "detail": detail})

    for size, memory in sorted(cached.items()):
        if (bare := streamed.get(size)) is None:
            continue
        cost = (memory["vm_hwm_mb"] - bare["vm_hwm_mb"]) / memory["decoded_mb"]
        at = " (the budget)" if size == result.get("budget_size") else ""
        add(f"38-7. memory cache's cost at {size:,} videos{at}: peak RSS minus the bare run's, per decoded byte",
            f"<= {TARGETS['cache_cost']}x", f"{cost:.2f}x", cost <= TARGETS["cache_cost"],
            f"{memory['vm_hwm_mb']:,.0f} MB cached vs {bare['vm_hwm_mb']:,.0f} MB bare; {memory['decoded_mb']:,.0f} "
            f"MB decoded")
    if small and large and small is not large:
        ratio = large["vm_hwm_mb"] / small["vm_hwm_mb"]
        add(f"24a. training peak RSS at {large['size']:,} vs {small['size']:,} videos, streamed",
            f"<= {TARGETS['rss_growth']}x", f"{ratio:.2f}x", ratio <= TARGETS["rss_growth"],
            f"{large['vm_hwm_mb']:,.0f} vs {small['vm_hwm_mb']:,.0f} MB")
        growth = large["first_step_done_s"] / small["first_step_done_s"]
        add(f"24c. time before the first step at {large['size']:,} vs {small['size']:,} videos, with manifests",
            f"<= {TARGETS['first_step_growth']}x (flat)", f"{growth:.2f}x", growth <= TARGETS["first_step_growth"],
            f"{large['first_step_done_s']:.1f} vs {small['first_step_done_s']:.1f} s (counting "
            f"{large['count_s']:.2f} vs {small['count_s']:.2f} s)")
    reference = cached.get(CACHED_REFERENCE)
    if large and reference:
        ratio = large["examples_per_s"] / reference["examples_per_s"]
        add(f"24b. examples/s at {large['size']:,} streamed vs {reference['size']:,} cached in memory",
            f">= {TARGETS['rate_vs_cached']}x", f"{ratio:.2f}x", ratio >= TARGETS["rate_vs_cached"],
            f"{large['examples_per_s']:,.0f} vs {reference['examples_per_s']:,.0f} examples/s; load before "
            f"{large['load_before']} and {reference['load_before']}" + _per_core(large, reference))
    return checks


def _per_core(large: dict, cached: dict) -> str:
    """Examples per CPU-second of the training process: what a shared machine's other load leaves aside."""
    if "cores_used" not in large or "cores_used" not in cached:
        return ""
    rates = [r["examples_per_s"] / r["cores_used"] for r in (large, cached)]
    return f"; per core-second {rates[0]:,.0f} vs {rates[1]:,.0f} ({rates[0] / rates[1]:.2f}x)"


def markdown(result: dict) -> list[str]:
    """The Markdown section: one row per run, the counting passes, the targets."""
    machine_line = result.get("machine", {}).get("cpu_model", "")
    lines = ["## Training from sharded records (issues 24 and 38)", "",
             f"`python -m bench.training_scale`: synthetic records of {result['frames']} x {result['feature_dim']} "
             f"float16 features, 6 labels, {result['shard_size']:,} a shard, with featurize's manifest.json and "
             f"split counts; {result['epochs']} epoch(s)"
             + (f" of at most {result['steps']} steps" if result.get("steps") else "")
             + f" at batch {result['batch_size']} and a validation pass, 15% held out; "
             f"{machine_line}. Load average {result['load_before']} before, {result.get('load_after')} after. "
             f"`--cache auto` at each size"
             + (f" and at the budget ({result['budget_size']:,} videos, the most it caches in memory)"
                if result.get("budget_size") else "")
             + "; beside each run that cached in memory, the bare run (`--cache none`).", "",
             "| videos | asked | cache | peak RSS | decoded | examples/s | cores used | before the first step | "
             "of which counting | records | load before |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['size']:,} | {r.get('asked', r['cache'])} | {r['cache']} | {r['vm_hwm_mb']:,.0f} MB | "
                     f"{r.get('decoded_mb', float('nan')):,.0f} MB | {r['examples_per_s']:,.0f} | "
                     f"{r.get('cores_used', float('nan')):.2f} | {r['first_step_done_s']:.1f} s | "
                     f"{r['count_s']:.1f} s | {result['records_mb'][str(r['size'])]:,} MB | {r['load_before']} |")
    if result.get("counting"):
        lines += ["", "Without split counts in the manifest (today's featurize), the records are counted first: "
                  + ", ".join(f"{c['size']:,}: {c['count_s']:.1f} s" for c in result["counting"]) + "."]
    lines += ["", "| target | goal | measured | result | detail |", "|---|---|---|---|---|"]
    lines += [f"| {c['target']} | {c['goal']} | {c['measured']} | {'PASS' if c['pass'] else '**FAIL**'} | "
              f"{c['detail']} |" for c in result["targets"]]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.training_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda text: tuple(int(x) for x in text.split(",")), default=SIZES)
    parser.add_argument("--feature-dim", type=int, default=FEATURE_DIM)
    parser.add_argument("--frames", type=int, default=FRAMES)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", default=str(WORK / "training_scale"), help="writes OUT.json and OUT.md")
    parser.add_argument("--steps", type=int, default=0,
                        help="each run one epoch of at most STEPS steps (peak RSS, not throughput over epochs)")
    parser.add_argument("--no-budget", action="store_true", help="skip the runs at the memory cache's budget")
    parser.add_argument("--merge", action="store_true",
                        help="also put this section into bench/results.json and re-render bench/RESULTS.md")
    parser.add_argument("--counting", action="store_true",
                        help="also time the counting pass a manifest without split counts needs")
    parser.add_argument("--child", metavar="RECORDS", help=argparse.SUPPRESS)
    parser.add_argument("--count", metavar="RECORDS", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--max-steps", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--probe", type=int, default=0, metavar="STEPS",
                        help="instead: alternate runs of STEPS steps cached at 20,000 and streamed at the largest "
                             "size, twice, to compare their rates under the same load")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.cache, args.epochs, args.output, args.max_steps)
        return 0
    if args.probe:
        result = {"machine": machine(), **probe(args.sizes, args.feature_dim, args.frames, args.probe)}
        Path(args.out + "-probe.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result["pairs"], indent=1))
        return 0
    if args.count:
        count_child(args.count)
        return 0
    result = {"machine": machine(), **run(args.sizes, args.feature_dim, args.frames, args.epochs,
                                          not args.no_budget, args.counting, args.steps)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=1))
    Path(args.out + ".md").write_text("\n".join(markdown(result)) + "\n")
    print("\n".join(markdown(result)))
    if args.merge:
        from bench.markdown import write_markdown
        from bench.run import RESULTS_JSON, RESULTS_MD

        results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
        results["training_scale"] = {"markdown": markdown(result), "machine": result["machine"]}
        RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
        RESULTS_MD.write_text(write_markdown(results))
    return 0 if all(t["pass"] for t in result["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
