"""The featurize job end to end: generated clips -> sharded records, read back with make_dataset."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from beam_jobs import featurize
from conftest import REAL_VIDEOS, TEST_FRAMES, TEST_IMAGE_SIZE, featurize_args, read_csv, read_records
from common.errors import UserError
from tfrecords_schema import make_dataset, read_vocabulary

REPO = Path(__file__).resolve().parents[1]


def failures(output):
    return read_csv(output / "failures.csv")


def test_every_clip_becomes_a_labelled_record(clip_set, featurized):
    expected = {line.split(",")[0]: line.split(",")[1] for line in (clip_set / "labels.csv").read_text().split()[1:]}
    records = read_records(featurized)
    assert {vid: r.label for vid, r in records.items()} == expected
    assert sorted(p.name for p in featurized.glob("features-*")) == [
        "features-00000-of-00002.tfrecord", "features-00001-of-00002.tfrecord"]
    assert read_vocabulary(str(featurized / "labels.txt")) == sorted(set(expected.values()))
    manifest = json.loads((featurized / "manifest.json").read_text())
    assert (manifest["videos_matched"], manifest["records_written"], manifest["failures"]) == (18, 18, 0)
    assert manifest["backbone_id"] == "densenet121/random-seed1337"
    cores = len(os.sched_getaffinity(0))  # one worker process: every core is its share (beam_jobs.cores)
    assert manifest["cores"] == {"cores": cores, "worker_processes": 1, "decoders": cores, "decoder_threads": 1,
                                 "embed_threads": cores, "max_in_flight": 2 * cores}
    assert failures(featurized) == []
    assert not list(featurized.glob(".staging-*"))
    for record in records.values():
        assert record.features.shape == (TEST_FRAMES, 1024) and record.image_size == TEST_IMAGE_SIZE
        assert record.num_valid_frames == TEST_FRAMES  # every generated clip has >= 12 frames
        assert record.decoded_frame_count >= 12 and record.frame_indices[0] == 0
        assert record.frame_indices[-1] >= record.decoded_frame_count - record.decoded_frame_count // TEST_FRAMES
        assert len(record.fingerprint) == 64 and np.isfinite(record.features).all()


def test_the_manifest_counts_the_records_per_label_and_hundredth_of_the_id_hash(featurized):
    """split_counts (a Beam combiner): training knows every split at a whole percent without reading a record."""
    import tensorflow as tf

    manifest = json.loads((featurized / "manifest.json").read_text())
    expected = {}
    for video_id, record in read_records(featurized).items():  # FarmHash64 of the id, in 100 buckets
        bucket = int(tf.strings.to_hash_bucket_fast(video_id, 10_000).numpy()) // 100
        expected.setdefault(record.label, [0] * 100)[bucket] += 1
    assert manifest["split_counts"] == {"buckets": 100, "split_by": "", "counts": expected}
    assert sum(map(sum, expected.values())) == manifest["records_written"] == 18


def test_split_counts_combine_in_any_grouping():
    """The combiner's accumulators merge as Beam may split the work: the same counts however it is cut."""
    from beam_jobs.records import CountSplits

    pairs = [(f"class{i % 3}/clip{i}.avi", f"class{i % 3}") for i in range(50)]
    combiner = CountSplits()
    combiner.BATCH = 7  # hash in small batches, as a long bundle would
    whole = combiner.extract_output(combiner.add_inputs(combiner.create_accumulator(), pairs))
    parts = [combiner.add_inputs(combiner.create_accumulator(), pairs[i::4]) for i in range(4)]
    merged = combiner.extract_output(combiner.merge_accumulators(parts + [combiner.create_accumulator()]))
    assert merged == whole and sum(map(sum, whole["counts"].values())) == 50 and len(whole["counts"]) == 3
    assert combiner.extract_output(combiner.create_accumulator())["counts"] == {}


