"""The model card (model.card): what model.train writes as README.md in the model directory, and the section
model.evaluate adds to it."""

import dataclasses
import importlib.util
import json
import os
import re
import shutil

import pytest
import yaml
from markdown_it import MarkdownIt

from conftest import make_records
from model import callbacks, card, evaluate, train
from model.export import load_model_dir

# A few epochs are enough: the card reports what the run did, whatever its accuracy. --lr-patience 1 makes
# the schedule halve the rate within them.
QUICK = ["--epochs", "4", "--learning-rate", "0.01", "--lr-patience", "1", "--start-from-epoch", "0",
         "--batch-size", "16", "--seed", "3"]
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    make_records(str(root / "train"), per_class=14, seed=1)
    make_records(str(root / "test"), per_class=5, seed=2)
    output = str(root / "model")
    metrics = train.run(["--train", str(root / "train"), "--test", str(root / "test"), "--output", output, *QUICK])
    return root, output, metrics


def read_card(output):
    with open(os.path.join(output, card.CARD_FILE), encoding="utf-8") as f:
        return f.read()


def split_front_matter(text):
    """(front matter as parsed YAML, the Markdown after it); the card must open with it."""
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, text[:200]
    return yaml.safe_load(match.group(1)), text[match.end():]


def table_rows(markdown, first_header):
    """The body rows of the table whose first header cell is `first_header`, as lists of cell texts."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines[:-1])
                 if line.startswith(f"| {first_header} |") and lines[i + 1].startswith("|---"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_card_has_hub_front_matter_and_renders_as_markdown(trained):
    _, output, _ = trained
    meta, body = split_front_matter(read_card(output))
    assert meta["library_name"] == "keras" and meta["pipeline_tag"] == "video-classification"
    assert {"video-classification", "keras", "tensorflow", "transformer", "densenet121"} <= set(meta["tags"])
    assert meta["metrics"] == ["accuracy"]
    tokens = MarkdownIt("commonmark").enable("table").parse(body)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings[:6] == ["Video classifier: 2 classes", "Model description", "Intended uses & limitations",
                            "Training and evaluation data", "Training procedure", "Training hyperparameters"]
    assert {"Optimizer hyperparameters", "Results", "Training curves", "Model plot", "Files"} <= set(headings)
    # Every table renders as one (a stray pipe in a cell would break its row): the description, classes,
    # counts, recipe, optimizer, results, test per class and files tables.
    assert sum(t.type == "table_open" for t in tokens) == 8


def test_card_reports_the_numbers_of_the_run(trained):
    _, output, metrics = trained
    text = read_card(output)
    _, body = split_front_matter(text)
    # The test and validation accuracy with the digits metrics.json has.
    results = {row[0]: row for row in table_rows(body, "set")}
    assert results["test"][2].startswith(json.dumps(metrics["test_accuracy"]) + " (")
    assert results["validation"][2].startswith(json.dumps(metrics["val_accuracy"]) + " (")
    assert results["test"][1] == str(metrics["num_test_examples"]) == "10"
    # Every class, in output order, and its videos per set adding up to the sets' sizes.
    assert table_rows(body, "output") == [["0", "down"], ["1", "up"]]
    counts = {row[0]: row[1:] for row in table_rows(body, "class") if row[0] in ("down", "up", "**total**")}
    assert counts["**total**"] == [str(metrics["num_train_examples"]), str(metrics["num_val_examples"]), "10"]
    assert [counts["down"][2], counts["up"][2]] == ["5", "5"]
    params = load_model_dir(output).model.count_params()
    assert f"| parameters | {params:,} ({params:,} trainable) |" in body
    assert f"| model id | `{metrics['model_id']}` |" in body
    # The recipe as it ran: epochs, best epoch, the halvings history.csv shows, batch size, seed, heads.
    recipe = dict(row[:2] for row in table_rows(body, "setting"))
    assert recipe["epochs run"] == f"{metrics['epochs_run']} of at most 4"
    assert recipe["best epoch"].startswith(f"{metrics['best_epoch']} (validation loss")
    history = callbacks.read_history(os.path.join(output, "history.csv"))
    # Each epoch after which the rate changed (the next row of history.csv has another), and the new rate.
    changes = [(before["epoch"], after["learning_rate"]) for before, after in zip(history, history[1:])
               if after["learning_rate"] != before["learning_rate"]]
    assert changes and re.findall(r"epoch (\d+) \(to ([^)]+)\)", recipe["learning rate"]) == [
        (str(epoch), f"{rate:.3g}") for epoch, rate in changes]
    assert recipe["batch size"] == "16" and recipe["seed"] == "3" and recipe["attention heads"] == "8"
    assert "`--patience 30`" in recipe["early stopping"]
    # The optimizer's hyperparameters as Keras reports them; the rate is where the schedule left it.
    optimizer = dict(row[:2] for row in table_rows(body, "hyperparameter"))
    # Keras numbers optimizers made in one process: averaging_adam, averaging_adam_1, ...
    assert re.fullmatch(r"averaging_adam(_\d+)?", optimizer["name"]) and optimizer["use_ema"] == "True"
    # history.csv has each epoch's rate; a halving after the last epoch shows only in the optimizer.
    last = history[-1]["learning_rate"]
    assert float(optimizer["learning_rate"]) in (pytest.approx(last, rel=1e-6), pytest.approx(last / 2, rel=1e-6))
    assert "`" + str(trained[0] / "train") + "` (2 files)" in body  # where the records came from
    assert "| feature engine and precision | not recorded |" in body  # these records do not say


def test_card_links_only_pictures_in_the_directory(trained):
    _, output, _ = trained
    linked = IMAGE.findall(read_card(output))
    assert {"training_curves.png", card.TEST_CONFUSION_MATRIX_FILE} <= set(linked)
    for name in linked:
        with open(os.path.join(output, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    # The model plot is drawn and linked exactly when pydot and Graphviz's dot are installed (`make graphviz`);
    # else the card says how to get it.
    can_plot = importlib.util.find_spec("pydot") is not None and shutil.which("dot") is not None
    assert os.path.exists(os.path.join(output, card.MODEL_PLOT_FILE)) == can_plot
    assert (card.MODEL_PLOT_FILE in linked) == can_plot
    assert ("No model plot" in read_card(output)) == (not can_plot)


def test_without_graphviz_the_card_says_how_to_get_the_plot(trained, tmp_path, monkeypatch):
    _, output, metrics = trained
    import keras

    from model.plots import model_plot

    def no_pydot(*args, **kwargs):
        raise ImportError("You must install pydot (`pip install pydot`) for `plot_model` to work.")

    monkeypatch.setattr(keras.utils, "plot_model", no_pydot)
    problem = model_plot(load_model_dir(output).model, str(tmp_path / card.MODEL_PLOT_FILE))
    assert problem.startswith("You must install pydot") and not os.path.exists(tmp_path / card.MODEL_PLOT_FILE)
    with open(os.path.join(output, "preprocessing.json")) as f:
        preprocessing = json.load(f)
    run = card.TrainingRun(metrics=metrics, preprocessing=preprocessing, class_counts={"train": {}},
                           sources={}, history=[], optimizer={}, num_params=1, num_trainable_params=1,
                           plot_problem=problem)
    text = card.training_card(run, str(tmp_path), output)  # a folder without the pictures
    assert "No model plot: `keras.utils.plot_model` needs pydot" in text and "apt-get install graphviz" in text
    assert IMAGE.findall(text) == []
    # Records that say which engine made their features get it on the card.
    shown = card.training_card(dataclasses.replace(run, embeddings=[
        {"engine": "openvino", "engine_version": "2026.4.1", "precision": "bf16"},
        {"engine": "tensorflow", "engine_version": "", "precision": "f32"}]), output, output)
    assert "| feature engine and precision | openvino 2026.4.1, bf16; tensorflow, f32 |" in shown


def test_evaluate_adds_its_section_once(trained):
    root, output, _ = trained
    trained_card = read_card(output)
    args = ["--model", output, "--data", str(root / "test")]
    evaluate.run(args)
    result = evaluate.run(args)  # again: the section is replaced, not added twice
    text = read_card(output)
    assert text.count(card.EVALUATION_BEGIN) == text.count(card.EVALUATION_END) == 1
    assert text.count("## Evaluation") == 1
    start, end = text.index(card.EVALUATION_BEGIN), text.index(card.EVALUATION_END)
    assert text[:start].rstrip("\n") == trained_card.rstrip("\n")  # the training part is untouched
    section = text[start:end]
    assert f"accuracy {json.dumps(result['accuracy'])} (" in section
    assert f"on {result['num_examples']} videos of `{root / 'test'}`" in section
    scores = {row[0]: row for row in table_rows(section, "class")}
    for label in ("down", "up"):
        per_class = result["per_class"][label]
        assert scores[label] == [label, f"{per_class['precision']:.3f}", f"{per_class['recall']:.3f}",
                                 f"{per_class['f1']:.3f}", str(per_class["support"])]
    assert IMAGE.findall(section) == ["evaluation/confusion_matrix.png"]
    assert os.path.exists(os.path.join(output, "evaluation", "confusion_matrix.png"))

    # Results written outside the model directory are named, not linked (the link would not travel with it).
    elsewhere = root / "elsewhere"
    evaluate.run(args + ["--output", str(elsewhere)])
    text = read_card(output)
    assert text.count(card.EVALUATION_BEGIN) == 1
    section = text[text.index(card.EVALUATION_BEGIN):]
    assert IMAGE.findall(section) == [] and f"Confusion matrix: `{elsewhere / 'confusion_matrix.png'}`" in section
    split_front_matter(text)  # still opens with valid front matter


def test_the_card_says_how_the_split_was_made(tmp_path):
    """By video id, or by group (--split-by), and whether the sets given apart were checked to share none."""
    from model.data import load_training_data

    make_records(str(tmp_path / "train"), per_class=20, seed=1)
    make_records(str(tmp_path / "test"), per_class=3, seed=2)
    by_id = card.record_sources(load_training_data([str(tmp_path / "train")], test=[str(tmp_path / "test")]))
    assert by_id["validation"] == ("15% of the training videos, held out by a hash of the video id "
                                   "(`--validation-split 0.15`)")
    assert by_id["disjoint"] == "the sets given apart were checked to share no video id"
    rule = r"-(\d+)$"  # make_records' ids end in -<clip number>: clip i of every class is one group
    by_group = card.record_sources(load_training_data([str(tmp_path / "train")], validation_split=0.3,
                                                      split_by=rule))
    assert by_group["validation"] == (
        "30% of the training videos, held out by a hash of each video's group (`--split-by -(\\d+)$`: the first "
        "group of that expression in the video id), so that no group is in two sets (`--validation-split 0.3`)")
    assert "disjoint" not in by_group
    run = card.TrainingRun(metrics={"labels": ["down", "up"]}, preprocessing={},
                           class_counts={"train": {"down": 14, "up": 14}, "validation": {"down": 6, "up": 6}},
                           sources=by_group, history=[], optimizer={}, num_params=1, num_trainable_params=1)
    assert f"- validation: {by_group['validation']}" in card._data(run)
