"""Label videos with a trained model: a folder of videos (or feature records) -> per-video label CSVs.

    python -m beam_jobs.predict --runner DirectRunner \\
        --input data/new_videos --model models/run1 --output labels/new_videos

Outputs under --output: labels.csv (video_id, video_uri, label, confidence, top_k, one probability column
per class, model_id; sorted by video id), failures.csv, report.html (a page to spot-check the labels:
thumbnails of the sampled frames, label, confidence, top-k, sortable; see beam_jobs.report), thumbnails/
(the report's thumbnail strips, one JPEG per video), manifest.json (written last), index.jsonl (what the
next scheduled run needs), and with --per-video one CSV per video under per_video/, mirroring the input
layout. With --segments SECONDS, also a label for every window of SECONDS along each video (see
beam_jobs.segments and docs/SEGMENTS.md): segments.csv, events.csv (runs of one label, for annotation tools),
tracks/<video id>.vtt (WebVTT, for players) and a timeline per video in the report. Everything appears
together when the run finishes.

Scheduled runs are incremental: re-running the same command on the same --output processes only videos that
are new or changed (by size and modification time, then by content fingerprint) and copies the rows (and
thumbnails) of the others from the previous run; removed videos drop out (beam_jobs.plan works out which,
before any pipeline is built). A re-run that finds nothing new, changed or removed runs no pipeline and says
so in one line. A different model relabels everything, and so does --overwrite. Every flag this job does not know goes to Beam's PipelineOptions.
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
from typing import NamedTuple

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from beam_jobs import outputs, report, review
from beam_jobs import plan as planning
from beam_jobs import segments as seg
from beam_jobs.classify import DecodeRecordDoFn, LabellingModel, load_labelling_model, video_model_input
from beam_jobs.cores import core_request
from beam_jobs.decode import FAILURES, DecodeFrames, FrameOptions
from beam_jobs.embed import EmbedFrames
from beam_jobs.events import TRACKS_DIR
from beam_jobs.flatten import FlattenApart
from beam_jobs.calibration import calibrate
from beam_jobs.flags import add_engine_flags, add_frame_flags, parse_extensions, validate_engine_args, validate_frame_args
from beam_jobs.flags import pipeline_options
from beam_jobs.carry import CarryOver
from beam_jobs.incremental import PreviousRun, ReadPlan, ReadPreviousSegments, SplitKnownContentDoFn, index_entry
from beam_jobs.label_rows import (
    LABELS_FILE,
    PER_VIDEO_DIR,
    UNKNOWN_LABEL,
    FormatLabelRows,
    describe_rows,
    label_columns,
    redecide,
    write_per_video,
)
from beam_jobs.matching import iter_videos, write_listing
from beam_jobs.prism_server import prism_server_for
from beam_jobs.publish_labels import PARTS_DIR, FinishPredict
from beam_jobs.sinks import WriteSortedShards, csv_line
from common import fs
from common.errors import UserError

_LOG = logging.getLogger(__name__)


EXAMPLES = """examples:
  # label a folder of videos with a trained model (offline demo weights are taken from the model):
  python -m beam_jobs.predict --input data/new --model models/run1 --output labels/new

  # also label every 10 s window along each video (segments.csv, events.csv, tracks/*.vtt):
  python -m beam_jobs.predict --input data/long --model models/run1 --output labels/long --segments 10 \\
      --min-confidence 0.5

  # label existing feature records, skipping decoding:
  python -m beam_jobs.predict --features 'features/test/features-*.tfrecord' --model models/run1 \\
      --output labels/test --top-k 5 --min-confidence 0.5

  # nightly, on GCS with Dataflow (only new and changed videos are processed):
  python -m beam_jobs.predict --input gs://bucket/incoming/ --model gs://bucket/models/run1 \\
      --output gs://bucket/labels --runner DataflowRunner --project P --region R \\
      --temp_location gs://bucket/tmp --setup_file ./setup.py
