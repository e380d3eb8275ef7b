"""Accuracy (benchmark 7 of issue 6, targets of issue 3) and the accuracy side of the feature encodings
(benchmark 6).

Training clips (seed 11) and test clips (seed 12) come from the sample-clip generator, so the model never
sees a test clip; both are featurized with `--weights random` by the featurize job. Each run trains with
`python -m model.train` at its default settings (60 warm-up epochs, then early stopping with patience 30, up
to 200 epochs, batch 32, validation split 0.15 by video id), only `--seed` set, on the first k clips per class
of the training set, and reports its test accuracy. The time-shuffled control evaluates the same model on the
test records with each record's valid frames permuted (rewritten with the schema's encode/decode). Each
pair of classes shows the same frames in opposite order, so a model that reads order falls to chance within
the pair (1/2) on shuffled clips, and to 1/6 only for the clips it also puts in the wrong pair: a model that
tells the pairs apart by content and reads order scores about 50%. For the kept model the results split the
shuffled accuracy that way (`shuffled_pairs`).

The float16 runs train and test on the same records re-encoded as float16 (`encode_video_record(...,
"float16")`, exactly what `--feature-encoding float16` writes for the same features).

Each finished run is cached with its result, keyed by its records and settings, with its provenance (see
bench.harness): the results say when and at which commit the records and runs were made and which of the
sources that decide them changed since; `python -m bench.run --refresh` makes them again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from bench.data import clip_index, clip_set, featurized, rewrite_records, shuffle_valid_frames
from bench.harness import TRAIN_SOURCES, cached, file_digest, log, median, provenance, python_module, run_job

TRAIN_SEED = 11
TEST_SEED = 12
SHUFFLE_SEED = 5
KEEP_MODEL = (30, 0, "float32")  # the labelling benchmark uses this model


def predict(model_dir: Path, records: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The model directory's labels, its probabilities on the records [N, classes] and the records' label
    ids [N], in record order, in this process."""
    from model.export import load_model_dir
    from tfrecords_schema import make_dataset

    loaded = load_model_dir(str(model_dir))
    probabilities, labels = [], []
    for (features, mask), label_ids in make_dataset(str(records), vocabulary=loaded.labels, batch_size=64):
        probabilities.append(np.asarray(loaded.model.predict_on_batch({"features": features, "mask": mask})))
        labels.append(label_ids.numpy())
    return list(loaded.labels), np.concatenate(probabilities), np.concatenate(labels)


def evaluate(model_dir: Path, records: Path) -> float:
    """Accuracy of the model directory on the records, in this process."""
    _, probabilities, labels = predict(model_dir, records)
    return float((probabilities.argmax(-1) == labels).mean())


def pair_split(labels: list[str], probabilities: np.ndarray, truth: np.ndarray) -> dict:
    """How predictions (`predict`'s output) fall by pair of reversed classes (tools.sample_videos.
    REVERSE_CLASS): the share put in the right pair, and the accuracy on those."""
    from tools.sample_videos import REVERSE_CLASS

    predicted = probabilities.argmax(-1)
    pair = np.array([min(label, REVERSE_CLASS.get(label, label)) for label in labels])
    right_pair = pair[predicted] == pair[truth]
    return {"videos": len(truth), "right_pair": float(right_pair.mean()),
            "right_class_within_right_pair": float((predicted == truth)[right_pair].mean()) if right_pair.any() else 0.0}


