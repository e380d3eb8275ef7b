"""Featurize videos: match them, sample frames, embed with DenseNet121, write sharded feature TFRecords.

    python -m beam_jobs.featurize --runner DirectRunner \\
        --input data/train --output features/train --weights random

Outputs under --output: features-SSSSS-of-NNNNN.tfrecord (one SequenceExample per video, see
tfrecords_schema), labels.txt, failures.csv (video_id,uri,reason) and manifest.json, written last. Every
flag this job does not know goes to Beam's PipelineOptions (--runner, --temp_location, --setup_file ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import outputs
from model.frames import DEFAULT_VIDEO_EXTENSIONS, SAMPLINGS
from beam_jobs.matching import attach_labels, match_videos, read_labels_csv
from beam_jobs.transforms import (
    FAILURES,
    DecodeFrames,
    EmbedFrames,
    FrameOptions,
    ReadVideoList,
    encode_video,
    write_refs,
)
from model import backbone
from model.cli import UserError
from tfrecords_schema import FEATURE_ENCODINGS, VOCABULARY_FILE, RecordSpec

_LOG = logging.getLogger(__name__)

SHARD_PREFIX = "features"
SHARD_SUFFIX = ".tfrecord"
OUTPUT_PATTERNS = (f"{SHARD_PREFIX}-*-of-*{SHARD_SUFFIX}", VOCABULARY_FILE, outputs.FAILURES_FILE)

EXAMPLES = """examples:
  # UCF101-style folders (Class/video.avi), labels from folder names, offline demo weights:
  python -m beam_jobs.featurize --input data/train --output features/train --weights random

  # labels from a CSV (video_name,tag), ImageNet weights, 4 shards:
  python -m beam_jobs.featurize --input 'data/train/*.avi' --labels data/train.csv \\
      --output features/train --num-shards 4

  # unlabelled videos on GCS, on Dataflow:
  python -m beam_jobs.featurize --input gs://bucket/videos/ --unlabelled --output gs://bucket/features \\
      --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp --setup_file ./setup.py
"""


def add_frame_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared with the predict job: what counts as a video and how it is decoded and embedded."""
    parser.add_argument("--input", action="append", required=True, metavar="PATH",
                        help="videos: a directory (searched recursively), a glob, a file, or a gs:// pattern; "
                             "repeatable")
    parser.add_argument("--extensions", default=",".join(DEFAULT_VIDEO_EXTENSIONS),
                        help="comma-separated file endings that count as videos, case-insensitive "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="frames per DenseNet121 call, gathered across videos (default: %(default)s)")
    parser.add_argument("--decode-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="longest time one video may take to decode before it is reported as a failure "
                             "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished run in --output (refused otherwise)")


def parse_extensions(text: str) -> tuple[str, ...]:
    extensions = tuple("." + e.strip().lower().lstrip(".") for e in text.split(",") if e.strip())
    if not extensions:
        raise UserError("--extensions names no file endings")
    return extensions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.featurize",
        description="Turn videos into sharded DenseNet121 feature TFRecords (one SequenceExample per video). "
                    "Unknown flags go to Beam's PipelineOptions.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_frame_flags(parser)
    parser.add_argument("--output", required=True, help="output directory or gs:// prefix")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--labels", metavar="CSV",
                        help="CSV with columns video_name,tag (video_name: the video id, i.e. the path relative "
                             "to the input root, or the file name). Default: the parent folder name is the label")
    labels.add_argument("--unlabelled", action="store_true", help="the videos have no labels (inference inputs)")
    parser.add_argument("--max-seq-length", type=int, default=20, help="frames per video (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=128,
                        help="side of the square frames DenseNet121 sees (default: %(default)s)")
    parser.add_argument("--sampling", choices=SAMPLINGS, default="uniform",
                        help="uniform: frames spread over the whole clip; first: the first frames, as the "
                             "Keras reference does (default: %(default)s)")
    parser.add_argument("--weights", default="imagenet",
                        help="DenseNet121 weights: imagenet (downloaded and cached by Keras), a weights file "
                             "path, or random[:SEED] (seeded; for demos and tests) (default: %(default)s)")
    parser.add_argument("--num-shards", type=int, default=0,
                        help="number of output shards; 0 lets the runner decide (default: %(default)s)")
    parser.add_argument("--feature-encoding", choices=FEATURE_ENCODINGS, default="float32",
                        help="how frame features are stored; float16 halves the records (default: %(default)s)")
    return parser


def validate_frame_args(args) -> None:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.decode_timeout <= 0:
        raise UserError(f"--decode-timeout must be positive, got {args.decode_timeout}")


