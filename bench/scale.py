"""Bucket scale (issues 23 and 35): scheduled re-runs of the labelling job over N videos, N up to a million.

    python -m bench.scale                 # N = 20,000, 200,000 and 1,000,000 with 0 new; 200,000 with 1,000 new,
                                          # and with 1,000 removed and 1,000 changed
    python -m bench.scale --sizes 2000    # a quick look

The N videos are hard links of a few generated clips (hard links share size and modification time; ext4
allows 65,000 links an inode, so each clip gets at most 50,000), in folders of 1,000. The previous finished
run is written in the job's own format (labels.csv, a sharded index, manifest.json) from the listing itself,
with distinct fingerprints and probabilities, as a real earlier run of the same model would have left it.
Each re-run is `python -m beam_jobs.predict` in a child process (`--child`) that records the serialized
pipeline graph and its peak RSS at the moment the pipeline starts (the launcher's), then runs it to the end;
the whole job's peak RSS is sampled over its process tree (bench.harness.run_job). A re-run that finds nothing
to do builds no pipeline: its launcher's peak RSS is the process's at exit, and its graph 0 bytes. The model
is a small untrained classifier for 32-pixel, 4-frame features: the new videos' model work is real but small.

The run with removed and changed videos starts from a previous run whose rows are those a run from scratch
writes (each source clip labelled by a real run, `_source_rows`: a link's row is its clip's, under its own id
and URI), except for 1,000 videos whose index entry and row are stale (another version, fingerprint and
probabilities: the listing says they changed) and 1,000 videos no longer there. Its labels.csv must equal the
from-scratch one: the changed rows made again by the model, the removed ones gone, the others carried.
(Hard links cannot be removed or re-pointed without changing the ctime their clip's other links share, so the
changes are made on the previous run's side; to the job it is the same.)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench.harness import REPO, WORK_DIR, load_average, log, machine, python_module, run_job

FRAMES, IMAGE_SIZE = 4, 32
SOURCE_CLIPS = 24
LINKS_PER_CLIP = 50_000
FOLDER_SIZE = 1000
SCALE_DIR = WORK_DIR / "scale"
SIZES = (20_000, 200_000, 1_000_000)
NEW = 1000
CHANGED = REMOVED = 1000
TARGETS = {"graph_growth": 0.10, "rerun_200k_s": 10.0, "launcher_rss_mb_200k": 500, "rerun_1m_s": 60.0,
           "launcher_rss_mb_1m": 1024, "new_1000_extra_s": 15.0}


def _model_dir(root: Path) -> Path:
    import keras

    from model.classifier import ClassifierConfig, build_classifier
    from model.export import export_model_dir
    from tfrecords_schema import RecordSpec

    path = root / "model"
    if not (path / "model.keras").exists():
        keras.utils.set_random_seed(3)
        model = build_classifier(ClassifierConfig(num_classes=3, max_seq_length=FRAMES))
        export_model_dir(model, ["fading_in", "growing", "shrinking"],
                         RecordSpec(1024, FRAMES, "densenet121/random-seed1337", IMAGE_SIZE), str(path),
                         saved_model=False)
    return path


def _source_clips(root: Path) -> list[Path]:
    from tools.sample_videos import write_sample_set

    clips = root / "sources"
    if not clips.exists():
        write_sample_set(str(clips), per_class=SOURCE_CLIPS // 3, seed=9, classes=("growing", "shrinking", "fading_in"),
                         min_frames=6, max_frames=12, sizes=[(48, 40)])
    return sorted(p for p in clips.rglob("*") if p.suffix in (".mp4", ".avi"))


def _link_videos(folder: Path, sources: list[Path], count: int, start: int = 0) -> None:
    """`count` hard links named video_<i> (i from `start`), in folders of FOLDER_SIZE."""
    for i in range(start, start + count):
        source = sources[(i // LINKS_PER_CLIP) % len(sources)]
        path = folder / f"part_{i // FOLDER_SIZE:05d}" / f"video_{i:07d}{source.suffix}"
        if i % FOLDER_SIZE == 0 or i == start:
            path.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, path)


def _source_rows(model: Path, sources: list[Path]) -> dict[str, list[str]]:
    """{source clip path: its labels.csv values} from a real labelling run over the source clips."""
    import csv

    output = SCALE_DIR / "source_labels"
    if not (output / "labels.csv").exists():
        run_job("scale_source_labels", python_module("beam_jobs.predict", "--input", str(sources[0].parent.parent),
                                                     "--model", str(model), "--output", str(output),
                                                     "--runner", "DirectRunner", "--overwrite")).check()
    with open(output / "labels.csv", newline="") as f:
        return {row[1]: row for row in list(csv.reader(f))[1:]}


def _previous_run(output: Path, videos: Path, model: Path, exclude: str, rows: dict | None = None,
                  changed: int = 0, removed: int = 0, expected: Path | None = None) -> None:
    """A finished labelling run over every video now under `videos` but those whose id starts with `exclude`,
    in the job's format. With `rows` (`_source_rows`), each video's row is its clip's (what a run from scratch
    writes, also written to `expected` with the header), `changed` evenly spread videos get a stale index entry
    and row, and `removed` videos no longer there are added."""
    import hashlib

    from beam_jobs.incremental import index_entry
    from beam_jobs.label_rows import label_columns
    from beam_jobs.matching import iter_videos
    from beam_jobs.sinks import csv_line
    from model.export import load_model_dir

    loaded = load_model_dir(str(model))
    columns = label_columns(loaded.labels)
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    refs = sorted((r for r in iter_videos([str(videos)]) if not (exclude and r.video_id.startswith(exclude))),
                  key=lambda r: r.video_id)
    step = len(refs) // max(changed, removed, 1)
    stale = {refs[i].video_id for i in range(step // 2, len(refs), step)[:changed]} if changed else set()
    if removed:
        refs += [dataclasses.replace(refs[i], video_id=f"{refs[i].video_id}.gone", uri=f"{refs[i].uri}.gone")
                 for i in range(0, len(refs), step)][:removed]
        refs.sort(key=lambda r: r.video_id)
    wanted = open(expected, "w") if expected else None
    if wanted:
        wanted.write(csv_line(columns))
    count = 0
    with open(output / "labels.csv", "w") as labels, open(output / "index-00000-of-00001.jsonl", "w") as index:
        labels.write(csv_line(columns))
        for ref in refs:
            if rows is None:
                p = (count % 997) / 1000
                probabilities = [p, (1 - p) / 2, (1 - p) / 2]
                best = max(range(3), key=probabilities.__getitem__)
                values = [ref.video_id, ref.uri, loaded.labels[best], f"{probabilities[best]:.6f}",
                          ";".join(f"{loaded.labels[i]}:{probabilities[i]:.6f}" for i in range(3)),
                          *(f"{q:.6f}" for q in probabilities), loaded.model_id]
            else:
                values = [ref.video_id, ref.uri, *_row_of(rows, ref.uri.removesuffix(".gone"))[2:]]
                if wanted and not ref.uri.endswith(".gone"):
                    wanted.write(csv_line(values))
                if ref.video_id in stale:  # the listing will say it changed: another version, another clip's row
                    ref = dataclasses.replace(ref, version="stale")
                    values = values[:2] + next(r[2:] for r in rows.values() if r[2:] != values[2:])
            labels.write(csv_line(values))
            fingerprint = hashlib.sha256(ref.video_id.encode()).hexdigest()
            index.write(json.dumps(index_entry(ref, fingerprint)) + "\n")
            count += 1
    if wanted:
        wanted.close()
    (output / "manifest.json").write_text(json.dumps({"job": "predict", "model_id": loaded.model_id,
                                                      "videos_matched": count, "videos_labelled": count,
                                                      "labelled_this_run": count, "failures": 0,
                                                      "options": {"per_video": False, "min_confidence": 0.0,
                                                                  "top_k": 3}}))


_INODES: dict[tuple[int, int], str] = {}


def _row_of(rows: dict, uri: str) -> list[str]:
    """The from-scratch row of a hard link: its clip's (the clip with the same inode)."""
    if not _INODES:
        for path in rows:
            info = os.stat(path)
            _INODES[(info.st_dev, info.st_ino)] = path
    info = os.stat(uri)
    return rows[_INODES[(info.st_dev, info.st_ino)]]


