"""The training loop: from checked training data to a finished model directory in a staging folder.

    metrics = train_model(config, data, staging, fingerprint(config, data), state)

Builds and compiles the classifier (or, with the `state` of an interrupted run, loads its last checkpoint),
fits it on the streamed epochs of model.datasets with the callbacks that keep the best epoch and save what
`--resume` needs, loads the best epoch's weights, scores them on every set, and exports the model directory
into `staging` with its pictures (the training curves, the test set's confusion matrix, the layer graph where
Graphviz is installed) and its model card (README.md, model.card). It returns the metrics, which
`model.train` publishes as metrics.json.

With several GPUs the model trains under `tf.distribute.MirroredStrategy`, one replica a GPU: `--batch-size`
is the global batch, split between the replicas, whose gradients add up to the gradient of the mean loss over
the global batch, so a step and the learning rate mean what they mean on one device.

The same seed gives the same weights and metrics on the same machine and thread settings: XLA-compiled steps
on a CPU, TensorFlow's op determinism (without XLA) on a GPU.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from common import fs
from model import card, export
from model.callbacks import (
    HISTORY_COLUMNS,
    EpochSummaries,
    TrainingState,
    read_history,
    restore_random_states,
)
from model.classifier import ClassifierConfig, build_classifier, compile_classifier
from model.config import TrainConfig
from model.data import TrainingData
from model.datasets import ModelDatasets, cache_directory, model_datasets, record_errors, resolve_cache
from model.evaluate import classification_report
from model.plots import confusion_matrix_png, model_plot, training_curves_png

logger = logging.getLogger(__name__)


def fingerprint(config: TrainConfig, data: TrainingData) -> dict:
    """What a resumed run must share with the interrupted one."""
    return {
        "train_files": list(data.train.files),
        "validation_files": list(data.validation.files) if data.validation else [],
        "validation_split": None if data.validation else config.validation_split,
        "split_by": data.split_by,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "lr_patience": config.lr_patience,
        "ema_momentum": config.ema_momentum,
        "start_from_epoch": config.start_from_epoch,
        "num_heads": config.num_heads,
        "seed": config.seed,
        "labels": list(data.vocabulary),
        "record_spec": dataclasses.asdict(data.train.spec),
    }


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    if tf.config.list_physical_devices("GPU"):
        # Bit-for-bit repeatable runs on a GPU need TensorFlow's op determinism (Keras then skips XLA). On a CPU
        # the XLA-compiled steps repeat exactly as they are, and about 3x faster than with it on.
        tf.config.experimental.enable_op_determinism()


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over the GPUs when several are visible, else the default (one device) strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([device.name for device in gpus])
    return tf.distribute.get_strategy()


def train_model(config: TrainConfig, data: TrainingData, staging: str, fingerprint: dict,
                state: dict | None = None) -> dict:
    """Train in `staging` (an empty folder, or the interrupted run's with its `state`) and export the model
    directory there; returns the metrics."""
    seed_everything(config.seed)
    strategy = distribution_strategy()
    classifier_config = ClassifierConfig(
        num_classes=len(data.vocabulary), max_seq_length=data.train.spec.max_seq_length,
        feature_dim=data.train.spec.feature_dim, num_heads=config.num_heads,
    )
    tracker = TrainingState(staging, config.patience, fingerprint, state, lr_patience=config.lr_patience,
                            start_from_epoch=config.start_from_epoch)
    cache = resolve_cache(config.cache, data)
    with cache_directory(cache) as cache_dir, record_errors(data.train.spec):
        datasets = model_datasets(data, config.batch_size, config.seed, cache, tracker.epochs_done, config.epochs,
                                  cache_dir)
        with strategy.scope():
            model = _compiled_or_resumed(tracker, classifier_config, config, resumed=state is not None)
            if strategy.num_replicas_in_sync > 1:
                prepare_for_replicas(model, datasets.fit.element_spec)
        started = time.monotonic()  # train_seconds: this session's model.fit only
        if tracker.epochs_done < config.epochs and not tracker.stopped_early:
            if strategy.num_replicas_in_sync > 1:
                logger.info("training on %d devices (MirroredStrategy), %d videos a replica and step",
                            strategy.num_replicas_in_sync, config.batch_size // strategy.num_replicas_in_sync)
            with strategy.scope():
                fit(model, datasets, tracker, config, os.path.join(staging, export.LOGS_DIR))
        train_seconds = round(time.monotonic() - started, 1)
        optimizer_config = model.optimizer.get_config()  # before keep_best loads the best epoch's optimizer state
        keep_best(model, tracker, config.start_from_epoch)

        final = build_classifier(classifier_config)  # the kept weights without the optimizer and its averages
        final.set_weights(model.get_weights())
        compile_classifier(final, config.learning_rate)
        scores = {name: evaluate(final, dataset, config.batch_size)
                  for name, dataset in (("train", datasets.train), ("val", datasets.validation),
                                        ("test", datasets.test))}
        export.export_model_dir(final, list(data.vocabulary), data.train.spec, staging)
        test_report, plot_problem = write_pictures(final, datasets.test, data.vocabulary, config.batch_size,
                                                   staging, tracker.best_epoch)
    metrics = {
        "model_id": export.model_id(staging),
        **{f"{split}_{key}": value for split, result in scores.items() for key, value in result.items()},
        "num_train_examples": data.num_train,
        "num_val_examples": data.num_validation,
        "num_test_examples": data.num_test,
        "epochs_run": tracker.epochs_done,
        "best_epoch": tracker.best_epoch,
        "best_val_loss": tracker.best_val_loss if tracker.best_epoch else None,
        "stopped_early": tracker.stopped_early,
        "seed": config.seed,
        "labels": list(data.vocabulary),
        "train_seconds": train_seconds,
        "cache": cache,
        "replicas": strategy.num_replicas_in_sync,
        "config": config.as_json(),
        "classifier": dataclasses.asdict(classifier_config),
    }
    card.write_training_card(staging, card.TrainingRun(
        metrics=metrics, preprocessing=dataclasses.asdict(data.train.spec), class_counts=data.class_counts(),
        sources=card.record_sources(data), history=read_history(os.path.join(staging, export.HISTORY_FILE)),
        optimizer=optimizer_config,
        num_params=final.count_params(),
        num_trainable_params=sum(int(np.prod(w.shape)) for w in final.trainable_weights),
        test_report=test_report, plot_problem=plot_problem,
        embeddings=[dict(items) for items in dict.fromkeys(
            tuple(sorted(e.items())) for records in data.record_sets for e in records.embeddings)],
    ), config.output)
    return metrics


def _compiled_or_resumed(tracker: TrainingState, classifier_config: ClassifierConfig, config: TrainConfig,
                         resumed: bool) -> keras.Model:
    if resumed:
        logger.info("resuming after epoch %d (best so far: epoch %d)", tracker.epochs_done, tracker.best_epoch)
        model = keras.saving.load_model(tracker.last_model_path)
        if states := tracker.random_states:
            restore_random_states(model, states)
    else:
        model = compile_classifier(build_classifier(classifier_config), config.learning_rate, config.ema_momentum)
    return model


def prepare_for_replicas(model: keras.Model, batch_spec) -> None:
    """Ready a model built in a MirroredStrategy's scope to be fitted in that scope (Keras 3.15, checked by
    tests/test_loop.py's MirroredStrategy test).

    Keras averages a first batch over the replicas before every fit and validation pass, to build the loss,
    metrics and optimizer from it: that fails on the bool mask and on a batch the replicas split unevenly, and
    starts an extra pass over the data each time. So they are built here from the batches' spec instead, and
    the model forgets the strategy it was built in, which makes Keras skip that step and use the strategy
    whose scope `fit` runs in. XLA is off: it cannot place a mirrored variable's replicas."""
    model.jit_compile = False
    model._symbolic_build(data_batch=batch_spec)
    model._distribute_strategy = None


def fit(model: keras.Model, datasets: ModelDatasets, tracker: TrainingState, config: TrainConfig,
        log_dir: str, extra_callbacks: tuple = ()) -> None:
    """Fit from the epoch after `tracker.epochs_done` to `config.epochs` or an early stop (`extra_callbacks`:
    more Keras callbacks, e.g. bench.training_scale's timer)."""
    model.fit(
        datasets.fit,  # the epochs from tracker.epochs_done on, each in the order its number draws
        steps_per_epoch=datasets.steps_per_epoch,
        validation_data=datasets.validation_batches,
        validation_steps=datasets.validation_steps,
        epochs=config.epochs,
        initial_epoch=tracker.epochs_done,
        callbacks=[
            # Validates the averaged weights: swaps them in around each validation pass.
            *([keras.callbacks.SwapEMAWeights()] if config.ema_momentum else []),
            EpochSummaries(log_dir),
            tracker,
            *extra_callbacks,
        ],
        shuffle=False,  # datasets.fit is shuffled by tf.data, by seed and epoch
        verbose=2,
    )


def keep_best(model: keras.Model, tracker: TrainingState, start_from_epoch: int) -> None:
    """Load the best epoch's weights into `model`; without a judged, finite epoch it keeps the weights it has
    (after `fit`, the last epoch's moving average when the optimizer keeps one)."""
    if tracker.best_epoch:
        model.load_weights(tracker.best_weights_path)
    elif tracker.epochs_done <= start_from_epoch:
        logger.warning("all %d epochs were warm-up (--start-from-epoch %d), none was judged; keeping the last "
                       "epoch's weights", tracker.epochs_done, start_from_epoch)
    else:
        logger.warning("the validation loss was never finite; keeping the last epoch's weights")


def evaluate(model: keras.Model, dataset: tf.data.Dataset | None, batch_size: int) -> dict:
    """`{"loss", "accuracy"}` of `model` on an unbatched dataset; None for both without one."""
    if dataset is None:
        return {"loss": None, "accuracy": None}
    result = model.evaluate(dataset.batch(batch_size), verbose=0, return_dict=True)
    return {"loss": float(result["loss"]), "accuracy": float(result["accuracy"])}


def write_training_curves(staging: str, best_epoch: int) -> None:
    """training_curves.png from the run's history.csv, the kept epoch marked."""
    history = read_history(os.path.join(staging, export.HISTORY_FILE))
    columns = {key: [row.get(key, math.nan) for row in history] for key in HISTORY_COLUMNS}
    fs.write_bytes(os.path.join(staging, export.TRAINING_CURVES_FILE), training_curves_png(columns, best_epoch))


def write_pictures(model: keras.Model, test: tf.data.Dataset | None, labels, batch_size: int, staging: str,
                   best_epoch: int) -> tuple[dict | None, str | None]:
    """The training curves, the test set's confusion matrix and the model plot in `staging`; returns the test
    set's classification report (None without one) and why there is no model plot (None if there is)."""
    write_training_curves(staging, best_epoch)
    test_report = write_test_confusion_matrix(model, test, labels, batch_size, staging)
    plot = os.path.join(staging, card.MODEL_PLOT_FILE)
    plot_problem = model_plot(model, plot)
    if plot_problem:
        logger.info("no model plot (%s): %s", card.MODEL_PLOT_FILE, plot_problem)
        fs.delete([plot])  # one an interrupted attempt of this run drew
    return test_report, plot_problem


def write_test_confusion_matrix(model: keras.Model, test: tf.data.Dataset | None, labels, batch_size: int,
                                staging: str) -> dict | None:
    """The test set's classification report (model.evaluate's), its confusion matrix drawn as
    test_confusion_matrix.png; None without a test set."""
    if test is None:
        return None
    batches = test.batch(batch_size)
    probabilities = model.predict(batches, verbose=0)
    true_ids = np.concatenate([label_ids.numpy() for _, label_ids in batches])
    report = classification_report(true_ids, probabilities, list(labels))
    title = f"{report['num_examples']} test videos, accuracy {report['accuracy']:.1%}"
    png = confusion_matrix_png(np.array(report["confusion_matrix"]["matrix"]), list(labels), title)
    fs.write_bytes(os.path.join(staging, card.TEST_CONFUSION_MATRIX_FILE), png)
    return report
