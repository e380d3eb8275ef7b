"""The model card: `README.md` in a model directory, laid out as a Hugging Face Hub model card.

    write_training_card(staging, TrainingRun(...))        # model.train, before the directory is published
    add_evaluation(model_dir, result, "evaluation/confusion_matrix.png")    # model.evaluate, afterwards

The card has YAML front matter (`library_name: keras`, tags) and the sections of the card the Keras example
was published with: what the model is, its intended use and classes, the data it was trained and tested on
(videos per class and set, where the records came from), the training recipe as it ran (epochs, best epoch,
early stopping, learning-rate halvings read from history.csv, moving average, batch size, seed), the
optimizer's hyperparameters as Keras reports them, the parameter count, the accuracies (the digits of
metrics.json) and the pictures beside it. Every number comes from the run. `model.evaluate` adds or replaces
one evaluation section between two HTML comments, so re-running it never duplicates it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from common import fs
from common.publish import now_utc, write_atomically
from model.export import TRAINING_CURVES_FILE
from model.splits import describe_split

if TYPE_CHECKING:
    from model.data import RecordSet, TrainingData

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
MODEL_PLOT_FILE = "model.png"
TEST_CONFUSION_MATRIX_FILE = "test_confusion_matrix.png"
TAGS = ("video-classification", "keras", "tensorflow", "transformer", "densenet121")
EVALUATION_BEGIN = "<!-- model.evaluate: begin (each run of python -m model.evaluate replaces this section) -->"
EVALUATION_END = "<!-- model.evaluate: end -->"
PLOT_MISSING = ("No model plot: `keras.utils.plot_model` needs pydot (`pip install pydot`, pinned in setup.py) "
                "and Graphviz's `dot` (`apt-get install graphviz`, or `make graphviz`); retrain to get {file}. "
                "Keras said: {reason}")
SPLITS = (("train", "train"), ("validation", "val"), ("test", "test"))  # (card name, metrics.json prefix)


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """What the card of one training run reports, all of it from the run.

    `metrics` is metrics.json; `preprocessing` is preprocessing.json (the records' RecordSpec); `class_counts`
    maps each set (`train`, `validation`, `test`) to `{label: videos}`; `sources` maps it to where its
    records came from; `history` is history.csv's rows; `optimizer` is `optimizer.get_config()` of the
    optimizer that trained; `test_report` is model.evaluate's `classification_report` on the test set;
    `plot_problem` says why there is no model plot (None when there is one); `embeddings` says which engine,
    engine version and precision made the records' features (from featurize's manifest or the records)."""

    metrics: Mapping[str, Any]
    preprocessing: Mapping[str, Any]
    class_counts: Mapping[str, Mapping[str, int]]
    sources: Mapping[str, str]
    history: Sequence[Mapping[str, float]]
    optimizer: Mapping[str, Any]
    num_params: int
    num_trainable_params: int
    test_report: Mapping[str, Any] | None = None
    plot_problem: str | None = None
    embeddings: Sequence[Mapping[str, str]] = ()  # what made the features (RecordSet.embeddings)


# --- Formatting ----------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    """A Markdown table cell: `|` escaped, one line."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]


def _score(value: float | None) -> str:
    """A metrics.json number with its JSON digits (the same text metrics.json holds) and as a percentage."""
    return "n/a" if value is None else f"{json.dumps(value)} ({value:.1%})"


def _keras_value(value: Any) -> str:
    # Keras reports float32 variables as Python floats (0.0010000000474974513); 7 digits are all they hold.
    if isinstance(value, float):
        return f"{value:.7g}"
    return "None" if value is None else str(value)


def _picture(directory: str, name: str, alt: str) -> list[str]:
    """An image link to `name` if the file is in `directory`, else nothing: the card links no missing file."""
    return [f"![{alt}]({name})", ""] if fs.exists(fs.join(directory, name)) else []


def engine_and_precision(embeddings: Sequence[Mapping[str, str]]) -> str:
    """Which engine (and version) and precision made the features, as far as the manifests and records say
    ("not recorded" if they do not); records made several ways are listed each."""
    found = []
    for embedding in embeddings:
        parts = [f"{embedding.get('engine')} {embedding.get('engine_version') or ''}".strip()
                 if embedding.get("engine") else "",
                 f"{embedding.get('precision')}" if embedding.get("precision") else ""]
        if text := ", ".join(part for part in parts if part):
            found.append(text)
    return "; ".join(dict.fromkeys(found)) if found else "not recorded"