def _peak_rss_kb() -> int:
    """This process's own peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that over exec from the
    forked parent, so a child would report the benchmark's memory as its own."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _child(argv: list[str]) -> None:
    """Run predict in this process, recording the graph and the launcher's peak RSS as it starts."""
    import apache_beam as beam

    record_path, argv = argv[0], argv[1:]
    original = beam.Pipeline.run

    def run(pipeline, *args, **kwargs):
        Path(record_path).write_text(json.dumps({
            "graph_bytes": len(pipeline.to_runner_api().SerializeToString()),
            "launcher_peak_rss_mb": _peak_rss_kb() / 1024}))
        return original(pipeline, *args, **kwargs)

    beam.Pipeline.run = run
    from beam_jobs import predict
    from common.cli import main

    status = main(predict.run, argv)  # as `python -m beam_jobs.predict` runs it
    if not Path(record_path).exists():  # no pipeline: the launcher is the whole run
        Path(record_path).write_text(json.dumps({"graph_bytes": 0, "launcher_peak_rss_mb": _peak_rss_kb() / 1024}))
    sys.exit(status)


def _size(path: Path) -> int:
    """0 for a file that is not there (the previous run this benchmark writes has no report.html, and a
    re-run with nothing to do writes none)."""
    return path.stat().st_size if path.exists() else 0