@dataclasses.dataclass(frozen=True)
class _FinishFeaturize:
    """Publishes the outputs once every record is written; checks that no video was lost."""

    output: str
    staging: str
    videos_matched: int
    manifest: dict
    started_at: float = 0.0  # time.time() when the job was launched

    def __call__(self, shards, labels, failures, written, frames=0):
        written = int(written)
        seconds = max(time.time() - self.started_at if self.started_at else 0.0, 1e-3)
        if written + len(failures) != self.videos_matched:
            raise RuntimeError(
                f"lost videos: {self.videos_matched} matched, {written} written, {len(failures)} failed"
            )
        vocabulary = sorted(set(labels) - {""})
        manifest = dict(
            self.manifest,
            videos_matched=self.videos_matched,
            records_written=written,
            failures=len(failures),
            frames_sampled=int(frames),
            seconds=round(seconds, 1),
            labels=vocabulary,
            shards=sorted(s.rsplit("/", 1)[-1] for s in shards),
        )
        published = outputs.publish(
            self.output,
            self.staging,
            sorted(shards),
            {VOCABULARY_FILE: "".join(v + "\n" for v in vocabulary), outputs.FAILURES_FILE: outputs.failures_csv(failures)},
            manifest,
            replace_patterns=OUTPUT_PATTERNS,
        )
        _LOG.info("featurize finished in %.1f s: %d of %d videos written to %d shard(s), %d failed; "
                  "%.2f videos/s, %d frames at %.1f frames/s; outputs in %s (%s, %s, %s, %s)",
                  seconds, written, self.videos_matched, len(shards), len(failures),
                  (written + len(failures)) / seconds, frames, frames / seconds, self.output,
                  f"{SHARD_PREFIX}-*{SHARD_SUFFIX}", VOCABULARY_FILE, outputs.FAILURES_FILE, outputs.MANIFEST_FILE)
        return published


def _count(pcoll, label: str):
    return pcoll | label >> beam.combiners.Count.Globally()


def run(argv: list[str] | None = None):
    """Build and run the featurize pipeline; return its PipelineResult (finished)."""
    started_at = time.time()
    args, beam_args = build_parser().parse_known_args(argv)
    validate_frame_args(args)
    if args.max_seq_length < 1 or args.image_size < 32:
        raise UserError("--max-seq-length must be at least 1 and --image-size at least 32")
    if args.num_shards < 0:
        raise UserError(f"--num-shards must be 0 or more, got {args.num_shards}")
    weights = backbone.resolve_weights(args.weights)
    backbone.ensure_available(weights)
    refs = match_videos(args.input, parse_extensions(args.extensions))
    mode = "none" if args.unlabelled else ("csv" if args.labels else "folder")
    labels_csv = read_labels_csv(args.labels) if args.labels else None
    refs, unlabelled = attach_labels(refs, mode, labels_csv)
    staging = outputs.prepare_output(args.output, args.overwrite)
    refs_path = outputs.join(staging, "inputs.jsonl")
    write_refs(refs_path, refs)
    frame_options = FrameOptions(args.max_seq_length, args.image_size, args.sampling, args.decode_timeout)
    spec = RecordSpec(backbone.FEATURE_DIM, args.max_seq_length, weights.backbone_id, args.image_size,
                      sampling=args.sampling, feature_encoding=args.feature_encoding)
    matched = len(refs) + len(unlabelled)
    _LOG.info("featurize: %d videos matched (%d without a label), backbone %s", matched, len(unlabelled),
              weights.backbone_id)
    finish = _FinishFeaturize(
        output=args.output,
        staging=staging,
        videos_matched=matched,
        started_at=started_at,
        manifest={
            "job": "featurize",
            "inputs": args.input,
            "output": args.output,
            "backbone_id": weights.backbone_id,
            "record_spec": dataclasses.asdict(spec),
            "options": {k: v for k, v in vars(args).items() if k not in ("input", "output")},
        },
    )

    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    videos = pipeline | "MatchVideos" >> ReadVideoList(refs_path)
    decoded = videos | "DecodeFrames" >> DecodeFrames(frame_options, job_id=staging, expected_videos=len(refs))
    embedded = decoded.videos | "EmbedFrames" >> EmbedFrames(
        args.weights, args.image_size, args.batch_size, expected_videos=len(refs), job_id=staging)
    records = embedded | "EncodeRecords" >> beam.Map(encode_video, frame_options, weights.backbone_id,
                                                      args.feature_encoding)
    shards = records | "WriteFeatureRecords" >> beam.io.WriteToTFRecord(
        outputs.join(staging, SHARD_PREFIX), file_name_suffix=SHARD_SUFFIX, num_shards=args.num_shards,
        shard_name_template="-SSSSS-of-NNNNN")
    labels = embedded | "Labels" >> beam.Map(lambda v: v.ref.label) | "DistinctLabels" >> beam.Distinct()
    unlabelled_failures = pipeline | "UnlabelledVideos" >> beam.Create(
        [(ref.video_id, ref.uri, reason) for ref, reason in unlabelled])
    failures = (decoded[FAILURES], unlabelled_failures) | "AllFailures" >> beam.Flatten()
    _ = pipeline | "PublishOutputs" >> outputs.PublishOutputs(
        finish,
        shards=beam.pvalue.AsList(shards),
        labels=beam.pvalue.AsList(labels),
        failures=beam.pvalue.AsList(failures),
        written=beam.pvalue.AsSingleton(_count(records, "CountRecords")),
        frames=beam.pvalue.AsSingleton(
            embedded | "FramesSampled" >> beam.Map(lambda v: len(v.sampled.frame_indices))
            | "SumFramesSampled" >> beam.CombineGlobally(sum)),
    )
    result = pipeline.run()
    result.wait_until_finish()
    print(f"featurize: outputs in {args.output} (manifest.json, labels.txt, failures.csv, "
          f"{SHARD_PREFIX}-*{SHARD_SUFFIX})")
    return result


if __name__ == "__main__":
    from model.cli import main, quiet_tensorflow

    quiet_tensorflow()
    sys.exit(main(run))
