"""Benchmark data: generated clip sets, featurized records (both cached under bench/_work/cache), and the
record rewrites the benchmarks need (a subset of a training set, another feature encoding, test frames
shuffled in time), done with the schema's own encode/decode.

Clip `i` of a class is the same for every `per_class` of a seed (the generator is keyed by seed, family and
index), so a smaller training set is the first clips of a larger one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from bench.harness import CLIP_SOURCES, FEATURIZE_SOURCES, cached, log, python_module, run_job

CLIP_INDEX = re.compile(r"_(\d+)\.[^./]+$")


def clip_set(per_class: int, seed: int) -> Path:
    """A directory of `per_class` generated clips per class (6 order-only classes), made once."""
    def build(directory: Path) -> None:
        from tools.sample_videos import write_sample_set

        log(f"generating {per_class} clips per class (seed {seed})")
        write_sample_set(str(directory / "clips"), per_class, seed=seed)

    directory, _ = cached("clips", {"per_class": per_class, "seed": seed}, CLIP_SOURCES, build)
    return directory / "clips"


def featurize_args(clips: Path, output: Path, encoding: str = "float32", batch_size: int = 32) -> list[str]:
    return python_module(
        "beam_jobs.featurize", "--runner", "DirectRunner", "--input", str(clips), "--output", str(output),
        "--weights", "random", "--batch-size", str(batch_size), "--feature-encoding", encoding, "--overwrite",
    )


def featurized(clips: Path, name: str, encoding: str = "float32") -> Path:
    """Feature records of `clips` (featurize job, --weights random), made once; returns their directory."""
    def build(directory: Path) -> None:
        log(f"featurizing {clips} for {name} (cached afterwards)")
        run_job(f"featurize-{name}", featurize_args(clips, directory / "records", encoding)).check()

    params = {"clips": str(clips.relative_to(clips.parents[1])), "encoding": encoding}
    directory, _ = cached("records", params, FEATURIZE_SOURCES + CLIP_SOURCES, build)
    return directory / "records"


# --- Reading and rewriting records ----------------------------------------------------------------------


def record_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("features-*.tfrecord"))


def read_records(directory: Path) -> list[bytes]:
    import tensorflow as tf

    files = [str(f) for f in record_files(directory)]
    return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def write_records(directory: Path, records: Iterable[bytes], labels: Iterable[str]) -> None:
    """One shard `features-00000-of-00001.tfrecord` and `labels.txt`, as the featurize job lays them out."""
    import tensorflow as tf

    from tfrecords_schema import write_vocabulary

    directory.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(directory / "features-00000-of-00001.tfrecord")) as writer:
        for record in records:
            writer.write(record)
    write_vocabulary(str(directory / "labels.txt"), sorted(set(labels)))


def clip_index(video_id: str) -> int:
    match = CLIP_INDEX.search(video_id)
    if not match:
        raise ValueError(f"not a generated clip's id: {video_id!r}")
    return int(match.group(1))


def rewrite_records(source: Path, destination: Path, keep: Callable[[object], bool] = lambda r: True,
                    change: Callable[[object], object] = lambda r: r, encoding: str | None = None) -> int:
    """Decode every record of `source`, keep those `keep(record)` accepts, `change` them and encode them
    into `destination` (in `encoding`, default: the source's). Returns the number written."""
    from tfrecords_schema import decode_video_record, encode_video_record, read_record_spec

    raw = read_records(source)
    if not raw:
        raise ValueError(f"no records in {source}")
    encoding = encoding or read_record_spec(raw[0]).feature_encoding
    records = [change(r) for r in map(decode_video_record, raw) if keep(r)]
    write_records(destination, (encode_video_record(r, encoding) for r in records), (r.label for r in records))
    return len(records)


def shuffle_valid_frames(seed: int) -> Callable[[object], object]:
    """A `change` for `rewrite_records` that permutes each record's valid frames (features and their frame
    indices together), seeded; padding stays where it is."""
    rng = np.random.default_rng(seed)

    def change(record):
        order = rng.permutation(record.num_valid_frames)
        features = record.features.copy()
        features[: record.num_valid_frames] = record.features[order]
        record.features = features
        record.frame_indices = [record.frame_indices[i] for i in order]
        return record

    return change
