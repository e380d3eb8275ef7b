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
import json
import logging
import os
import sys
import tempfile
import time
from typing import Iterator

import apache_beam as beam

from beam_jobs import outputs
from beam_jobs.calibration import calibrate
from beam_jobs.cores import CoreRequest, core_request
from beam_jobs.decode import FAILURES, DecodeFrames, FrameOptions
from beam_jobs.embed import EmbedFrames
from beam_jobs.flatten import FlattenApart
from beam_jobs.flags import add_engine_flags, add_frame_flags, embedder_options, parse_extensions, validate_frame_args
from beam_jobs.flags import pipeline_options
from beam_jobs.matching import (
    attach_labels,
    iter_videos,
    label_from_folder,
    match_videos,
    parse_ref,
    read_labels_csv,
    write_listing,
)
from beam_jobs.prism_server import prism_server_for
from beam_jobs.records import SHARD_PATTERN, CountSplits, WriteFeatureRecords, encode_video
from beam_jobs.sinks import WriteSortedShards, csv_key, csv_line, merge_sorted_shards
from common import fs
from common.errors import UserError
from model import backbone, engines
from tfrecords_schema import FEATURE_ENCODINGS, VOCABULARY_FILE, RecordSpec, label_problem
from video.frames import SAMPLINGS

_LOG = logging.getLogger(__name__)

OUTPUT_PATTERNS = (SHARD_PATTERN, VOCABULARY_FILE, outputs.FAILURES_FILE)
UNLABELLED_FILE = "unlabelled.jsonl"  # in staging: (video_id, uri, reason) of videos the labels CSV misses

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
                        help="uniform: frames spread over the whole clip (seeking where that is cheaper, the "
                             "same frames as decoding every frame); keyframes: the keyframe nearest each uniform "
                             "position, decoding little else (much faster on long videos); first: the first "
                             "frames, as the Keras reference does (default: %(default)s)")
    parser.add_argument("--weights", default="imagenet",
                        help="DenseNet121 weights: imagenet (downloaded and cached by Keras), a weights file "
                             "path, or random[:SEED] (seeded; for demos and tests) (default: %(default)s)")
    add_engine_flags(parser)
    parser.add_argument("--num-shards", type=int, default=0,
                        help="number of output shards; 0 lets the runner decide (default: %(default)s)")
    parser.add_argument("--feature-encoding", choices=FEATURE_ENCODINGS, default="float32",
                        help="how frame features are stored; float16 halves the records (default: %(default)s)")
    outputs.add_lease_flag(parser)
    return parser


def _parse(argv):
    args, beam_args = build_parser().parse_known_args(argv)
    validate_frame_args(args)
    if args.max_seq_length < 1 or args.image_size < 32:
        raise UserError("--max-seq-length must be at least 1 and --image-size at least 32")
    if args.num_shards < 0:
        raise UserError(f"--num-shards must be 0 or more, got {args.num_shards}")
    return args, beam_args


@dataclasses.dataclass(frozen=True)
class FinishFeaturize:
    """Publishes the outputs once every record is written; checks from the counts that no video was lost."""

    output: str
    staging: str
    run_id: str  # the lease this run holds; publishing checks it still does
    manifest: dict
    started_at: float = 0.0  # time.time() when the job was launched
    cores: CoreRequest = CoreRequest()  # how worker processes share their cores (the manifest has the plan)

    def __call__(self, counts, shards, labels, failure_shards, split_counts=None):
        if done := outputs.published_by(self.output, self.staging, self.run_id):  # a retry after publishing succeeded
            return done
        matched, written, failed, frames = (int(counts[k]) for k in ("matched", "written", "failed", "frames"))
        seconds = max(time.time() - self.started_at if self.started_at else 0.0, 1e-3)
        if written + failed != matched or sum(n for _, n in failure_shards) != failed:
            raise RuntimeError(f"lost videos: {matched} matched, {written} written, {failed} failed")
        merge_sorted_shards([p for p, _ in failure_shards], fs.join(self.staging, outputs.FAILURES_FILE), csv_key,
                            csv_line(outputs.FAILURE_COLUMNS))
        vocabulary = sorted(set(labels) - {""})
        manifest = dict(self.manifest, videos_matched=matched, records_written=written, failures=failed,
                        frames_sampled=frames, seconds=round(seconds, 1), labels=vocabulary,
                        shards=sorted(s.rsplit("/", 1)[-1] for s in shards), split_counts=split_counts)
        texts = {VOCABULARY_FILE: "".join(v + "\n" for v in vocabulary)}
        staged = sorted(shards) + [fs.join(self.staging, outputs.FAILURES_FILE)]
        published = outputs.publish_outputs(self.output, self.staging, staged, texts, manifest,
                                            replace_patterns=OUTPUT_PATTERNS, run_id=self.run_id)
        _LOG.info("featurize finished in %.1f s: %d of %d videos written to %d shard(s), %d failed; "
                  "%.2f videos/s, %d frames at %.1f frames/s; outputs in %s (%s, %s, %s, %s)",
                  seconds, written, matched, len(shards), failed, (written + failed) / seconds, frames,
                  frames / seconds, self.output, SHARD_PATTERN, VOCABULARY_FILE, outputs.FAILURES_FILE,
                  outputs.MANIFEST_FILE)
        return published


