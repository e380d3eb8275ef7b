"""Evaluate a model directory on labelled feature records.

    python -m model.evaluate --model models/run-1 --data 'features/test-*.tfrecord' [--output DIR]

Prints accuracy, per-class precision/recall/F1, the confusion matrix and the misclassified videos, and
writes `evaluation.json` (all of it, the confusion matrix as `{"labels", "matrix"}` with rows = true label
and columns = predicted label) and `confusion_matrix.png` to `--output` (default: `<model>/evaluation`).
A class that is never predicted has precision 0 (likewise recall and F1 for a class with no records).

The model's card (`<model>/README.md`, model.card) gets an evaluation section with the accuracy, the per-class
table and the confusion matrix (an image link when `--output` is inside the model directory, else its path);
each run replaces the section that the previous run wrote, and the card is rewritten whole.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Sequence

import numpy as np

from common import fs
from common.errors import UserError

if TYPE_CHECKING:
    from model.export import LoadedModel

logger = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
EVALUATION_DIR = "evaluation"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m model.evaluate",
        description="Evaluate a model directory on labelled feature records: accuracy, per-class precision, "
                    "recall and F1, a confusion matrix (JSON and PNG) and the misclassified videos.",
        epilog="""example:
  python -m model.evaluate --model models/run1 --data features/test --output models/run1/evaluation
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="model directory written by model.train (local or gs://)")
    parser.add_argument("--data", action="append", required=True, metavar="PATTERN",
                        help="labelled feature records: a file pattern or a directory (repeatable)")
    parser.add_argument("--output", help=f"where to write the results (default: <model>/{EVALUATION_DIR})")
    parser.add_argument("--batch-size", type=int, default=64, help="videos per evaluation step (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    return args


def predict_records(loaded: LoadedModel, patterns: Sequence[str], batch_size: int = 64):
    """Probabilities `[N, num_classes]` and the video ids, uris and labels of the records, in file order.

    Records that do not match the model's preprocessing are refused with a UserError.
    """
    import tensorflow as tf

    from model.classifier import FEATURES_INPUT, MASK_INPUT
    from model.data import record_failure
    from tfrecords_schema import dataset_spec, make_decoded_dataset, match_record_files

    files = match_record_files(list(patterns))
    spec = dataset_spec(files)
    if problems := loaded.spec.mismatches(spec):
        raise UserError(f"records {', '.join(patterns)} do not match the model {loaded.path}: " + "; ".join(problems))
    batches = make_decoded_dataset(files, spec=spec).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    probabilities, video_ids, uris, labels = [], [], [], []
    try:
        for batch in batches:
            inputs = {FEATURES_INPUT: batch["features"], MASK_INPUT: batch["mask"]}
            probabilities.append(np.asarray(loaded.model.predict_on_batch(inputs)))
            video_ids.extend(v.decode() for v in batch["video_id"].numpy())
            uris.extend(v.decode() for v in batch["uri"].numpy())
            labels.extend(v.decode() for v in batch["label"].numpy())
    except tf.errors.InvalidArgumentError as exc:
        raise UserError(f"records {', '.join(patterns)}: {record_failure(exc, spec)}") from None
    return np.concatenate(probabilities), video_ids, uris, labels


def classification_report(
    true_ids: np.ndarray, probabilities: np.ndarray, labels: Sequence[str]
) -> dict:
    """Accuracy, mean cross-entropy, confusion matrix and per-class/macro precision, recall, F1.

    `true_ids` `[N]` int label ids, `probabilities` `[N, num_classes]`; `labels` names the classes.
    """
    true_ids = np.asarray(true_ids, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    predicted = probabilities.argmax(axis=1)
    num_classes = len(labels)
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (true_ids, predicted), 1)
    correct = np.diag(matrix).astype(np.float64)
    predicted_counts, true_counts = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(correct, predicted_counts, out=np.zeros(num_classes), where=predicted_counts > 0)
    recall = np.divide(correct, true_counts, out=np.zeros(num_classes), where=true_counts > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
    picked = probabilities[np.arange(len(true_ids)), true_ids]
    return {
        "num_examples": int(len(true_ids)),
        "accuracy": float(correct.sum() / max(len(true_ids), 1)),
        "loss": float(-np.log(np.clip(picked, 1e-7, 1.0)).mean()) if len(true_ids) else None,
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "support": int(true_counts[i])}
            for i, label in enumerate(labels)
        },
        "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "confusion_matrix": {"labels": list(labels), "matrix": matrix.tolist()},
    }