def learning_rate_changes(history: Sequence[Mapping[str, float]]) -> list[tuple[int, float]]:
    """(epoch, new rate) for each change of the learning rate in history.csv: the rate was changed after
    `epoch`, and the next epoch ran at the new rate."""
    rates = [(int(row["epoch"]), row["learning_rate"]) for row in history if "learning_rate" in row]
    return [(epoch, rate) for (epoch, before), (_, rate) in zip(rates, rates[1:]) if rate != before]


def record_sources(data: TrainingData) -> dict[str, str]:
    """Where each set's records came from: the --train/--validation/--test patterns and their file counts,
    or the share of the training videos held out for validation."""

    def described(records: RecordSet) -> str:
        count = len(records.files)
        return ", ".join(f"`{p}`" for p in records.patterns) + f" ({count} file{'s' if count != 1 else ''})"

    sources = {"train": described(data.train)}
    sources["validation"] = (described(data.validation) if data.validation is not None else
                             describe_split(data.validation_split, data.split_by))
    if data.test is not None:
        sources["test"] = described(data.test)
    if len(data.record_sets) > 1:
        what = f"group (`--split-by {data.split_by}`)" if data.split_by else "video id"
        sources["disjoint"] = f"the sets given apart were checked to share no {what}"
    return sources


# --- The card of a training run -------------------------------------------------------------------------


def front_matter() -> list[str]:
    return ["---", "library_name: keras", "pipeline_tag: video-classification", "tags:",
            *(f"- {tag}" for tag in TAGS), "metrics:", "- accuracy", "---", ""]


def _description(run: TrainingRun) -> list[str]:
    m, spec, heads = run.metrics, run.preprocessing, run.metrics["classifier"]["num_heads"]
    feature_dim, frames = m["classifier"]["feature_dim"], m["classifier"]["max_seq_length"]
    labels = m["labels"]
    return [
        "## Model description", "",
        f"A video classifier in two parts, after the Keras example \"Video Classification with Transformers\": "
        f"a DenseNet121 turns each of up to {frames} frames sampled from a video ({spec.get('sampling')} "
        f"sampling) into a {feature_dim}-d feature vector, and a Transformer encoder (learned positional "
        f"embeddings, {heads} attention head{'s' if heads != 1 else ''}, masked max pooling) classifies the "
        f"sequence into {len(labels)} classes. The frame features are computed by `python -m "
        f"beam_jobs.featurize` (or on the fly by `beam_jobs.predict`); this directory holds the classifier.", "",
        *_table(["", ""], [
            ["model id", f"`{m['model_id']}`"],
            ["backbone", f"`{spec.get('backbone_id')}`"],
            ["image size", f"{spec.get('image_size')} x {spec.get('image_size')} pixels"],
            ["frames per video", f"{frames} ({spec.get('sampling')} sampling; shorter videos are padded "
                                 f"and masked)"],
            ["frame features", f"{feature_dim}-d, stored as {spec.get('feature_encoding')}"],
            ["feature engine and precision", engine_and_precision(run.embeddings)],
            ["parameters", f"{run.num_params:,} ({run.num_trainable_params:,} trainable)"],
            ["attention", f"{heads} head{'s' if heads != 1 else ''} of key_dim {feature_dim // heads}"],
            ["inputs", f"`features` [batch, {frames}, {feature_dim}] float32, `mask` [batch, {frames}] bool "
                       f"(True for real frames)"],
            ["output", f"`label_probabilities` [batch, {len(labels)}]"],
        ]), "",
    ]


def _intended_use(run: TrainingRun, model_dir: str) -> list[str]:
    labels = run.metrics["labels"]
    return [
        "## Intended uses & limitations", "",
        f"Labels videos with one of the {len(labels)} classes below (output i is class i, as in labels.txt):",
        "", "```bash",
        f"python -m beam_jobs.predict --runner DirectRunner --input VIDEOS --model {model_dir} --output LABELS",
        "```", "",
        f"The videos are featurized as the training records were (`{run.preprocessing.get('backbone_id')}`, "
        f"{run.preprocessing.get('image_size')} pixels, {run.metrics['classifier']['max_seq_length']} frames: "
        "preprocessing.json); records made otherwise are refused. It knows only these classes: every video "
        "gets one of them, however unlike them it is.", "",
        *_table(["output", "class"], [[i, label] for i, label in enumerate(labels)]), "",
    ]