def _write_inputs(args, scratch: str) -> tuple[str, str, int]:
    """The labelled listing and the videos that could not be labelled, as local files; how many were listed.

    Folder labels and unlabelled inputs stream; a labels CSV needs every video at once (it names them)."""
    listing, unlabelled_path = os.path.join(scratch, outputs.REFS_FILE), os.path.join(scratch, UNLABELLED_FILE)
    refs = iter_videos(args.input, parse_extensions(args.extensions))
    unlabelled = []
    if args.labels:
        refs, unlabelled = attach_labels(match_videos(args.input, parse_extensions(args.extensions)), "csv",
                                         read_labels_csv(args.labels))
    elif not args.unlabelled:
        refs = (dataclasses.replace(ref, label=label_from_folder(ref)) for ref in refs)
    unusable: list[tuple] = []
    listed = write_listing(_usable_labels(refs, unusable), listing)
    with open(unlabelled_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps([ref.video_id, ref.uri, reason]) + "\n" for ref, reason in unlabelled + unusable)
    return listing, unlabelled_path, listed + len(unlabelled) + len(unusable)


def _usable_labels(refs, unusable: list) -> Iterator:
    """The refs whose label can be a class of the vocabulary; the others go to `unusable` as (ref, reason), to
    be failures (a folder name holding a line break cannot be a line of labels.txt)."""
    for ref in refs:
        if ref.label and (problem := label_problem(ref.label)):
            unusable.append((ref, f"cannot be a class: {problem}"))
        else:
            yield ref


def _distinct_refs(refs):
    """One VideoRef per id (a video listed twice by overlapping inputs is the same file)."""
    return (refs
            | "KeyById" >> beam.Map(lambda ref: (ref.video_id, ref))
            | "GroupById" >> beam.GroupByKey()
            | "OnePerId" >> beam.MapTuple(lambda _, same: min(same, key=lambda ref: ref.uri)))


def _embedder(args, weights, frame_options, listing: str, listed: int, staging: str):
    """(EmbedderOptions, what records and the manifest say about them, the backbone id of the features)."""
    options, calibration = calibrate(embedder_options(args, args.weights, args.image_size), args.calibration,
                                     parse_extensions(args.extensions), listing, listed, frame_options, staging)
    embedding = engines.describe_options(options, calibration.digest if calibration else "")
    manifest = {**embedding, "threads": options.threads, "calibration": calibration.manifest() if calibration else None}
    return options, embedding, manifest, engines.feature_backbone_id(weights.backbone_id, options.precision)