def _rerun(name: str, videos: Path, output: Path, model: Path) -> dict:
    record = SCALE_DIR / f"{name}.graph.json"
    job = run_job(name, python_module("bench.scale", "--child", str(record), "--input", str(videos), "--model",
                                      str(model), "--output", str(output), "--runner", "DirectRunner",
                                      "--batch-size", "32")).check()
    recorded = json.loads(record.read_text())
    manifest = json.loads((output / "manifest.json").read_text())
    result = {"wall_s": round(job.wall_s, 1), "whole_job_peak_rss_mb": round(job.peak_rss_mb),
              "launcher_peak_rss_mb": round(recorded["launcher_peak_rss_mb"]),
              "graph_bytes": recorded["graph_bytes"], "report_bytes": _size(output / "report.html"),
              "labelled_this_run": manifest["labelled_this_run"], "videos_labelled": manifest["videos_labelled"],
              "load_before": job.load_before}
    log(f"{name}: {result}")
    return result


def _changed_run(name: str, videos: Path, output: Path, model: Path, sources: list[Path]) -> dict:
    """A re-run after `REMOVED` videos went and `CHANGED` changed, its labels.csv compared with the one a run
    from scratch writes."""
    expected = SCALE_DIR / "from_scratch_labels.csv"
    started = time.monotonic()
    _previous_run(output, videos, model, exclude="", rows=_source_rows(model, sources), changed=CHANGED,
                  removed=REMOVED, expected=expected)
    log(f"{name}: previous run and the from-scratch labels.csv written in {time.monotonic() - started:.0f} s")
    result = _rerun(f"scale_{name}", videos, output, model)
    with open(output / "labels.csv") as got, open(expected) as want:
        compared = [(a, b) for a, b in itertools.zip_longest(got, want)]
    as_text = sum(a != b for a, b in compared)
    beyond = [(a, b) for a, b in compared if not _same_row(a, b)]
    largest = max((_largest_difference(a, b) for a, b in compared if a != b and a and b), default=0.0)
    result.update(labels_equal_from_scratch=not beyond, rows_differing_from_scratch=len(beyond),
                  rows_differing_as_text=as_text, largest_probability_difference=largest)
    log(f"{name}: labels.csv {'equals' if not beyond else 'differs from'} the from-scratch one: {len(beyond)} rows "
        f"beyond float rounding, {as_text} as text (largest probability difference {largest:.1e})")
    if beyond:  # kept to look into
        shutil.copy(output / "labels.csv", SCALE_DIR / f"{name}_labels.csv")
        shutil.copy(expected, SCALE_DIR / f"{name}_from_scratch_labels.csv")
    expected.unlink()
    return result