def _data(run: TrainingRun) -> list[str]:
    labels, counts = run.metrics["labels"], run.class_counts
    sets = [name for name, _ in SPLITS if name in counts]
    rows = [[label, *(counts[name].get(label, 0) for name in sets)] for label in labels]
    rows.append(["**total**", *(sum(counts[name].values()) for name in sets)])
    return [
        "## Training and evaluation data", "",
        "Videos per class in each set:", "",
        *_table(["class", *sets], rows), "",
        *(f"- {name}: {run.sources[name]}" for name in sets if name in run.sources),
        *([f"- {run.sources['disjoint']}"] if "disjoint" in run.sources else []), "",
    ]


def _recipe(run: TrainingRun) -> list[str]:
    m, config = run.metrics, run.metrics["config"]
    patience, warm_up = config["patience"], config["start_from_epoch"]
    if not patience:
        stopping = "no (`--patience 0`: every epoch runs)"
    elif m["stopped_early"]:
        stopping = (f"yes: stopped after epoch {m['epochs_run']}, {patience} epochs without a lower "
                    f"validation loss (`--patience {patience}`)")
    else:
        stopping = f"yes (`--patience {patience}`), not reached"
    changes = learning_rate_changes(run.history)
    schedule = f"{_keras_value(float(config['learning_rate']))} at the start"
    if config["lr_patience"]:
        lr_patience = config["lr_patience"]
        schedule += (f", halved after {lr_patience} epoch{'s' if lr_patience != 1 else ''} without a lower "
                     f"validation loss (`--lr-patience`); ")
        schedule += ("changed after " + ", ".join(f"epoch {e} (to {r:.3g})" for e, r in changes)
                     if changes else "never halved in this run")
    else:
        schedule += ", constant (`--lr-patience 0`)"
    best = (f"{m['best_epoch']} (validation loss {m['best_val_loss']:.4f}): its weights are the ones kept"
            if m["best_epoch"] else "none judged: the last epoch's weights are kept")
    momentum = config["ema_momentum"]
    return [
        "## Training procedure", "",
        "Trained by `python -m model.train`; the settings are in metrics.json (`config`), the epochs in "
        "history.csv and TensorBoard's logs/ (`pip install tensorboard==2.21.0; tensorboard --logdir logs`).", "",
        "### Training hyperparameters", "",
        *_table(["setting", "value"], [
            ["epochs run", f"{m['epochs_run']} of at most {config['epochs']}"],
            ["warm-up (epochs not judged)", f"{warm_up} (`--start-from-epoch`)"],
            ["best epoch", best],
            ["early stopping", stopping],
            ["learning rate", schedule],
            ["moving average of the weights", f"momentum {momentum} (the averaged weights are validated, kept "
                                              f"and exported)" if momentum else "off (raw weights)"],
            ["batch size", config["batch_size"]],
            ["seed", m["seed"]],
            ["attention heads", m["classifier"]["num_heads"]],
            ["dropout (attention, head)", f"{m['classifier']['attention_dropout']}, "
                                          f"{m['classifier']['head_dropout']}"],
            ["training time", f"{m['train_seconds']} s"],
        ]), "",
        "### Optimizer hyperparameters", "",
        "As Keras reports them at the end of training (`optimizer.get_config()`; the learning rate is where the "
        "schedule left it):", "",
        *_table(["hyperparameter", "value"], [[key, _keras_value(value)] for key, value in run.optimizer.items()]),
        "",
    ]