def test_make_dataset_reads_the_shards(featurized):
    vocabulary = read_vocabulary(str(featurized / "labels.txt"))
    ds = make_dataset(str(featurized / "features-*.tfrecord"), vocabulary=vocabulary, batch_size=5)
    count, label_counts = 0, np.zeros(len(vocabulary), int)
    for (features, mask), label_ids in ds:
        assert features.shape[1:] == (TEST_FRAMES, 1024) and mask.shape[1:] == (TEST_FRAMES,)
        count += len(label_ids)
        np.add.at(label_counts, label_ids.numpy(), 1)
    assert count == 18 and label_counts.tolist() == [3] * 6


def test_order_classes_differ_only_in_order(featurized):
    """growing_i is shrinking_i reversed, so their frame features are (nearly) the same set."""
    records = read_records(featurized)
    by_stem = {vid.rsplit(".", 1)[0]: record for vid, record in records.items()}
    growing, shrinking = by_stem["growing/growing_0000"], by_stem["shrinking/shrinking_0000"]
    assert growing.decoded_frame_count == shrinking.decoded_frame_count
    forward = growing.features[: growing.num_valid_frames]
    backward = shrinking.features[: shrinking.num_valid_frames][::-1]
    assert not np.allclose(forward, shrinking.features[: shrinking.num_valid_frames], atol=1e-3)
    assert np.abs(forward - backward).mean() < 0.2 * np.abs(forward).mean() + 1e-6


def test_rerun_gives_identical_features_and_refuses_a_finished_output(clip_set, featurized, tmp_path):
    again = tmp_path / "again"
    featurize.run(featurize_args(clip_set, again, "--num-shards", "1"))
    first, second = read_records(featurized), read_records(again)
    assert first.keys() == second.keys()
    for vid in first:
        np.testing.assert_allclose(first[vid].features, second[vid].features, atol=1e-5)
        assert first[vid].fingerprint == second[vid].fingerprint
    with pytest.raises(UserError, match="already holds a finished run"):
        featurize.run(featurize_args(clip_set, again))