# A row labelled from its clip in another batch: the classifier's float32 sums run in another order, so a
# probability may move in its last printed (6th) decimal. Anything else is a difference.
PROBABILITY_TOLERANCE = 1e-5


def _cells(line: str | None) -> list[str]:
    import csv

    return next(csv.reader([line])) if line else []


def _numbers(cell: str) -> list[tuple[str, float]] | None:
    """A cell's probabilities: a number, or top_k's `label:p;label:p` pairs; None for any other cell."""
    try:
        return [("", float(cell))]
    except ValueError:
        pass
    try:
        return [(label, float(p)) for label, _, p in (pair.rpartition(":") for pair in cell.split(";"))]
    except ValueError:
        return None


def _same_row(a: str | None, b: str | None) -> bool:
    """Whether two labels.csv lines say the same: every cell equal, probabilities within the tolerance."""
    if a == b:
        return True
    x, y = _cells(a), _cells(b)
    if len(x) != len(y):
        return False
    for p, q in zip(x, y):
        if p == q:
            continue
        m, n = _numbers(p), _numbers(q)
        if m is None or n is None or [k for k, _ in m] != [k for k, _ in n]:
            return False
        if any(abs(u - v) > PROBABILITY_TOLERANCE for (_, u), (_, v) in zip(m, n)):
            return False
    return True


def _largest_difference(a: str, b: str) -> float:
    largest = 0.0
    for p, q in zip(_cells(a), _cells(b)):
        m, n = _numbers(p), _numbers(q)
        if p != q and m and n and len(m) == len(n):
            largest = max(largest, *(abs(u - v) for (_, u), (_, v) in zip(m, n)))
    return largest


def measure(sizes: list[int], new: int, new_at: int = 200_000) -> dict:
    """Hard links change the shared inode's ctime, which the listing sees (it is how in-place edits are
    caught): so every link of a size is made before its previous run is written, and the `new` videos' run
    alone comes last."""
    SCALE_DIR.mkdir(parents=True, exist_ok=True)
    model, sources = _model_dir(SCALE_DIR), _source_clips(SCALE_DIR)
    results = {"machine": machine(), "sources": len(sources), "runs": {}}
    videos, output = SCALE_DIR / "videos", SCALE_DIR / "labels"
    for size in sizes:
        shutil.rmtree(videos, ignore_errors=True)
        with_new = new if size == new_at else 0
        started = time.monotonic()
        _link_videos(videos, sources, size)
        _link_videos(videos / "new", sources, with_new, start=size)
        _previous_run(output, videos, model, exclude="new/")
        log(f"{size} videos linked and a previous run written in {time.monotonic() - started:.0f} s")
        if with_new:
            results["runs"][f"{size}_{new}_new"] = _rerun(f"scale_{size}_{new}_new", videos, output, model)
        results["runs"][f"{size + with_new}_0_new"] = _rerun(f"scale_{size + with_new}_0_new", videos, output, model)
        if with_new:
            alone = SCALE_DIR / "new_alone"
            shutil.rmtree(alone, ignore_errors=True)
            _link_videos(alone, sources, new, start=size)
            results["runs"][f"{new}_new_alone"] = _rerun(f"scale_{new}_new_alone", alone, SCALE_DIR / "alone_out",
                                                         model)
            shutil.rmtree(alone, ignore_errors=True)
            shutil.rmtree(SCALE_DIR / "alone_out", ignore_errors=True)
            name = f"{size + with_new}_{REMOVED}_removed_{CHANGED}_changed"
            results["runs"][name] = _changed_run(name, videos, output, model, sources)
    shutil.rmtree(videos, ignore_errors=True)
    shutil.rmtree(output, ignore_errors=True)
    results["load_end"] = load_average()
    return results


def markdown(results: dict) -> str:
    from bench.markdown import scale_table

    return "\n".join(scale_table(results))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")], default=list(SIZES))
    parser.add_argument("--new", type=int, default=NEW)
    parser.add_argument("--new-at", type=int, default=200_000, help="the size that also gets --new new videos")
    args = parser.parse_args(argv)
    results = measure(args.sizes, args.new, args.new_at)
    (WORK_DIR / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