def format_report(result: dict) -> str:
    """The evaluation as a readable text table."""
    labels = result["confusion_matrix"]["labels"]
    width = max(12, *(len(label) for label in labels))
    lines = [
        f"model {result['model_id']} ({result['model']}) on {result['num_examples']} records",
        f"accuracy {result['accuracy']:.4f}   loss {result['loss']:.4f}",
        "",
        f"{'label':<{width}}  precision  recall     f1  support",
    ]
    for label in labels:
        c = result["per_class"][label]
        lines.append(f"{label:<{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:5.3f}  {c['support']:7d}")
    m = result["macro_avg"]
    lines.append(f"{'macro avg':<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  "
                 f"{result['num_examples']:7d}")
    cell = max(5, *(len(label) for label in labels))
    lines += ["", "confusion matrix (rows: true label, columns: predicted label)",
              " " * width + "  " + " ".join(f"{label:>{cell}}" for label in labels)]
    for label, row in zip(labels, result["confusion_matrix"]["matrix"]):
        lines.append(f"{label:<{width}}  " + " ".join(f"{count:>{cell}d}" for count in row))
    wrong = result["misclassified"]
    lines += ["", f"misclassified: {len(wrong)}"]
    lines += [f"  {w['video_id']}: {w['label']} -> {w['predicted']} (p={w['confidence']:.2f})" for w in wrong]
    return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> dict:
    """Evaluate as the command line says; writes evaluation.json and confusion_matrix.png, adds the results to
    the model card, and returns the result."""
    args = parse_args(argv)
    # TensorFlow and Keras load from here on, not at import, so that `__main__` can quiet them first.
    from model.card import add_evaluation
    from model.export import load_model_dir
    from model.plots import confusion_matrix_png

    loaded = load_model_dir(args.model)
    probabilities, video_ids, uris, labels = predict_records(loaded, args.data, args.batch_size)
    index = {label: i for i, label in enumerate(loaded.labels)}
    for video_id, label in zip(video_ids, labels):
        if not label:
            raise UserError(f"record {video_id!r} has no label; evaluation needs labelled records")
        if label not in index:
            raise UserError(f"record {video_id!r} has label {label!r}, which the model does not know "
                            f"({', '.join(loaded.labels)})")
    true_ids = np.array([index[label] for label in labels], np.int64)
    result = {"model": args.model, "model_id": loaded.model_id, "data": list(args.data),
              **classification_report(true_ids, probabilities, loaded.labels)}
    predicted = probabilities.argmax(axis=1)
    result["misclassified"] = [
        {"video_id": video_ids[i], "uri": uris[i], "label": labels[i], "predicted": loaded.labels[predicted[i]],
         "confidence": float(probabilities[i, predicted[i]])}
        for i in np.flatnonzero(predicted != true_ids)
    ]

    output = args.output or fs.join(args.model, EVALUATION_DIR)
    fs.makedirs(output)
    matrix = np.array(result["confusion_matrix"]["matrix"])
    title = f"{result['num_examples']} videos, accuracy {result['accuracy']:.1%}"
    picture, results_file = fs.join(output, CONFUSION_MATRIX_FILE), fs.join(output, EVALUATION_FILE)
    fs.write_bytes(picture, confusion_matrix_png(matrix, loaded.labels, title))
    fs.write_json(results_file, result)
    try:
        add_evaluation(args.model, result, picture, results_file)
    except OSError as exc:  # e.g. a model directory this user may read but not write: the results are out
        logger.warning("could not add the evaluation to the model card in %s: %s", args.model, exc)
    print(format_report(result))
    logger.info("wrote %s and %s to %s", EVALUATION_FILE, CONFUSION_MATRIX_FILE, output)
    return result


if __name__ == "__main__":
    from common.cli import main, quiet_tensorflow
    from tfrecords_schema import RecordError

    quiet_tensorflow()
    sys.exit(main(run, user_errors=(RecordError,)))
