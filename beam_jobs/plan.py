"""What a scheduled re-run has to do, worked out in the launcher before any pipeline is built.

The listing (`beam_jobs.matching.write_listing`), the previous run's index and its labels.csv are walked side
by side in video id order (`common.sorting`: the listing and an index not written in order yet are sorted
externally, in bounded memory): a listed video whose previous index entry says it is unchanged
(`incremental.unchanged`) is carried over, a new or changed one goes to the pipeline (with the previous run's
fingerprint and row when it had them, so that a video whose listing changed but whose bytes did not skips the
model), and a video the previous run knew that is no longer listed is removed. `--verify` carries nothing
over; a different model (or windows) relabels everything.

The plan is four files in a folder: `todo.jsonl` (what the pipeline reads: one {"ref", "previous"} a line),
`carried-index.jsonl` (the index entries of the videos carried over, in id order: publishing merges their
rows from the previous files, `beam_jobs.carry`), `removed.jsonl` (ids, JSON) and, with --segments,
`previous-segments.csv` (the previous segments of the videos sent with a previous row). With nothing new,
changed or removed, and settings that would write the same outputs (`nothing_to_do`), no pipeline runs:
`record_check` notes the check in the manifest.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
from typing import Iterator

from beam_jobs.incremental import PreviousRun, parse_row, unchanged
from beam_jobs.label_rows import LABELS_FILE
from beam_jobs.matching import VideoRef, parse_ref
from beam_jobs.outputs import MANIFEST_FILE
from beam_jobs.segments import SEGMENTS_FILE
from beam_jobs.sinks import csv_records, csv_values
from common import fs, publish
from common.sorting import DEFAULT_BUDGET_BYTES, align, keyed, sorted_file

TODO_FILE, CARRIED_FILE, REMOVED_FILE = "todo.jsonl", "carried-index.jsonl", "removed.jsonl"
PREVIOUS_SEGMENTS_FILE = "previous-segments.csv"
PLAN_FILES = (TODO_FILE, CARRIED_FILE, REMOVED_FILE, PREVIOUS_SEGMENTS_FILE)
CHECK_KEY = "last_check"  # in the manifest: the latest re-run that found nothing to do

_ID_PREFIX = '{"video_id": '
_JSON = json.JSONDecoder()


def video_id_of(line: str) -> str:
    """The video id of a JSON line of the listing or the index (their first key), without parsing the rest."""
    if line.startswith(_ID_PREFIX):
        return _JSON.raw_decode(line, len(_ID_PREFIX))[0]
    return json.loads(line)["video_id"]


def csv_id_of(record: str) -> str:
    """The first field of a CSV record (labels.csv and segments.csv start with the video id)."""
    return csv_values(record)[0] if record.startswith('"') else record.split(",", 1)[0].rstrip("\r\n")


@dataclasses.dataclass(frozen=True)
class Plan:
    """The plan's folder and its counts: distinct videos listed, sent to the pipeline, carried over, removed."""

    folder: str
    listed: int
    todo: int
    carried: int
    removed: int

    @property
    def changed(self) -> bool:
        return bool(self.todo or self.removed)

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)


def _listed(path: str, scratch: str, budget: int) -> Iterator[tuple[str, VideoRef]]:
    """(video id, VideoRef) of each listed video in id order; a video listed twice (overlapping inputs) once,
    by the first of its URIs."""
    for video_id, group in itertools.groupby(sorted_file(path, video_id_of, scratch, budget), key=video_id_of):
        yield video_id, min(map(parse_ref, group), key=lambda ref: ref.uri)


def _index_lines(paths: tuple[str, ...]) -> Iterator[str]:
    for path in paths:
        with fs.open_read(path) as raw:
            yield from io.TextIOWrapper(raw, encoding="utf-8", newline="")


def _indexed(previous: PreviousRun, scratch: str, budget: int) -> Iterator[tuple[str, dict]]:
    """(video id, entry) of the previous run's index in id order. Index files on gs:// are copied here first:
    an index in order is read twice (once to find it is)."""
    paths = previous.index_files
    if any(fs.is_remote(p) for p in paths):
        local = os.path.join(scratch, "previous-index.jsonl")
        with open(local, "w", encoding="utf-8", newline="") as f:
            f.writelines(_index_lines(paths))
        paths = (local,)
    lines = sorted_file(paths[0], video_id_of, scratch, budget, opener=lambda _: _index_lines(paths))
    for line in lines:
        entry = json.loads(line)
        yield entry["video_id"], entry