def test_corrupt_and_unlabelled_files_land_in_failures(clip_set, tmp_path):
    inputs = tmp_path / "in"
    (inputs / "growing").mkdir(parents=True)
    good = sorted((clip_set / "growing").iterdir())[0]
    (inputs / "growing" / good.name).write_bytes(good.read_bytes())
    (inputs / "growing" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (inputs / "growing" / "empty.avi").write_bytes(b"")
    output = tmp_path / "out"
    featurize.run(featurize_args(inputs, output, "--sampling", "first"))
    rows = {row["video_id"]: row["reason"] for row in failures(output)}
    assert set(rows) == {"growing/corrupt.mp4", "growing/empty.avi"}
    assert "cannot open" in rows["growing/corrupt.mp4"] and "0 bytes" in rows["growing/empty.avi"]
    records = read_records(output)
    assert list(records) == [f"growing/{good.name}"] and records[f"growing/{good.name}"].sampling == "first"
    manifest = json.loads((output / "manifest.json").read_text())
    assert (manifest["videos_matched"], manifest["records_written"], manifest["failures"]) == (3, 1, 2)


def test_odd_names_read_back_exactly_and_a_folder_that_cannot_be_a_class_is_a_failure(clip_set, tmp_path):
    inputs = tmp_path / "in"
    good = sorted((clip_set / "growing").iterdir())
    names = ["growing/new\nline.avi", "growing/cr\rtab\t.avi", 'growing/say "hi", =1+2.avi']
    for name, clip in zip(names + ["bad\nclass/v.avi", "comma,class/v.avi"], good + good):
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        (inputs / name).write_bytes(clip.read_bytes())
    (inputs / "growing" / "broken\n\r.mp4").write_bytes(b"not a video" * 30)
    output = tmp_path / "out"
    featurize.run(featurize_args(inputs, output, "--sampling", "first"))
    assert sorted(read_records(output)) == sorted(names)
    assert (output / "labels.txt").read_text() == "growing\n"
    rows = {row["video_id"]: row["reason"] for row in failures(output)}
    assert sorted(rows) == ["bad\nclass/v.avi", "comma,class/v.avi", "growing/broken\n\r.mp4"]
    assert rows["bad\nclass/v.avi"] == ("cannot be a class: label 'bad\\nclass' must not contain a control character, "
                                         "a line break or a comma")
    assert "cannot open" in rows["growing/broken\n\r.mp4"]
    manifest = json.loads((output / "manifest.json").read_text())
    assert (manifest["videos_matched"], manifest["records_written"], manifest["failures"]) == (6, 3, 3)


@pytest.mark.skipif(not REAL_VIDEOS.is_dir(), reason="../shared/real_videos is absent")
def test_every_real_clip_yields_a_record(tmp_path, sampling="keyframes"):
    """Through the job, in the sampling that seeks most (uniform's frames are checked against decoding every
    frame of each real clip in tests/test_real_videos.py)."""
    output = tmp_path / "real"
    featurize.run(featurize_args(REAL_VIDEOS, output, "--max-seq-length", "4", "--image-size", "32",
                                 "--batch-size", "64", "--sampling", sampling))
    videos = [p for p in REAL_VIDEOS.rglob("*") if p.is_file() and p.suffix.lower() != ".md"]
    records, failed = read_records(output), failures(output)
    assert not failed and len(records) == len(videos) > 20
    for record in records.values():
        assert record.num_valid_frames == 4 and record.frame_width > 0 and record.image_size == 32
        assert record.sampling == sampling and len(set(record.frame_indices)) == 4


def documented_flags(help_text: str) -> dict[str, str]:
    """{flag: its description} of an argparse --help: its option sections (`options:` and each argument
    group's) hold entries that start with a line `  -x, --flag METAVAR  text` and go on over the lines
    indented under it."""
    sections = help_text.split("\nexamples:\n", 1)[0].split("\n\n")
    entries: dict[str, list[str]] = {}
    for section in sections:
        if not section.splitlines()[0].endswith(":") or section.startswith("usage:"):
            continue  # the usage line and the description
        current: list[str] = []  # a group's own description, before its first flag, belongs to no flag
        for line in section.splitlines()[1:]:
            if match := re.match(r"  (-[^ ].*?)(?:  +(.*))?$", line):
                current = [w.rstrip(",") for w in match.group(1).split() if w.startswith("-")]
                for flag in current:
                    entries[flag] = [match.group(2) or ""]
            else:
                for flag in current:
                    entries[flag].append(line.strip())
    return {flag: " ".join(" ".join(text).split()) for flag, text in entries.items()}


@pytest.mark.parametrize("job", ["featurize", "predict"])
def test_help_documents_every_flag_with_an_example(job):
    out = subprocess.run([sys.executable, "-m", f"beam_jobs.{job}", "--help"], capture_output=True, text=True,
                         check=True).stdout
    parser = importlib.import_module(f"beam_jobs.{job}").build_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    documented = documented_flags(out)
    # Every flag the job takes has an entry with a description, and the help lists no flag it does not take.
    assert set(documented) == flags and {"--input", "--output", "--weights", "--batch-size"} <= flags
    assert not [flag for flag, description in documented.items() if len(description.split()) < 3]
    examples = out.split("\nexamples:\n", 1)[1]
    assert f"python -m beam_jobs.{job} --input " in examples


_WITHOUT_TENSORFLOW = """
import runpy, sys

class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ImportError("tensorflow imported by the featurize command")

if __name__ == "__main__":
    sys.meta_path.insert(0, NoTensorFlow())
    sys.argv[0] = "beam_jobs.featurize"
    runpy.run_module("beam_jobs.featurize", run_name="__main__")
"""


def test_the_featurize_command_runs_without_tensorflow_once_the_network_is_cached(featurized, clip_set, tmp_path):
    """Importing TensorFlow cost the command 4 s of its start-up and exit, and nothing in it needs TensorFlow
    with the default engine on a CPU: the OpenVINO network is cached (by `featurized`, the same size) and
    records are encoded without it. The command runs with every import of TensorFlow failing."""
    from model.engines import gpu_driver_present

    if gpu_driver_present():
        pytest.skip("a GPU driver is present: TensorFlow is asked whether it sees a GPU")
    script = tmp_path / "featurize_without_tensorflow.py"
    script.write_text(_WITHOUT_TENSORFLOW)
    output = tmp_path / "out"
    done = subprocess.run([sys.executable, str(script), *featurize_args(clip_set, output)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(read_records(output)) == set(read_records(featurized))
