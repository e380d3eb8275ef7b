"""Nothing per video in the pipeline graph: the graphs both jobs build for 10 and for 5,000 listed videos
(and, for the labelling job, a previous run of as many rows) are the same size. Dataflow refuses graphs over
about 10 MB; a graph that grew with the bucket would stop a scheduled run at some size.

The pipelines are built exactly as the jobs build them, then not run (Pipeline.run is replaced)."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest

from test_report import FRAMES, IMAGE_SIZE, make_model_dir


class _NotRun:
    def wait_until_finish(self):
        return "DONE"


@pytest.fixture
def built(monkeypatch):
    """The serialized size of every pipeline `run` would have run."""
    sizes = []

    def capture(pipeline):
        sizes.append(len(pipeline.to_runner_api().SerializeToString()))
        return _NotRun()

    monkeypatch.setattr(beam.Pipeline, "run", capture)
    return sizes


def videos(folder, count: int):
    """`count` listed files (the listing never opens them)."""
    for i in range(count):
        path = folder / f"class_{i % 7}" / f"clip_{i:06d}.avi"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return folder


def previous_run(output, model_dir, clips, count: int):
    """A finished labelling run of `count` rows in the job's own format, by the same model."""
    from beam_jobs.label_rows import label_columns
    from beam_jobs.sinks import csv_line
    from model.export import load_model_dir

    loaded = load_model_dir(str(model_dir))
    columns = label_columns(loaded.labels)
    output.mkdir(parents=True)
    with open(output / "labels.csv", "w") as labels, open(output / "index-00000-of-00001.jsonl", "w") as index:
        labels.write(csv_line(columns))
        for i in sorted(range(count), key=lambda i: f"class_{i % 7}/clip_{i:06d}.avi"):  # labels.csv is in id order
            video_id = f"class_{i % 7}/clip_{i:06d}.avi"
            uri = str(clips / video_id)
            labels.write(csv_line([video_id, uri, "growing", "0.5", "growing:0.5"] + ["0.3"] * len(loaded.labels)
                                  + [loaded.model_id]))
            index.write(json.dumps({"video_id": video_id, "uri": uri, "size": 0, "mtime": 0.0, "version": "",
                                    "fingerprint": f"{i:064x}"}) + "\n")
    (output / "manifest.json").write_text(json.dumps({"job": "predict", "model_id": loaded.model_id}))


def test_the_labelling_graph_does_not_grow_with_the_videos(tmp_path, built):
    from beam_jobs import predict

    model_dir = make_model_dir(tmp_path / "model")
    for count in (10, 5000):
        clips = videos(tmp_path / f"clips_{count}", count)
        output = tmp_path / f"labels_{count}"
        previous_run(output, model_dir, clips, count)
        predict.run(["--input", str(clips), "--model", str(model_dir), "--output", str(output), "--per-video",
                     "--runner", "DirectRunner"])
    small, large = built
    assert abs(large - small) <= 0.01 * small, (small, large)


def test_the_featurize_graph_does_not_grow_with_the_videos(tmp_path, built):
    from beam_jobs import featurize

    for count in (10, 5000):
        featurize.run(["--input", str(videos(tmp_path / f"clips_{count}", count)), "--output",
                       str(tmp_path / f"features_{count}"), "--weights", "random", "--image-size", str(IMAGE_SIZE),
                       "--max-seq-length", str(FRAMES), "--runner", "DirectRunner"])
    small, large = built
    assert abs(large - small) <= 0.01 * small, (small, large)
