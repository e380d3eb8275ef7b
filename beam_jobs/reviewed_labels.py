"""Reviewed labels back from Label Studio: its JSON export of a review (beam_jobs.review) -> the labels CSV
featurize takes (`video_name,tag`), for the videos a person accepted or corrected.

    python -m beam_jobs.reviewed_labels export.json --run labels/new --output reviewed.csv
    python -m beam_jobs.featurize --input data/new --labels reviewed.csv --output features/reviewed

`--run` is the labelling run the tasks came from (predict's --output): its manifest gives the classes, its
labels.csv the video ids. A task's reviewed label is the class chosen in its annotation (a ground-truth
annotation first, else the latest one); tasks whose annotations were all skipped, or that have none or no
class chosen, are left out. It prints how many videos were accepted as the model labelled them and how many
were corrected, with the corrections as a confusion of model label vs reviewed label.

Problems in the export (tasks of another labelling config, classes the model does not know, videos that
are not in the run) are left out with one line each on stderr; the command fails (exit 2) only when no
reviewed label is left to write. The CSV's video names are the run's video ids: give featurize the same
--input the labelling run had.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import Counter
from typing import Iterable, NamedTuple

from beam_jobs.label_rows import LABELS_FILE
from beam_jobs.outputs import MANIFEST_FILE
from beam_jobs.review import CHOICES, VIDEO
from common import fs, publish
from common.errors import UserError

SHOWN = 3  # examples named in each problem's line


class Reviewed(NamedTuple):
    video_id: str
    model_label: str  # the class the model's prediction showed ('' when the task does not say)
    label: str  # the class the person chose


class Review(NamedTuple):
    """What an export holds: the reviewed videos, how many tasks were left without a label, and the problems
    found ({what is wrong: [examples]})."""

    reviewed: list[Reviewed]
    unreviewed: int
    problems: dict[str, list[str]]


def _annotation(task: dict) -> dict | None:
    """The annotation that counts: ground truth first, then the latest; skipped ones never count."""
    kept = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not kept:
        return None
    return max(kept, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at") or a.get("created_at")
                                                                        or ""), a.get("id") or 0))


def _chosen(annotation: dict) -> tuple[list[str], list[str]]:
    """(the classes chosen for the whole video, the names of results no review config makes)."""
    chosen, foreign = [], []
    for result in annotation.get("result") or []:
        if result.get("type") == "choices" and result.get("from_name") == CHOICES and result.get("to_name") == VIDEO:
            chosen += result.get("value", {}).get("choices") or []
        elif result.get("type") not in ("timelinelabels",):
            foreign.append(f"{result.get('type')}:{result.get('from_name')}")
    return chosen, foreign


def read_review(tasks: Iterable, classes: set[str]) -> Review:
    """The reviewed videos of an export's tasks, checked against the run's classes (not yet its video ids)."""
    problems: dict[str, list[str]] = {}
    latest: dict[str, tuple[str, Reviewed]] = {}
    unreviewed = 0

    def problem(kind: str, example: str) -> None:
        problems.setdefault(kind, []).append(example)

    for task in tasks:
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or not data.get("video_id"):
            problem("tasks of another labelling config (no video_id in their data)", f"task {_task_id(task)}")
            continue
        video_id = str(data["video_id"])
        annotation = _annotation(task)
        if annotation is None:
            unreviewed += 1
            continue
        chosen, foreign = _chosen(annotation)
        if foreign:
            problem("tasks annotated with another labelling config", f"{video_id} ({', '.join(sorted(set(foreign)))})")
            continue
        if not chosen:
            unreviewed += 1
            continue
        if len(set(chosen)) > 1:
            problem("tasks with more than one class chosen", f"{video_id} ({', '.join(chosen)})")
            continue
        label = chosen[0]
        if label not in classes:
            problem("classes the model does not know", f"{label} ({video_id})")
            continue
        when = str(annotation.get("updated_at") or annotation.get("created_at") or "")
        if video_id in latest and latest[video_id][0] > when:
            continue  # a video imported twice: its latest review counts
        latest[video_id] = (when, Reviewed(video_id, str(data.get("model_label") or ""), label))
    return Review([reviewed for _, reviewed in latest.values()], unreviewed, problems)


def _task_id(task) -> str:
    return str(task.get("id", "?")) if isinstance(task, dict) else repr(task)[:40]


def run_video_ids(run: str, wanted: set[str]) -> set[str]:
    """Which of `wanted` are in the run's labels.csv (read a line at a time)."""
    found = set()
    with fs.open_read(fs.join(run, LABELS_FILE)) as raw:
        for row in csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline="")):
            if row["video_id"] in wanted:
                found.add(row["video_id"])
    return found