def derived_records(train: Path, test: Path, sizes: list[int]) -> dict[str, Path]:
    """Training subsets of k clips per class, the shuffled test set, and float16 copies."""
    def build(directory: Path) -> None:
        for k in sizes:
            n = rewrite_records(train, directory / f"train-{k}", keep=lambda r, k=k: clip_index(r.video_id) < k)
            rewrite_records(directory / f"train-{k}", directory / f"train-{k}-float16", encoding="float16")
            log(f"training subset of {k} clips per class: {n} records")
        rewrite_records(test, directory / "test-shuffled", change=shuffle_valid_frames(SHUFFLE_SEED))
        rewrite_records(test, directory / "test-float16", encoding="float16")
        rewrite_records(directory / "test-shuffled", directory / "test-shuffled-float16", encoding="float16")

    params = {"train": str(train), "test": str(test), "sizes": sizes, "shuffle_seed": SHUFFLE_SEED}
    directory, _ = cached("derived", params, ("bench/data.py", "tfrecords_schema/schema.py"), build)
    sets = {f"train-{k}-{e}": directory / (f"train-{k}" + ("-float16" if e == "float16" else ""))
            for k in sizes for e in ("float32", "float16")}
    sets.update({"test-float32": test, "test-float16": directory / "test-float16",
                 "test-shuffled-float32": directory / "test-shuffled",
                 "test-shuffled-float16": directory / "test-shuffled-float16"})
    return sets