def _build(pipeline, args, staging, options, embedding, backbone_id, frame_options, listed: int,
           finish: FinishFeaturize) -> None:
    refs = pipeline | "ReadListing" >> beam.io.ReadFromText(fs.join(staging, outputs.REFS_FILE))
    videos = (_distinct_refs(refs | "ParseRefs" >> beam.Map(parse_ref))
              | "SpreadVideos" >> beam.Reshuffle())
    cores = finish.cores
    decoded = videos | "DecodeFrames" >> DecodeFrames(frame_options, job_id=staging, expected_videos=listed,
                                                      cores=cores)
    embedded = decoded.videos | "EmbedFrames" >> EmbedFrames(options, batch_size=args.batch_size,
                                                             expected_videos=listed, job_id=staging, cores=cores)
    records = embedded | "EncodeRecords" >> beam.Map(encode_video, frame_options, backbone_id,
                                                      args.feature_encoding, embedding)
    shards = records | "WriteFeatureRecords" >> WriteFeatureRecords(staging, args.num_shards)
    labels = embedded | "Labels" >> beam.Map(lambda v: v.ref.label) | "DistinctLabels" >> beam.Distinct()
    unlabelled = (pipeline | "ReadUnlabelled" >> beam.io.ReadFromText(fs.join(staging, UNLABELLED_FILE))
                  | "ParseUnlabelled" >> beam.Map(lambda line: tuple(json.loads(line))))
    failures = (decoded[FAILURES], unlabelled) | "AllFailures" >> FlattenApart()
    failure_shards = (failures | "FailureLines" >> beam.Map(lambda f: (f[0], csv_line(f)))
                      | "WriteFailureShards" >> WriteSortedShards(fs.join(staging, "_parts", "failures")))
    counts = {
        "matched": (videos, unlabelled) | "Matched" >> FlattenApart() | "CountMatched" >> beam.combiners.Count.Globally(),
        "written": records | "CountRecords" >> beam.combiners.Count.Globally(),
        "failed": failures | "CountFailed" >> beam.combiners.Count.Globally(),
        "frames": (embedded | "FramesSampled" >> beam.Map(lambda v: len(v.sampled.frame_indices))
                   | "SumFramesSampled" >> beam.CombineGlobally(sum)),
    }
    keyed = [pc | f"Name{name.title()}" >> beam.Map(lambda v, n=name: (n, v)) for name, pc in counts.items()]
    _ = pipeline | "PublishOutputs" >> outputs.PublishOutputs(
        finish,
        counts=beam.pvalue.AsSingleton(keyed | "AllCounts" >> FlattenApart() | "CountsDict" >> beam.combiners.ToDict()),
        shards=beam.pvalue.AsList(shards),
        labels=beam.pvalue.AsList(labels),
        failure_shards=beam.pvalue.AsList(failure_shards),
        split_counts=beam.pvalue.AsSingleton(
            embedded | "IdsAndLabels" >> beam.Map(lambda v: (v.ref.video_id, v.ref.label))
            | "CountSplits" >> beam.CombineGlobally(CountSplits())),
    )


def run(argv: list[str] | None = None):
    """Build and run the featurize pipeline; return its PipelineResult (finished)."""
    started_at = time.time()
    args, beam_args = _parse(argv)
    weights = backbone.resolve_weights(args.weights)
    backbone.ensure_available(weights)
    embedder_options(args, args.weights, args.image_size)  # a machine that cannot run the engine: before anything
    frame_options = FrameOptions(args.max_seq_length, args.image_size, args.sampling, args.decode_timeout)
    beam_options = pipeline_options(beam_args)
    with prism_server_for(beam_options), tempfile.TemporaryDirectory(prefix="featurize-listing-") as scratch:
        listing, unlabelled, listed = _write_inputs(args, scratch)
        with outputs.OutputRun(args.output, "featurize", args.lease_ttl) as output_run:
            staging = output_run.staging(args.overwrite)
            options, embedding, described, backbone_id = _embedder(args, weights, frame_options, listing, listed,
                                                                   staging)
            spec = RecordSpec(backbone.FEATURE_DIM, args.max_seq_length, backbone_id, args.image_size,
                              sampling=args.sampling, feature_encoding=args.feature_encoding)
            _LOG.info("featurize: %d videos listed, backbone %s, %s %s", listed, backbone_id, options.engine,
                      options.precision)
            for name, local in ((outputs.REFS_FILE, listing), (UNLABELLED_FILE, unlabelled)):
                fs.copy_file(local, fs.join(staging, name))
            pipeline = beam.Pipeline(options=beam_options)
            cores = core_request(args, pipeline.options)
            finish = FinishFeaturize(
                output=args.output, staging=staging, run_id=output_run.run_id, started_at=started_at, cores=cores,
                manifest={"job": "featurize", "inputs": args.input, "output": args.output,
                          "backbone_id": backbone_id, "record_spec": dataclasses.asdict(spec), "embedding": described,
                          "cores": cores.plan().manifest(),
                          "options": {k: v for k, v in vars(args).items() if k not in ("input", "output")}})
            _build(pipeline, args, staging, options, embedding, backbone_id, frame_options, listed, finish)
            result = pipeline.run()
            result.wait_until_finish()
    print(f"featurize: outputs in {args.output} (manifest.json, labels.txt, failures.csv, {SHARD_PATTERN})")
    return result


if __name__ == "__main__":
    from common.cli import exit_with, main
    from tfrecords_schema import RecordError

    # TensorFlow is not imported here: with the OpenVINO engine (the default on a CPU) nothing in this job needs
    # it once the network is cached, and importing it cost the command 4 s. model.engines imports it, quietly,
    # where it is needed (the TensorFlow engine, a GPU driver to ask, the first conversion).
    # The importable module's run, not this script's (see beam_jobs.predict).
    from beam_jobs import featurize

    exit_with(main(featurize.run, user_errors=(RecordError,)))