def read_run(run: str) -> list[str]:
    """The classes of a finished labelling run (its manifest)."""
    manifest_path = fs.join(run, MANIFEST_FILE)
    if not fs.exists(manifest_path):
        raise UserError(f"--run {run} holds no finished labelling run ({MANIFEST_FILE})")
    manifest = fs.read_json(manifest_path)
    if manifest.get("job") != "predict" or not manifest.get("labels"):
        raise UserError(f"--run {run} holds the output of a {manifest.get('job', 'different')} job, not a "
                        "labelling run")
    return list(manifest["labels"])


def read_export(path: str) -> list:
    if not fs.exists(path):
        raise UserError(f"export {path} does not exist")
    try:
        tasks = json.loads(fs.read_text(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"export {path} is not JSON ({exc}); export the project as JSON from Label Studio") from None
    if not isinstance(tasks, list):
        raise UserError(f"export {path} is not a list of tasks; export the project as JSON (not JSON-MIN or CSV)")
    return tasks


def confusion_lines(reviewed: list[Reviewed]) -> list[str]:
    """The corrections as a table: one row per model label, one column per reviewed label."""
    pairs = Counter((r.model_label or "?", r.label) for r in reviewed if r.model_label != r.label)
    if not pairs:
        return []
    rows = sorted({m for m, _ in pairs})
    columns = sorted({l for _, l in pairs})
    width = max(len("model \\ reviewed"), *map(len, rows))
    cells = [max(len(c), 3) for c in columns]
    lines = ["  " + "model \\ reviewed".ljust(width) + "".join(f"  {c:>{w}}" for c, w in zip(columns, cells))]
    for m in rows:
        lines.append("  " + m.ljust(width) + "".join(f"  {pairs.get((m, c), 0) or '.':>{w}}"
                                                   for c, w in zip(columns, cells)))
    return lines


def write_labels_csv(reviewed: list[Reviewed], output: str) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("video_name", "tag"))
    writer.writerows((r.video_id, r.label) for r in sorted(reviewed))
    if fs.is_remote(output):
        fs.write_text(output, buffer.getvalue())
    else:
        publish.write_atomically(output, buffer.getvalue().encode("utf-8"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.reviewed_labels",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", help="Label Studio's JSON export of the review project")
    parser.add_argument("--run", required=True, help="the labelling run the tasks came from (predict's --output)")
    parser.add_argument("--output", required=True, help="the labels CSV to write (video_name,tag)")
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Write the reviewed labels; returns the counts it printed."""
    args = build_parser().parse_args(argv)
    classes = read_run(args.run)
    review = read_review(read_export(args.export), set(classes))
    in_run = run_video_ids(args.run, {r.video_id for r in review.reviewed})
    reviewed = [r for r in review.reviewed if r.video_id in in_run]
    problems = dict(review.problems)
    if outside := sorted(r.video_id for r in review.reviewed if r.video_id not in in_run):
        problems[f"videos not in the run {args.run}"] = outside
    for kind, examples in problems.items():
        shown = ", ".join(examples[:SHOWN]) + (f" and {len(examples) - SHOWN} more" if len(examples) > SHOWN else "")
        print(f"warning: {len(examples)} left out, {kind}: {shown}", file=sys.stderr)
    if not reviewed:
        raise UserError(f"no reviewed labels in {args.export}: {review.unreviewed} task(s) skipped or not labelled, "
                        f"{sum(map(len, problems.values()))} left out; nothing written")
    write_labels_csv(reviewed, args.output)
    accepted = sum(r.label == r.model_label for r in reviewed)
    counts = {"reviewed": len(reviewed), "accepted": accepted, "corrected": len(reviewed) - accepted,
              "unreviewed": review.unreviewed, "left_out": sum(map(len, problems.values()))}
    print(f"reviewed_labels: {counts['reviewed']} reviewed labels in {args.output}: {accepted} accepted as the model "
          f"labelled them, {counts['corrected']} corrected; {review.unreviewed} task(s) skipped or not labelled, "
          f"{counts['left_out']} left out")
    for line in confusion_lines(reviewed):
        print(line)
    return counts


if __name__ == "__main__":
    from common.cli import main

    sys.exit(main(run))