def training_run(sets: dict[str, Path], per_class: int, seed: int, encoding: str) -> tuple[dict, Path]:
    """One default-settings training run and its test accuracies (plain and time-shuffled), cached."""
    train, test = sets[f"train-{per_class}-{encoding}"], sets[f"test-{encoding}"]
    shuffled = sets[f"test-shuffled-{encoding}"]

    def build(directory: Path) -> None:
        name = f"accuracy-{per_class}pc-seed{seed}-{encoding}"
        log(f"training {name} (default settings)")
        model = directory / "model"
        job = run_job(name, python_module("model.train", "--train", str(train), "--test", str(test),
                                          "--output", str(model), "--seed", str(seed))).check()
        metrics = json.loads((model / "metrics.json").read_text())
        result = {
            "per_class": per_class, "seed": seed, "encoding": encoding,
            "train_examples": metrics["num_train_examples"], "val_examples": metrics["num_val_examples"],
            "test_examples": metrics["num_test_examples"],
            "test_accuracy": metrics["test_accuracy"], "val_accuracy": metrics["val_accuracy"],
            "shuffled_test_accuracy": evaluate(model, shuffled),
            "test_accuracy_rechecked": evaluate(model, test),
            "epochs_run": metrics["epochs_run"], "best_epoch": metrics["best_epoch"],
            "train_seconds": metrics["train_seconds"], "wall_s": round(job.wall_s, 1),
            "load_before": job.load_before,
        }
        (directory / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        if (per_class, seed, encoding) != KEEP_MODEL:
            shutil.rmtree(model)
        log(f"{name}: test accuracy {result['test_accuracy']:.3f}, "
            f"time-shuffled {result['shuffled_test_accuracy']:.3f}, {result['epochs_run']} epochs")

    params = {"train": str(train), "test": str(test), "shuffled": str(shuffled), "seed": seed,
              "per_class": per_class, "encoding": encoding,
              # A changed trainer (its defaults included) is a new run, not a stale cache hit.
              "trainer": {path: file_digest(path) for path in TRAIN_SOURCES}}
    directory, hit = cached("training", params, TRAIN_SOURCES, build)
    result = json.loads((directory / "result.json").read_text())
    made = provenance(directory)
    result.update(cached=hit, made_at=made["made_at"], git_head=made["git_head"],
                  changed_sources_since=made["changed_sources"])
    return result, directory / "model"


def accuracy(sizes: list[int], seeds: list[int], float16_seeds: list[int], test_per_class: int) -> dict:
    train_clips = clip_set(max(sizes), TRAIN_SEED)
    test_clips = clip_set(test_per_class, TEST_SEED)
    train = featurized(train_clips, "accuracy-train")
    test = featurized(test_clips, "accuracy-test")
    sets = derived_records(train, test, sizes)

    runs, model_dir = [], None
    for per_class in sorted(sizes, reverse=True):
        for seed in seeds:
            result, model = training_run(sets, per_class, seed, "float32")
            runs.append(result)
            if (per_class, seed, "float32") == KEEP_MODEL:
                model_dir = model
    for seed in float16_seeds:
        runs.append(training_run(sets, max(sizes), seed, "float16")[0])

    def summary(per_class: int, encoding: str) -> dict:
        chosen = [r for r in runs if r["per_class"] == per_class and r["encoding"] == encoding]
        return {
            "per_class": per_class, "encoding": encoding, "runs": len(chosen),
            "seeds": [r["seed"] for r in chosen],
            "test_accuracy_median": median(r["test_accuracy"] for r in chosen),
            "test_accuracy_each": [round(r["test_accuracy"], 4) for r in chosen],
            "shuffled_test_accuracy_median": median(r["shuffled_test_accuracy"] for r in chosen),
            "shuffled_test_accuracy_each": [round(r["shuffled_test_accuracy"], 4) for r in chosen],
            "epochs_run_each": [r["epochs_run"] for r in chosen],
            "train_examples": chosen[0]["train_examples"],
        }

    by_size = [summary(k, "float32") for k in sorted(sizes)]
    float16 = summary(max(sizes), "float16")
    # The encoding comparison pairs runs of the same seeds.
    paired = [r for r in runs if r["per_class"] == max(sizes) and r["encoding"] == "float32"
              and r["seed"] in float16_seeds]
    float32_paired = median(r["test_accuracy"] for r in paired)
    # The storage question alone: the same float32-trained model on the test records stored both ways.
    test32, test16 = predict(model_dir, sets["test-float32"]), predict(model_dir, sets["test-float16"])
    (_, probabilities32, truth32), (_, probabilities16, truth16) = test32, test16
    predicted32, predicted16 = probabilities32.argmax(-1), probabilities16.argmax(-1)
    accuracy32, accuracy16 = float((predicted32 == truth32).mean()), float((predicted16 == truth16).mean())
    return {
        "train_clips_seed": TRAIN_SEED, "test_clips_seed": TEST_SEED, "test_per_class": test_per_class,
        "train_videos_all": runs[0]["train_examples"] + runs[0]["val_examples"],
        "test_videos": runs[0]["test_examples"],
        "records": {name: {k: v for k, v in provenance(path.parent).items() if k != "sources"}
                    for name, path in (("train", train), ("test", test))},
        "by_training_size": by_size,
        "float16": float16,
        "float32_same_seeds_test_accuracy": float32_paired,
        "float16_minus_float32_points": round(100 * (float16["test_accuracy_median"] - float32_paired), 2),
        "same_model_float32_test_accuracy": accuracy32,
        "same_model_float16_test_accuracy": accuracy16,
        "same_model_float16_minus_float32_points": round(100 * (accuracy16 - accuracy32), 2),
        "same_model_predictions_agree": float(np.mean(predicted16 == predicted32)),
        "same_model_max_probability_difference": float(np.abs(probabilities16 - probabilities32).max()),
        "shuffled_pairs": {"model": f"{KEEP_MODEL[0]} clips per class, seed {KEEP_MODEL[1]}",
                           "test": pair_split(*test32),
                           "shuffled": pair_split(*predict(model_dir, sets["test-shuffled-float32"]))},
        "runs": runs,
        "labelling_model": str(model_dir) if model_dir else None,
        "test_clips": str(test_clips),
        "test_records": str(test),
        "all_cached": all(r["cached"] for r in runs),
    }


def reproduce_records(embed, records: Path, clips: Path, count: int = 3) -> float:
    """Largest absolute difference between the cached features of the first `count` records and what the
    current code computes for the same clips (`video.frames.decode_and_sample`, then `embed`), so a result
    taken from the cache shows whether today's code still makes the same records."""
    from bench.data import read_records
    from video.frames import decode_and_sample
    from tfrecords_schema import decode_video_record

    worst = 0.0
    for raw in read_records(records)[:count]:
        record = decode_video_record(raw)
        spec_frames = len(record.features)
        frames = decode_and_sample(str(clips / record.video_id), spec_frames, record.image_size, record.sampling).frames
        features = embed(frames)
        worst = max(worst, float(np.abs(features - record.features[: record.num_valid_frames]).max()))
    return worst
