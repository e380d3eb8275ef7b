"""Why test accuracy falls short, tried without touching the product: train `python -m model.train` (default
settings) on the accuracy benchmark's records after a change to the features, and evaluate on the test and
time-shuffled test records changed the same way. Not part of `make bench`; quoted in bench/ANALYSIS.md.

    python -m bench.diagnose_accuracy [--per-class 30] [--seed 0] [--variant standardized]

Variants:
  plain         no change: the default recipe on --per-class training clips (e.g. more than the benchmark's 30).
  standardized  every feature dimension shifted and scaled by the mean and standard deviation of the
                training set's valid frames (what a `keras.layers.Normalization` adapted on the training
                records, as the classifier's first layer, would do).
  scaled        all features multiplied by one number, 1 / the standard deviation of all training values,
                so they are on the scale of the positional embedding's initial values and beyond, with
                the relative sizes of the dimensions kept.
  curve         no change to the features: the reference classifier (one head) and the session-3 recipe (Adam
                1e-3, batch 16, the trainer's validation split) trained in this process for --epochs epochs
                without early stopping, with the test accuracy per class and time-shuffled accuracy after
                every epoch: what the model reaches on unseen clips at any epoch, and which classes hold it
                back. With --reduce-lr-on-plateau, the learning rate halves whenever the validation loss has
                not improved for 5 epochs (down to 1e-5): does a settling learning rate lift the test
                accuracy?
                Training-recipe options for the curve, one change at a time against the same seed:
                --learning-rate, --lr-patience N (halve after N epochs without a lower validation loss;
                --reduce-lr-on-plateau is --lr-patience 5), --clipnorm, --position-init-scale (the half-width
                of the positional embedding's initial uniform values; Keras's is 0.05), and --augment with
                any of drop:P (each real frame masked out with probability P), noise:SIGMA (Gaussian noise
                added to the features) and crop:F (a random contiguous window of at least F of the real
                frames, stretched back over them): ways to make the model learn order from fewer clips.
  trace         the product's trainer (`model.train.run`, default settings, --seed) in this process, with the
                weights it validates (the moving average) scored on the test and time-shuffled test clips
                after every epoch, and the misclassified test clips listed: does any epoch reach the target,
                and is the kept epoch the best one? (bench/ANALYSIS.md section 7d) Changes to the trainer or
                model, patched in for this run only (bench/ANALYSIS.md section 7h): --label-smoothing EPS
                (one-hot labels, cross-entropy with label smoothing, validation loss included), --mixup
                ALPHA (each training video mixed with a random other one, features and one-hot labels, the
                larger weight drawn from Beta(ALPHA, ALPHA) on the first), --attention-dropout RATE (the
                issue fixes 0.3); --heads N is the trainer's own --num-heads (its default since section 7h
                is 8; 1 is the reference).
  linear-probe  no training of the product's model: a ridge-regression classifier (closed form, one-vs-rest
                targets +-1) on all frames' features laid end to end (frames x dims inputs), fitted on the
                trainer's training share (the validation split left out) and scored on the test and
                time-shuffled test clips, for a few ridge strengths: is the order in the features, and how
                much of it does a model with no inductive bias for video read from this many clips?

Also prints the feature statistics that motivate it (scale of the random-weight DenseNet121 features).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
from pathlib import Path

import numpy as np

from bench import accuracy
from bench.data import clip_set, featurized, read_records, rewrite_records
from bench.harness import TRAIN_SOURCES, cached, log, python_module, run_job
from bench.run import QUICK


def valid_frames(records_dir: Path) -> np.ndarray:
    from tfrecords_schema import decode_video_record

    records = [decode_video_record(r) for r in read_records(records_dir)]
    return np.concatenate([r.features[: r.num_valid_frames] for r in records])


def feature_statistics(records_dir: Path) -> dict:
    from tfrecords_schema import decode_video_record

    records = [decode_video_record(r) for r in read_records(records_dir)]
    frames = np.concatenate([r.features[: r.num_valid_frames] for r in records])
    within = np.mean([r.features[: r.num_valid_frames].std(0).mean() for r in records])
    return {
        "frames": len(frames), "mean": float(frames.mean()), "std": float(frames.std()),
        "max_abs": float(np.abs(frames).max()),
        "median_frame_l2_norm": float(np.median(np.linalg.norm(frames, axis=1))),
        "median_per_dim_std": float(np.median(frames.std(0))), "mean_within_video_per_dim_std": float(within),
        "constant_dims": int((frames.std(0) == 0).sum()),
    }


def standardize(mean: np.ndarray, std: np.ndarray):
    """A `change` for `rewrite_records`: valid frames become (features - mean) / std."""
    def change(record):
        features = record.features.copy()
        n = record.num_valid_frames
        features[:n] = (features[:n] - mean) / std
        features[n:] = 0.0
        record.features = features.astype(np.float32)
        return record
    return change


def _arrays(records_dir: Path, labels: list[str]):
    from tfrecords_schema import decode_video_record

    records = [decode_video_record(r) for r in read_records(records_dir)]
    features = np.stack([r.features for r in records]).astype(np.float32)
    mask = np.stack([r.mask.astype(bool) for r in records])
    y = np.array([labels.index(r.label) for r in records])
    return records, {"features": features, "mask": mask}, y


def held_out(records) -> np.ndarray:
    """Which records `model.train` holds out for validation by default (its --validation-split, by video id)."""
    import tensorflow as tf

    from model.train import TrainConfig, in_validation_split

    return in_validation_split(tf.constant([r.video_id for r in records]), TrainConfig.validation_split).numpy()


AUGMENTATIONS = ("drop", "noise", "crop")
CURVE_OPTIONS = ("lr_patience", "learning_rate", "clipnorm", "position_init_scale", "augment")


def parse_augment(text: str) -> dict[str, float]:
    """`drop:0.25,crop:0.6` -> {"drop": 0.25, "crop": 0.6}."""
    chosen = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition(":")
        if name not in AUGMENTATIONS or not value:
            raise SystemExit(f"--augment: expected NAME:VALUE with NAME one of {', '.join(AUGMENTATIONS)}, got {item!r}")
        chosen[name] = float(value)
    return chosen


def augmenter(chosen: dict[str, float]):
    """A tf.data map function `(inputs, label) -> (inputs, label)` applying the `chosen` augmentations."""
    import tensorflow as tf

    def augment(inputs, label):
        features, mask = inputs["features"], inputs["mask"]
        if chosen.get("crop"):
            real = tf.reduce_sum(tf.cast(mask, tf.int32))
            count = tf.cast(real, tf.float32)
            window = tf.maximum(2.0, tf.round(count * tf.random.uniform([], chosen["crop"], 1.0)))
            start = tf.floor(tf.random.uniform([]) * (count - window + 1.0))
            steps = tf.cast(tf.range(tf.shape(mask)[0]), tf.float32)
            source = start + steps * (window - 1.0) / tf.maximum(count - 1.0, 1.0)
            index = tf.minimum(tf.cast(tf.round(source), tf.int32), real - 1)
            features = tf.where(mask[:, None], tf.gather(features, index), features)
        if chosen.get("drop"):
            kept = tf.logical_and(tf.random.uniform(tf.shape(mask)) >= chosen["drop"], mask)
            enough = tf.reduce_sum(tf.cast(kept, tf.int32)) >= 2
            mask = tf.cond(enough, lambda: kept, lambda: mask)
        if chosen.get("noise"):
            features = features + tf.random.normal(tf.shape(features), stddev=chosen["noise"])
        return {"features": features, "mask": mask}, label

    return augment


def learning_curve(directory: Path, train: Path, test: Path, shuffled: Path, args) -> None:
    import keras
    import tensorflow as tf

    from model.classifier import ClassifierConfig, build_classifier, compile_classifier
    labels = sorted({r for r in (Path(train) / "labels.txt").read_text().split()})
    records, x, y = _arrays(train, labels)
    held = held_out(records)
    fit_x = {k: v[~held] for k, v in x.items()}
    val_x = {k: v[held] for k, v in x.items()}
    _, test_x, test_y = _arrays(test, labels)
    _, shuffled_x, shuffled_y = _arrays(shuffled, labels)
    keras.utils.set_random_seed(args.seed)
    model = compile_classifier(build_classifier(ClassifierConfig(num_classes=len(labels))), args.learning_rate)
    if args.clipnorm:
        model.optimizer.clipnorm = args.clipnorm  # read by Keras when it applies each step's gradients
    if args.position_init_scale is not None:
        embedding = model.get_layer("frame_position_embedding")
        # Keras's "uniform" initializer draws from [-0.05, 0.05]; rescale the same draw.
        embedding.set_weights([embedding.get_weights()[0] * (args.position_init_scale / 0.05)])
    augment = augmenter(parse_augment(args.augment))
    fit_ds = (tf.data.Dataset.from_tensor_slices((fit_x, y[~held])).shuffle(len(y), seed=args.seed)
              .map(augment).batch(16).prefetch(2))
    rows = []

    class PerEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            predicted = model.predict(test_x, verbose=0, batch_size=64).argmax(-1)
            shuffled_predicted = model.predict(shuffled_x, verbose=0, batch_size=64).argmax(-1)
            train_predicted = model.predict(fit_x, verbose=0, batch_size=64).argmax(-1)
            rows.append({
                "epoch": epoch + 1, "learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
                "loss": logs["loss"], "val_loss": logs["val_loss"],
                "val_accuracy": logs["val_accuracy"],
                "train_accuracy_no_dropout": float((train_predicted == y[~held]).mean()),
                "test_accuracy": float((predicted == test_y).mean()),
                "shuffled_test_accuracy": float((shuffled_predicted == shuffled_y).mean()),
                "test_accuracy_per_class": {label: float((predicted[test_y == i] == i).mean())
                                            for i, label in enumerate(labels)},
            })
            row = rows[-1]
            log(f"epoch {epoch + 1}: val_loss {logs['val_loss']:.3f}, train {row['train_accuracy_no_dropout']:.3f}, "
                f"test {row['test_accuracy']:.3f}, shuffled {row['shuffled_test_accuracy']:.3f}")

    callbacks = [PerEpoch()]
    if args.lr_patience:
        callbacks.insert(0, keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=args.lr_patience, min_lr=1e-5))
    model.fit(fit_ds, validation_data=(val_x, y[held]), epochs=args.epochs, callbacks=callbacks, verbose=0,
              shuffle=False)  # fit_ds is shuffled by tf.data, seeded
    best_val = min(rows, key=lambda r: r["val_loss"])
    best_test = max(rows, key=lambda r: r["test_accuracy"])
    summary = {
        "epochs": args.epochs, "train_videos": int((~held).sum()), "val_videos": int(held.sum()),
        "at_lowest_val_loss": {k: best_val[k] for k in ("epoch", "test_accuracy", "shuffled_test_accuracy",
                                                        "test_accuracy_per_class")},
        "best_test_accuracy_any_epoch": {k: best_test[k] for k in ("epoch", "test_accuracy", "shuffled_test_accuracy",
                                                                   "test_accuracy_per_class")},
        "last_epoch": rows[-1],
    }
    (directory / "result.json").write_text(json.dumps({"summary": summary, "epochs": rows}, indent=2) + "\n")


TRACE_OPTIONS = ("label_smoothing", "mixup", "attention_dropout", "heads")


@contextlib.contextmanager
def patched_trainer(trainer, recipe: dict, num_classes: int, seed: int):
    """`model.train` (the module `trainer`) with the loss, input and dropout changes of `recipe` (TRACE_OPTIONS
    but `heads`, a flag of the trainer's own; see the docstring) patched in, and as it was after the block."""
    import functools

    import keras
    import tensorflow as tf

    from model import classifier

    saved = {name: getattr(trainer, name) for name in ("_model_dataset", "compile_classifier", "ClassifierConfig")}
    smoothing, alpha = recipe.get("label_smoothing", 0.0), recipe.get("mixup", 0.0)
    one_hot = bool(smoothing or alpha)

    def model_dataset(records, table, size, keep_validation=None, fraction=0.0, cache=True):
        ds = saved["_model_dataset"](records, table, size, keep_validation, fraction, cache)
        if not one_hot:
            return ds
        ds = ds.map(lambda inputs, label: (inputs, tf.one_hot(label, num_classes)))
        if keep_validation is False and alpha:  # the training share only
            partners = ds.shuffle(size, seed=seed + 1, reshuffle_each_iteration=True)
            keys = tf.data.Dataset.random(seed=seed + 2, rerandomize_each_iteration=True)

            def mix(first, second, key):
                (x1, y1), (x2, y2) = first, second
                draws = [tf.random.stateless_gamma([], tf.stack([key, tf.constant(i, tf.int64)]), alpha=alpha)
                         for i in (0, 1)]
                weight = draws[0] / (draws[0] + draws[1])
                weight = tf.maximum(weight, 1.0 - weight)
                features = weight * x1["features"] + (1.0 - weight) * x2["features"]
                return ({"features": features, "mask": tf.logical_and(x1["mask"], x2["mask"])},
                        weight * y1 + (1.0 - weight) * y2)

            ds = tf.data.Dataset.zip((ds, partners, keys)).map(mix)
            ds = ds.apply(tf.data.experimental.assert_cardinality(size))
        return ds

    def compile_classifier(model, learning_rate=1e-3, ema_momentum=0.0):
        saved["compile_classifier"](model, learning_rate, ema_momentum)
        if one_hot:
            model.compile(optimizer=model.optimizer, metrics=["accuracy"], jit_compile=True,
                          loss=keras.losses.CategoricalCrossentropy(label_smoothing=smoothing))
        return model

    trainer._model_dataset, trainer.compile_classifier = model_dataset, compile_classifier
    if recipe.get("attention_dropout") is not None:
        trainer.ClassifierConfig = functools.partial(classifier.ClassifierConfig,
                                                     attention_dropout=recipe["attention_dropout"])
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(trainer, name, value)


def trace(directory: Path, train: Path, test: Path, shuffled: Path, seed: int, recipe: dict | None = None) -> None:
    """Runs `model.train` with every epoch scored on the test clips (see the docstring), with the changes of
    `recipe` patched in; writes result.json."""
    import model.train as trainer

    recipe = recipe or {}
    heads = ["--num-heads", str(recipe["heads"])] if recipe.get("heads") else []

    labels = (Path(train) / "labels.txt").read_text().split()
    test_records, test_x, test_y = _arrays(test, labels)
    _, shuffled_x, shuffled_y = _arrays(shuffled, labels)
    rows = []

    class ScoredEachEpoch(trainer.TrainingState):
        def on_epoch_end(self, epoch, logs=None):
            with trainer.averaged_weights(self.model):
                predicted = self.model.predict_on_batch(test_x).argmax(-1)
                shuffled_predicted = self.model.predict_on_batch(shuffled_x).argmax(-1)
            rows.append({
                "epoch": epoch + 1, "val_loss": (logs or {}).get("val_loss"),
                "test_accuracy": float((predicted == test_y).mean()),
                "shuffled_test_accuracy": float((shuffled_predicted == shuffled_y).mean()),
                "wrong": [test_records[i].video_id for i in np.flatnonzero(predicted != test_y)],
            })
            log(f"epoch {epoch + 1}: test {rows[-1]['test_accuracy']:.3f}, wrong {len(rows[-1]['wrong'])}")
            super().on_epoch_end(epoch, logs)

    original, trainer.TrainingState = trainer.TrainingState, ScoredEachEpoch
    try:
        with patched_trainer(trainer, recipe, len(labels), seed):
            metrics = trainer.run(["--train", str(train), "--output", str(directory / "model"), "--seed", str(seed),
                                   *heads])
    finally:
        trainer.TrainingState = original
    if metrics["labels"] != labels:
        raise SystemExit(f"the trainer's labels {metrics['labels']} are not the records' {labels}")
    after_warm_up = rows[metrics["config"]["start_from_epoch"]:] or rows
    kept = rows[metrics["best_epoch"] - 1] if metrics["best_epoch"] else rows[-1]
    summary = {
        "recipe": recipe, "epochs_run": metrics["epochs_run"], "best_epoch": metrics["best_epoch"],
        "kept_test_accuracy": kept["test_accuracy"], "kept_shuffled_test_accuracy": kept["shuffled_test_accuracy"],
        "after_warm_up": {
            "mean_test_accuracy": float(np.mean([r["test_accuracy"] for r in after_warm_up])),
            "min_test_accuracy": min(r["test_accuracy"] for r in after_warm_up),
            "max_test_accuracy": max(r["test_accuracy"] for r in after_warm_up),
            # How often each clip was wrong: the clips that hold a run back are wrong in nearly every epoch.
            "wrong_in_epochs": dict(collections.Counter(v for r in after_warm_up for v in r["wrong"]).most_common(10)),
        },
    }
    (directory / "result.json").write_text(json.dumps({"summary": summary, "epochs": rows}, indent=2) + "\n")


RIDGE_STRENGTHS = (1e-3, 1e-1, 1.0)


def linear_probe(train: Path, test: Path, shuffled: Path) -> dict:
    """Test and time-shuffled accuracy of ridge classifiers on flattened frame features (see the docstring)."""
    labels = sorted(set((Path(train) / "labels.txt").read_text().split()))
    records, x, y = _arrays(train, labels)
    held = held_out(records)
    flat = x["features"][~held].reshape(int((~held).sum()), -1).astype(np.float64)
    mean = flat.mean(0)
    centred = flat - mean
    targets = np.where(y[~held][:, None] == np.arange(len(labels))[None], 1.0, -1.0)
    kernel = centred @ centred.T  # the dual form: as many unknowns as training videos, not inputs
    scored = {name: _arrays(path, labels)[1:] for name, path in (("test", test), ("shuffled_test", shuffled))}
    result = {"train_videos": int((~held).sum()), "inputs": int(flat.shape[1]), "by_ridge_strength": {}}
    for strength in RIDGE_STRENGTHS:
        weights = centred.T @ np.linalg.solve(kernel + strength * np.eye(len(kernel)), targets)
        accuracies = {}
        for name, (inputs, truth) in scored.items():
            predicted = ((inputs["features"].reshape(len(truth), -1) - mean) @ weights).argmax(-1)
            accuracies[f"{name}_accuracy"] = float((predicted == truth).mean())
        result["by_ridge_strength"][str(strength)] = accuracies
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.diagnose_accuracy")
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="standardized",
                        choices=("plain", "standardized", "scaled", "curve", "trace", "linear-probe"))
    parser.add_argument("--epochs", type=int, default=200, help="for --variant curve")
    parser.add_argument("--reduce-lr-on-plateau", dest="lr_patience", action="store_const", const=5, default=0,
                        help="for --variant curve: --lr-patience 5")
    parser.add_argument("--lr-patience", type=int, default=0, help="for --variant curve (0: constant rate)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="for --variant curve")
    parser.add_argument("--clipnorm", type=float, default=0.0, help="for --variant curve (0: none)")
    parser.add_argument("--position-init-scale", type=float, default=None, help="for --variant curve")
    parser.add_argument("--augment", default="", metavar="NAME:VALUE,...", help="for --variant curve")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="for --variant trace")
    parser.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="for --variant trace")
    parser.add_argument("--attention-dropout", type=float, default=None, help="for --variant trace")
    parser.add_argument("--heads", type=int, default=None, help="for --variant trace")
    args = parser.parse_args(argv)
    parse_augment(args.augment)
    # The benchmark's own records (and cache entries) whenever --per-class is one of its sizes.
    sizes = sorted(set(QUICK.accuracy_sizes) | {args.per_class})
    train_all = featurized(clip_set(max(sizes), accuracy.TRAIN_SEED), "accuracy-train")
    test = featurized(clip_set(args.test_per_class, accuracy.TEST_SEED), "accuracy-test")
    sets = accuracy.derived_records(train_all, test, sizes)
    train = sets[f"train-{args.per_class}-float32"]
    print("feature statistics of the training records:", json.dumps(feature_statistics(train), indent=2))

    if args.variant == "linear-probe":
        print(json.dumps(linear_probe(train, test, sets["test-shuffled-float32"]), indent=2))
        return 0

    if args.variant == "trace":
        # Options left at their defaults stay out of the key, so earlier cache entries keep matching.
        recipe = {name: getattr(args, name) for name in TRACE_OPTIONS
                  if getattr(args, name) != parser.get_default(name)}
        params = {"train": str(train), "test": str(test), "variant": "trace", "seed": args.seed, **recipe}
        directory, _ = cached("diagnose", params, TRAIN_SOURCES + ("bench/diagnose_accuracy.py",),
                              lambda d: trace(d, train, test, sets["test-shuffled-float32"], args.seed, recipe))
        print(json.dumps(json.loads((directory / "result.json").read_text())["summary"], indent=2))
        return 0

    if args.variant == "curve":
        params = {"train": str(train), "test": str(test), "variant": "curve", "seed": args.seed, "epochs": args.epochs}
        # Options left at their defaults stay out of the key, so earlier cache entries keep matching.
        params.update({name: getattr(args, name) for name in CURVE_OPTIONS
                       if getattr(args, name) != parser.get_default(name)})
        directory, _ = cached("diagnose", params, TRAIN_SOURCES + ("bench/diagnose_accuracy.py",),
                              lambda d: learning_curve(d, train, test, sets["test-shuffled-float32"], args))
        print(json.dumps(json.loads((directory / "result.json").read_text())["summary"], indent=2))
        return 0

    def build(directory: Path) -> None:
        frames = valid_frames(train)
        if args.variant == "plain":
            mean, std = np.zeros(frames.shape[1], np.float32), np.ones(frames.shape[1], np.float32)
        elif args.variant == "standardized":
            mean, std = frames.mean(0), frames.std(0)
            std[std == 0] = 1.0
        else:
            mean, std = np.zeros(frames.shape[1], np.float32), np.full(frames.shape[1], frames.std(), np.float32)
        change = standardize(mean, std)
        for name, source in (("train", train), ("test", test), ("test-shuffled", sets["test-shuffled-float32"])):
            rewrite_records(source, directory / name, change=change)
        model = directory / "model"
        log(f"training on {args.variant} features (default settings, seed {args.seed})")
        job = run_job(f"diagnose-{args.variant}-{args.per_class}pc-seed{args.seed}", python_module(
            "model.train", "--train", str(directory / "train"), "--test", str(directory / "test"),
            "--output", str(model), "--seed", str(args.seed))).check()
        metrics = json.loads((model / "metrics.json").read_text())
        result = {
            "variant": args.variant, "per_class": args.per_class, "seed": args.seed,
            "test_accuracy": metrics["test_accuracy"], "val_accuracy": metrics["val_accuracy"],
            "shuffled_test_accuracy": accuracy.evaluate(model, directory / "test-shuffled"),
            "epochs_run": metrics["epochs_run"], "best_epoch": metrics["best_epoch"],
            "train_seconds": metrics["train_seconds"], "wall_s": round(job.wall_s, 1),
        }
        (directory / "result.json").write_text(json.dumps(result, indent=2) + "\n")

    params = {"train": str(train), "test": str(test), "variant": args.variant, "seed": args.seed}
    directory, _ = cached("diagnose", params, TRAIN_SOURCES + ("bench/diagnose_accuracy.py",), build)
    print(json.dumps(json.loads((directory / "result.json").read_text()), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