def class_scores_table(report: Mapping[str, Any]) -> list[str]:
    """Per-class precision, recall, F1 and support of a `classification_report`, and the macro average."""
    rows = [[label, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", s["support"]]
            for label, s in report["per_class"].items()]
    macro = report["macro_avg"]
    rows.append(["macro average", f"{macro['precision']:.3f}", f"{macro['recall']:.3f}", f"{macro['f1']:.3f}",
                 report["num_examples"]])
    return _table(["class", "precision", "recall", "F1", "videos"], rows)


def _results(run: TrainingRun, directory: str) -> list[str]:
    m = run.metrics
    rows = [[name, m[f"num_{prefix}_examples"], _score(m[f"{prefix}_accuracy"]),
             "n/a" if m[f"{prefix}_loss"] is None else f"{m[f'{prefix}_loss']:.4f}"]
            for name, prefix in SPLITS if name != "test" or m["num_test_examples"]]
    lines = ["## Results", "",
             "Accuracy of the kept weights on each set (the numbers of metrics.json):", "",
             *_table(["set", "videos", "accuracy", "loss"], rows), ""]
    if run.test_report is not None:
        lines += ["On the test set, per class:", "", *class_scores_table(run.test_report), "",
                  *_picture(directory, TEST_CONFUSION_MATRIX_FILE, "test confusion matrix")]
    lines += ["### Training curves", "", "Loss and accuracy per epoch, training solid and validation dashed; "
              "the dotted line marks the kept epoch.", "",
              *_picture(directory, TRAINING_CURVES_FILE, "training curves"),
              "### Model plot", ""]
    if run.plot_problem is None:
        lines += _picture(directory, MODEL_PLOT_FILE, "model plot")
    else:
        lines += [PLOT_MISSING.format(file=MODEL_PLOT_FILE, reason=run.plot_problem), ""]
    return lines


FILES = (
    ("model.keras", "the Keras model (load with `model.export.load_model_dir`)"),
    ("saved_model/", "the same model for TF Serving (inputs `features`, `mask`)"),
    ("labels.txt", "the classes, line i for output i"),
    ("preprocessing.json", "what the records must match: backbone, image size, frames, sampling"),
    ("metrics.json", "the run's numbers and settings; written last, it marks the directory finished"),
    ("history.csv", "loss, accuracy and learning rate per epoch"),
    ("logs/", "TensorBoard event files"),
)


def training_card(run: TrainingRun, directory: str, model_dir: str) -> str:
    """The card's Markdown. `directory` is where the card and its pictures are (the staging folder);
    `model_dir` is the published directory's path, for the commands in it."""
    labels = run.metrics["labels"]
    lines = [
        *front_matter(),
        f"# Video classifier: {len(labels)} classes",
        "",
        f"DenseNet121 frame features and a Transformer encoder, trained by `model.train`. Test accuracy "
        f"{_score(run.metrics['test_accuracy'])}." if run.metrics["num_test_examples"] else
        "DenseNet121 frame features and a Transformer encoder, trained by `model.train` (no test set given).",
        "",
        *_description(run), *_intended_use(run, model_dir), *_data(run), *_recipe(run), *_results(run, directory),
        "## Files", "", *_table(["file", "what it is"], FILES), "",
    ]
    return "\n".join(lines)


def write_training_card(directory: str, run: TrainingRun, model_dir: str) -> None:
    write_atomically(fs.join(directory, CARD_FILE), training_card(run, directory, model_dir).encode("utf-8"))


# --- The evaluation section ------------------------------------------------------------------------------


def evaluation_section(result: Mapping[str, Any], picture: str, linked: bool, results_file: str) -> str:
    """The card's section for one `model.evaluate` result; `picture` is the confusion matrix, linked as an
    image when it is inside the model directory (`linked`), else named."""
    data = ", ".join(f"`{pattern}`" for pattern in result["data"])
    lines = [
        EVALUATION_BEGIN,
        "## Evaluation",
        "",
        f"`python -m model.evaluate` on {result['num_examples']} videos of {data} ({now_utc()}): accuracy "
        f"{_score(result['accuracy'])}, loss {result['loss']:.4f}, {len(result['misclassified'])} misclassified; "
        f"the misclassified videos and everything else are in `{results_file}`.",
        "",
        *class_scores_table(result),
        "",
        f"![confusion matrix]({picture})" if linked else f"Confusion matrix: `{picture}`.",
        EVALUATION_END,
    ]
    return "\n".join(lines)


_SECTION = re.compile(re.escape(EVALUATION_BEGIN) + r".*?" + re.escape(EVALUATION_END) + r"\n?", re.DOTALL)


def with_evaluation(card: str, section: str) -> str:
    """`card` with its evaluation section replaced by `section` (appended if it has none)."""
    if _SECTION.search(card):
        return _SECTION.sub(lambda _: section + "\n", card, count=1)
    return card.rstrip("\n") + "\n\n" + section + "\n"


def inside(path: str, directory: str) -> str | None:
    """`path` relative to `directory` if it is inside it, else None."""
    if not fs.is_remote(path) and not fs.is_remote(directory):
        path, directory = os.path.abspath(path), os.path.abspath(directory)
    try:
        return fs.relative(path, directory)
    except ValueError:
        return None


def add_evaluation(model_dir: str, result: Mapping[str, Any], picture: str, results_file: str) -> bool:
    """Put `result` (model.evaluate's) into the card of `model_dir`, replacing an earlier evaluation section;
    the card is rewritten whole. Returns False (and changes nothing) if the directory has no card."""
    path = fs.join(model_dir, CARD_FILE)
    if not fs.exists(path):
        logger.info("%s has no model card (%s); the evaluation is not added to one", model_dir, CARD_FILE)
        return False
    relative = inside(picture, model_dir)
    shown = relative if relative is not None else picture
    results = inside(results_file, model_dir) or results_file
    section = evaluation_section(result, shown, relative is not None, results)
    write_atomically(path, with_evaluation(fs.read_text(path), section).encode("utf-8"))
    return True