def plan_run(listing: str, output: str, previous: PreviousRun | None, carry: bool, verify: bool, scratch: str,
             budget_bytes: int = DEFAULT_BUDGET_BYTES) -> Plan:
    """Walk the listing file (local, one VideoRef a line, any order) and the previous run in `output` side by
    side; write the plan's files under `scratch`/plan and return it. `carry` is False when the model or the
    windows changed (every video is read, none with a previous row); `verify` reads every video."""
    folder = os.path.join(scratch, "plan")
    os.makedirs(folder, exist_ok=True)
    streams = [_listed(listing, scratch, budget_bytes)]
    if previous is not None:
        streams += [_indexed(previous, scratch, budget_bytes),
                    keyed(csv_records(fs.join(output, LABELS_FILE), header=True), csv_id_of)]
    listed = todo = carried = removed = 0
    known: list[str] | None = [] if carry and previous is not None and previous.segments else None
    with (open(os.path.join(folder, TODO_FILE), "w", encoding="utf-8") as todo_file,
          open(os.path.join(folder, CARRIED_FILE), "w", encoding="utf-8") as carried_file,
          open(os.path.join(folder, REMOVED_FILE), "w", encoding="utf-8") as removed_file):
        for video_id, (ref, entry, record) in align(streams) if previous is not None else (
                (video_id, (ref, None, None)) for video_id, ref in streams[0]):
            if ref is None:
                removed += 1
                removed_file.write(json.dumps(video_id) + "\n")
                continue
            listed += 1
            if carry and entry is not None and record is not None and not verify and unchanged(entry, ref):
                carried += 1
                carried_file.write(json.dumps(entry, ensure_ascii=False) + "\n")
                continue
            todo += 1
            before = None
            if carry and entry is not None and record is not None:
                before = (entry["fingerprint"], parse_row(record, previous.columns)[1])
                if known is not None:
                    known.append(video_id)
            todo_file.write(json.dumps({"ref": dataclasses.asdict(ref), "previous": before}, ensure_ascii=False)
                            + "\n")
    if known:
        _previous_segments(fs.join(output, SEGMENTS_FILE), previous, iter(known),
                           os.path.join(folder, PREVIOUS_SEGMENTS_FILE))
    return Plan(folder, listed, todo, carried, removed)


def _previous_segments(path: str, previous: PreviousRun, ids: Iterator[str], destination: str) -> None:
    """The previous run's segments.csv records of `ids` (in id order), with its header."""
    from beam_jobs.sinks import csv_line

    wanted = next(ids, None)
    with open(destination, "w", encoding="utf-8", newline="") as f:
        f.write(csv_line(previous.segment_columns))
        for record in csv_records(path, header=True):
            video_id = csv_id_of(record)
            while wanted is not None and wanted < video_id:
                wanted = next(ids, None)
            if wanted is None:
                break
            if wanted == video_id:
                f.write(record)


def stage(plan: Plan, folder: str) -> None:
    """Copy the plan's files to `folder` (in staging, where the pipeline's workers and publishing read them)."""
    for name in PLAN_FILES:
        if os.path.exists(plan.path(name)):
            fs.copy_file(plan.path(name), fs.join(folder, name))


def reuse(previous: PreviousRun | None, model_id: str, windows, args) -> tuple[bool, bool]:
    """(carry, redo): whether the previous run's rows may be carried over (the same model, and the same
    windows with --segments), and whether they must be decided again (another --min-confidence or --top-k;
    the model's labels are its p_ columns)."""
    carry = (previous is not None and previous.model_id == model_id
             and (windows is None or previous.segments == windows.manifest()))
    labels = sum(column.startswith("p_") for column in previous.columns) if carry else 0
    redo = carry and previous.decisions != {"min_confidence": args.min_confidence, "top_k": min(args.top_k, labels)}
    return carry, redo


def nothing_to_do(plan: Plan, previous: PreviousRun | None, carry: bool, redo: bool, args) -> bool:
    """Whether a run would publish the outputs already there: nothing new, changed or removed, the same model
    and windows and decisions, no --verify or --overwrite, per-video files as before, and no review tasks then
    or now (a run's tasks are for the videos it labelled)."""
    return (previous is not None and carry and not redo and not plan.changed and not args.verify
            and not args.overwrite and previous.per_video == bool(args.per_video) and not previous.review
            and not getattr(args, "review", False))


def record_check(output: str, plan: Plan, run_id: str, seconds: float, fence) -> dict:
    """Note in the manifest that this run found nothing to do: when, how many videos it checked, and that it
    labelled none (every video is the previous run's). The manifest is replaced whole; `fence` (the lease
    check) runs first."""
    path = fs.join(output, MANIFEST_FILE)
    manifest = fs.read_json(path)
    manifest.update(labelled_this_run=0, reused_from_previous_run=manifest.get("videos_labelled", plan.carried),
                    frames_sampled=0, **{CHECK_KEY: {"checked_at": publish.now_utc(), "videos_checked": plan.listed,
                                                     "new": 0, "changed": 0, "removed": 0,
                                                     "seconds": round(seconds, 1), "run_id": run_id}})
    fence()
    publish.write_atomically(path, fs.json_text(manifest).encode("utf-8"))
    return manifest