"""


class Branch(NamedTuple):
    """What either input branch (videos or records) hands to publishing."""

    rows: beam.PCollection  # labels.csv rows: made by the model, reused, carried over
    index: beam.PCollection  # the index entries of every labelled video
    failures: beam.PCollection  # (video_id, uri, reason)
    removed: beam.PCollection  # ids of videos the previous run knew that are no longer listed
    counts: dict  # name -> PCollection of one int, the fields of publish_labels.Counts
    rows_read: beam.PCollection  # the rows of videos read in this run (not carried over)
    segments: seg.SegmentOutputs | None = None  # with --segments
    rows_by_model: beam.PCollection | None = None  # the rows the model made in this run (not reused)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.predict",
        description="Label videos (or feature records) with a trained model: labels.csv with the full class\n"
                    "distribution per video, failures.csv, and report.html, a page with thumbnails of each\n"
                    "video's frames, sortable by confidence, to spot-check the labels. Every flag not listed\n"
                    "below goes to Beam's PipelineOptions (--runner, --temp_location, ...).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_frame_flags(parser, input_required=False)
    parser.add_argument("--features", action="append", metavar="PATTERN",
                        help="existing feature records to label instead of videos (repeatable)")
    parser.add_argument("--model", required=True, help="model directory written by python -m model.train")
    parser.add_argument("--output", required=True, help="output directory or gs:// prefix")
    parser.add_argument("--top-k", type=int, default=3, help="label:probability pairs in top_k (default: %(default)s)")
    parser.add_argument("--min-confidence", type=float, default=0.0,
                        help=f"below this probability the label is '{UNKNOWN_LABEL}' (default: %(default)s)")
    parser.add_argument("--segments", type=float, default=None, metavar="SECONDS",
                        help="also label every window of SECONDS along each video, sampled as the model's records "
                             "were: segments.csv, events.csv and tracks/<video id>.vtt (videos only)")
    parser.add_argument("--segment-stride", type=float, default=None, metavar="SECONDS",
                        help="--segments: a window starts every SECONDS (default: the window's length, no overlap)")
    parser.add_argument("--per-video", action="store_true", help="also write per_video/<video id>.csv")
    parser.add_argument("--classifier-batch-size", type=int, default=64,
                        help="videos per classifier call in RunInference (default: %(default)s)")
    parser.add_argument("--weights", default=None,
                        help="DenseNet121 weights file, needed only when the model was trained on features of "
                             "a weights file (imagenet and random backbones are rebuilt from the model)")
    parser.add_argument("--show", type=int, default=0, metavar="N",
                        help="print the top-k labels of the first N videos when done, as percentages")
    parser.add_argument("--large-model", action="store_true",
                        help="share one copy of the classifier between the processes of a worker")
    parser.add_argument("--verify", action="store_true",
                        help="read every video again and compare its content fingerprint with the last run's, "
                             "instead of trusting unchanged size, modification time and file identity")
    add_engine_flags(parser)
    outputs.add_lease_flag(parser)
    review.add_review_flags(parser)
    return parser


def _parse(argv):
    args, beam_args = build_parser().parse_known_args(argv)
    validate_frame_args(args)
    validate_engine_args(args)
    if bool(args.input) == bool(args.features):
        raise UserError("give either --input (videos) or --features (records), not both and not neither")
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if not 0.0 <= args.min_confidence <= 1.0:
        raise UserError(f"--min-confidence must be within 0..1, got {args.min_confidence}")
    _check_segment_args(args)
    review.check_review_args(args)
    return args, beam_args


def _check_segment_args(args) -> None:
    if args.segments is None:
        if args.segment_stride is not None:
            raise UserError("--segment-stride needs --segments SECONDS")
        return
    if args.features:
        raise UserError("--segments labels windows of videos, and feature records hold no frames: give --input "
                        "videos, or drop --segments")
    for flag, value in (("--segments", args.segments), ("--segment-stride", args.segment_stride)):
        if value is not None and not (0 < value < float("inf")):
            raise UserError(f"{flag} must be a positive number of seconds, got {value:g}")


def segment_options(args) -> seg.SegmentOptions | None:
    """The windows --segments and --segment-stride ask for (None without --segments)."""
    if args.segments is None:
        return None
    return seg.SegmentOptions(args.segments, args.segment_stride or args.segments)


def run(argv: list[str] | None = None):
    """Build and run the labelling pipeline; return its PipelineResult (finished), or None when a re-run found
    nothing new, changed or removed and ran none (the model is not even loaded then)."""
    from model import backbone
    from model.identity import check_files, model_id, read_spec

    started_at = time.time()
    args, beam_args = _parse(argv)
    check_files(args.model)
    beam_options = pipeline_options(beam_args)
    with prism_server_for(beam_options), tempfile.TemporaryDirectory(prefix="predict-listing-") as scratch:
        if args.features:
            model = load_labelling_model(args)
            record_files = _check_records(args.features, model.spec)
        else:  # --weights that do not make the model's features: a mistake that must touch no output
            backbone.weights_for_backbone_id(read_spec(args.model).backbone_id, args.weights)
            listing = os.path.join(scratch, outputs.REFS_FILE)
            listed = write_listing(iter_videos(args.input, parse_extensions(args.extensions)), listing)
        with outputs.OutputRun(args.output, "predict", args.lease_ttl) as output_run:
            previous = carry_over = None
            if args.features:  # records are labelled afresh: a finished output is replaced only with --overwrite
                staging = output_run.staging(overwrite=args.overwrite)
                pipeline = beam.Pipeline(options=beam_options)
                branch = _features_branch(pipeline, record_files, model.handler, model.fmt, model.spec)
            else:
                previous = None if args.overwrite else PreviousRun.read(args.output)
                windows = segment_options(args)
                carry, redo = planning.reuse(previous, model_id(args.model), windows, args)
                plan = planning.plan_run(listing, args.output, previous, carry, args.verify, scratch)
                if planning.nothing_to_do(plan, previous, carry, redo, args):
                    planning.record_check(args.output, plan, output_run.run_id, time.time() - started_at,
                                          fence=lambda: outputs.check_lease(args.output, output_run.run_id))
                    print(f"predict: nothing new, changed or removed among the {plan.listed} videos listed; the "
                          f"outputs in {args.output} stay as they are (the check is in {outputs.MANIFEST_FILE})")
                    return None
                model = load_labelling_model(args)
                staging = output_run.staging(overwrite=args.overwrite, incremental=True)
                plan_dir = fs.join(staging, PARTS_DIR, "plan")
                planning.stage(plan, plan_dir)
                _LOG.info("predict: %d videos listed: %d new or changed to read, %d carried over from the previous "
                          "run, %d removed", plan.listed, plan.todo, plan.carried, plan.removed)
                options, embedding = _calibrated(_embedder_options(model.spec, args), args, model.spec, listing,
                                                 listed, staging)
                pipeline = beam.Pipeline(options=beam_options)
                branch = _videos_branch(pipeline, args, model, options, previous, plan_dir, carry, redo, staging)
                if carry and plan.carried:
                    carry_over = CarryOver(
                        output=args.output, plan_dir=plan_dir, count=plan.carried,
                        columns=tuple(label_columns(model.labels)), previous_columns=previous.columns,
                        multiline=previous.multiline, fmt=model.fmt, redo=redo,
                        window_s=windows.window_s if windows else 0.0, segment_columns=previous.segment_columns,
                        per_video=bool(args.per_video) and not previous.per_video)
            _publish(pipeline, args, branch, previous, staging, output_run.run_id, model, started_at,
                     embedding=None if args.features else embedding, carry_over=carry_over,
                     removed_list=None if args.features else fs.join(plan_dir, planning.REMOVED_FILE))
            result = pipeline.run()
            result.wait_until_finish()
    if args.show:
        print(describe_rows(fs.join(args.output, LABELS_FILE), args.show))
    segment_files = f"{seg.SEGMENTS_FILE}, {seg.EVENTS_FILE}, {TRACKS_DIR}/, " if args.segments else ""
    print(f"predict: outputs in {args.output} ({LABELS_FILE}, {segment_files}{report.REPORT_FILE}, "
          f"{outputs.FAILURES_FILE}, {outputs.MANIFEST_FILE})")
    return result


def _embedder_options(spec, args):
    """The engine whose features match the model's records (its backbone id: the weights, and int8 or not),
    with the weights checked to be available."""
    from model import backbone, engines

    backbone.ensure_available(backbone.weights_for_backbone_id(spec.backbone_id, args.weights))
    return engines.options_for_backbone(spec.backbone_id, spec.image_size, args.engine, args.precision,
                                        args.weights, threads=args.embed_threads)


def _calibrated(options, args, spec, listing: str, listed: int, staging: str):
    """(options, what they make) with, for a model trained on int8 features, the calibration frames staged."""
    from model import engines

    frame_options = FrameOptions(spec.max_seq_length, spec.image_size, spec.sampling, args.decode_timeout)
    options, calibration = calibrate(options, args.calibration, parse_extensions(args.extensions), listing, listed,
                                     frame_options, staging)
    return options, engines.describe_options(options, calibration.digest if calibration else "")


def _count(pcoll, label: str):
    return pcoll | label >> beam.combiners.Count.Globally()


def _publish(pipeline, args, branch: Branch, previous, staging, run_id, model: LabellingModel, started_at, embedding=None,
             carry_over: CarryOver | None = None, removed_list: str | None = None):
    """Write the outputs with sinks in parallel, then the publishing step, with small side inputs only. The
    rows of videos carried over join them there (`carry_over`)."""
    labels, model_id, spec = model.labels, model.model_id, model.spec
    columns = tuple(label_columns(labels))
    parts = fs.join(staging, PARTS_DIR)
    label_shards = (branch.rows
                    | "RowLines" >> beam.Map(lambda row: (row["video_id"], csv_line([row.get(c, "") for c in columns])))
                    | "WriteLabelShards" >> WriteSortedShards(fs.join(parts, "labels")))
    failure_shards = (branch.failures | "FailureLines" >> beam.Map(lambda f: (f[0], csv_line(f)))
                      | "WriteFailureShards" >> WriteSortedShards(fs.join(parts, "failures")))
    index_shards = (branch.index | "IndexLines" >> beam.Map(lambda e: (e["video_id"], json.dumps(e, ensure_ascii=False)
                                                                        + "\n"))
                    | "WriteIndex" >> WriteSortedShards(fs.join(parts, "index")))
    # Removed videos and videos that failed in this run lose the per-video files a previous run left.
    stale = (branch.removed, branch.failures | "FailedIds" >> beam.Map(lambda f: f[0])) | "StaleIds" >> FlattenApart()
    # Grouped before written, as every sink here: a writer that reads a side input where the failures are produced
    # (Beam's WriteToText) fuses into the decode-and-embed stage, which Prism then spins on (records.py).
    removed_files = (stale | "StaleLines" >> beam.Map(lambda video_id: (video_id, json.dumps(video_id) + "\n"))
                     | "WriteRemoved" >> WriteSortedShards(fs.join(parts, "removed"))
                     | "RemovedPaths" >> beam.Map(lambda shard: shard[0]))
    counts = dict(branch.counts)
    if args.per_video:  # (carried rows get theirs when publishing, if the previous run wrote none)
        counts["per_video"] = _count(branch.rows | "WritePerVideo" >> beam.Map(write_per_video, staging, labels),
                                     "CountPerVideo")
    wipe = [report.THUMBNAILS_DIR] if args.overwrite or args.features else []
    if args.overwrite or args.features or not args.per_video or (previous is not None and not previous.per_video):
        wipe.append(PER_VIDEO_DIR)
    windows = segment_options(args)
    segment_columns = tuple(seg.segment_columns(labels)) if windows else ()
    side_inputs = {}
    if windows:
        side_inputs = {name: beam.pvalue.AsList(lines | f"{label}Lines" >> beam.Map(lambda kv: (kv[0], csv_line(kv[1])))
                                                | f"Write{label}Shards" >> WriteSortedShards(fs.join(parts, name)))
                       for name, label, lines in (("segment_shards", "Segment", branch.segments.segment_lines),
                                                  ("event_shards", "Event", branch.segments.event_lines))}
        counts["tracks"] = _count(branch.segments.tracks | "StageTracks" >> beam.Map(seg.stage_track, staging),
                                  "CountTracks")
    if args.overwrite or not windows or previous is None or previous.segments != windows.manifest():
        wipe.append(TRACKS_DIR)  # else the tracks of videos carried over stay, as their thumbnails do
    wipe.append(review.REVIEW_DIR)  # the previous run's tasks were for its videos
    counts.update(review.write_review_files(args, branch.rows_by_model, branch.segments, labels, model_id, staging))
    keyed_counts = [pc | f"Name{name.title().replace('_', '')}" >> beam.Map(lambda v, n=name: (n, v))
                    for name, pc in counts.items()]
    finish = FinishPredict(
        output=args.output, staging=staging, run_id=run_id, columns=columns, wipe=tuple(wipe),
        started_at=started_at, carried_thumbnails=not args.overwrite,
        no_thumbnail="no frames (labelled from feature records)" if args.features else "no thumbnail",
        manifest={"job": "predict", "inputs": list(args.input or args.features), "model": args.model,
                  "model_id": model_id, "labels": list(labels), "record_spec": dataclasses.asdict(spec),
                  "embedding": embedding, "segments": windows.manifest() if windows else None,
                  "cores": core_request(args, pipeline.options).plan().manifest(),
                  "options": {k: v for k, v in vars(args).items() if k != "output"}},
        segment_columns=segment_columns, carry_over=carry_over, removed_list=removed_list,
    )
    _ = pipeline | "PublishOutputs" >> outputs.PublishOutputs(
        finish,
        counts=beam.pvalue.AsSingleton(keyed_counts | "AllCounts" >> FlattenApart()
                                       | "CountsDict" >> beam.combiners.ToDict()),
        summary=beam.pvalue.AsSingleton((branch.rows, branch.failures) | "Summarize" >> report.SummarizeForReport()),
        label_shards=beam.pvalue.AsList(label_shards),
        failure_shards=beam.pvalue.AsList(failure_shards),
        removed_files=beam.pvalue.AsList(removed_files),
        index_shards=beam.pvalue.AsList(index_shards),
        **side_inputs,
    )


def _videos_branch(pipeline, args, model: LabellingModel, options, previous, plan_dir: str, carry: bool, redo: bool,
                   staging: str) -> Branch:
    """The plan's new and changed videos -> rows (the unchanged ones are carried over when publishing, unread).
    Those whose content is unchanged (by fingerprint) skip the model, their rows reused (decided again when
    `redo`). With --segments, each video's windows are labelled too (beam_jobs.segments); a reused row gets its
    previous segments, from a previous run with the same windows."""
    spec, handler, fmt = model.spec, model.handler, model.fmt
    windows = segment_options(args)
    frame_options = FrameOptions(spec.max_seq_length, spec.image_size, spec.sampling, args.decode_timeout)
    todo = (pipeline | "ReadPlan" >> ReadPlan(fs.join(plan_dir, planning.TODO_FILE))
            | "SpreadVideos" >> beam.Reshuffle())
    cores = core_request(args, pipeline.options)
    decode = (seg.DecodeSegments(frame_options, windows, job_id=staging, cores=cores) if windows
              else DecodeFrames(frame_options, job_id=staging, cores=cores))
    decoded = todo | "DecodeFrames" >> decode
    thumbnailed = decoded.videos | "MakeThumbnails" >> report.MakeThumbnails()
    split = thumbnailed.videos | "SplitKnownContent" >> beam.ParDo(SplitKnownContentDoFn()).with_outputs(
        SplitKnownContentDoFn.KNOWN, main="new")
    to_embed = split.new
    if windows:  # the windows' frames share the embedding step (and its batches) with the whole videos'
        to_embed = (split.new, decoded[seg.CHUNKS]) | "WithWindowFrames" >> FlattenApart()
    embedded = to_embed | "EmbedFrames" >> EmbedFrames(options, batch_size=args.batch_size, job_id=staging,
                                                       cores=cores)
    if windows:
        embedded, window_frames = embedded | "SplitWindowFrames" >> beam.Partition(
            lambda video, _: int(seg.is_window_frames(video)), 2)
    predictions = (embedded | "ModelInputs" >> beam.Map(video_model_input, spec.max_seq_length)
                   | "Classify" >> RunInference(handler))
    video_refs = embedded | "KeyRefs" >> beam.Map(lambda v: (v.ref.video_id, v.ref))
    new_rows = (predictions, video_refs) | "FormatLabelRows" >> FormatLabelRows(fmt)
    known = split[SplitKnownContentDoFn.KNOWN]
    reused_rows = known | "KnownRows" >> beam.Map(lambda pair: pair[0])
    if redo:
        reused_rows = reused_rows | "RedecideKnown" >> beam.Map(redecide, fmt)
    thumbnails = thumbnailed[report.THUMBNAILS] | "StageThumbnails" >> beam.Map(report.stage_thumbnail, staging)
    segments = None
    if windows:  # the rows come out of the join with their videos' segments, each with its timeline
        previous_path = fs.join(plan_dir, planning.PREVIOUS_SEGMENTS_FILE)
        previous_segments = (pipeline | "PreviousSegments" >> ReadPreviousSegments(previous_path, previous)
                             if carry and fs.exists(previous_path) else pipeline | "NoPreviousSegments" >> beam.Create([]))
        segments = ((window_frames, new_rows, reused_rows, previous_segments)
                    | "LabelSegments" >> seg.LabelSegments(handler, fmt, spec.max_seq_length, windows, redo))
        rows = segments.rows
    else:
        rows = (new_rows, reused_rows) | "AllRows" >> FlattenApart()
    zero = pipeline | "NoneCarriedHere" >> beam.Create([0])
    return Branch(
        rows=rows,
        rows_read=rows,
        index=((embedded | "IndexNew" >> beam.Map(lambda v: index_entry(v.ref, v.fingerprint)),
                known | "IndexKnown" >> beam.Map(lambda pair: pair[1])) | "AllIndex" >> FlattenApart()),
        failures=decoded[FAILURES],
        removed=pipeline | "NoneRemovedHere" >> beam.Create([]),  # the plan's removed videos: publishing reads them
        counts={
            "matched": _count(todo, "CountMatched"),
            "by_model": _count(new_rows, "CountByModel"),
            "reused_content": _count(reused_rows, "CountReused"),
            "carried": zero,
            "failed": _count(decoded[FAILURES], "CountFailed"),
            "frames_sampled": (thumbnailed.videos | "FramesSampled" >> beam.Map(lambda v: len(v.sampled.frame_indices))
                               | "SumFramesSampled" >> beam.CombineGlobally(sum)),
            "thumbnails": _count(thumbnails, "CountThumbnails"),
            **(segments.counts if segments else {}),
        },
        segments=segments,
        rows_by_model=new_rows,
    )


def _check_records(patterns, spec) -> list[str]:
    """The record files `patterns` match, checked against the model's spec."""
    from tfrecords_schema import RecordError, dataset_spec, match_record_files

    files = match_record_files(patterns)
    found = dataset_spec(files)
    if problems := spec.mismatches(found):
        raise RecordError("the feature records do not match the model: " + "; ".join(problems))
    return files


def _features_branch(pipeline, files, handler, fmt, spec) -> Branch:
    """Feature records -> rows; records hold no frames, so there are no thumbnails. Every record is checked
    against the model's `spec`: one that does not match it is a failure with its reason."""
    serialized = (
        pipeline
        | "RecordFiles" >> beam.Create(files)
        | "ReadRecords" >> beam.io.ReadAllFromTFRecord()
        | "SpreadRecords" >> beam.Reshuffle()
    )
    checked = serialized | "DecodeRecords" >> beam.ParDo(DecodeRecordDoFn(spec)).with_outputs(FAILURES, main="records")
    decoded, refused = checked.records, checked[FAILURES]
    predictions = decoded | "KeyInputs" >> beam.Map(lambda t: t[2]) | "Classify" >> RunInference(handler)
    refs = decoded | "KeyRefs" >> beam.Map(lambda t: (t[0].video_id, t[0]))
    rows = (predictions, refs) | "FormatLabelRows" >> FormatLabelRows(fmt)
    zero = pipeline | "Zero" >> beam.Create([0])
    return Branch(
        rows=rows, rows_read=rows, rows_by_model=rows,
        index=decoded | "Index" >> beam.Map(lambda t: index_entry(t[0], t[1])),
        failures=refused, removed=pipeline | "NoneRemoved" >> beam.Create([]),
        counts={"matched": _count(serialized, "CountRecords"), "by_model": _count(rows, "CountByModel"),
                "reused_content": zero, "carried": zero, "failed": _count(refused, "CountFailed")},
    )


if __name__ == "__main__":
    from common.cli import exit_with, main
    from tfrecords_schema import RecordError

    # The importable module's run, not this script's: run as a script, this file's classes would belong to
    # __main__, which the SDK workers of portable and multi-process runners lack.
    from beam_jobs import predict

    exit_with(main(predict.run, user_errors=(RecordError,)))
