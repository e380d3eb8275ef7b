"""Label videos with a trained model: a folder of videos (or feature records) -> per-video label CSVs.

    python -m beam_jobs.predict --runner DirectRunner \\
        --input data/new_videos --model models/run1 --output labels/new_videos

Outputs under --output: labels.csv (video_id, video_uri, label, confidence, top_k, one probability column
per class, model_id; sorted by video id), failures.csv, report.html (a page to spot-check the labels:
thumbnails of the sampled frames, label, confidence, top-k, sortable; see beam_jobs.report), thumbnails/
(the report's thumbnail strips, one JPEG per video), manifest.json (written last), index.jsonl (what the
next scheduled run needs), and with --per-video one CSV per video under per_video/, mirroring the input
layout. Everything appears together when the run finishes.

Scheduled runs are incremental: re-running the same command on the same --output processes only videos that
are new or changed (by size and modification time, then by content fingerprint) and copies the rows (and
thumbnails) of the others from the previous run; removed videos drop out. A different model relabels
everything, and so does --overwrite. Every flag this job does not know goes to Beam's PipelineOptions.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import posixpath
import sys
import time
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import outputs, report
from beam_jobs.featurize import add_frame_flags, parse_extensions, validate_frame_args
from beam_jobs.matching import VideoRef, match_videos
from beam_jobs.transforms import (
    FAILURES,
    DecodeFrames,
    EmbedFrames,
    FrameOptions,
    ReadVideoList,
    Video,
    write_refs,
)
from model.cli import UserError

_LOG = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
INDEX_FILE = "index.jsonl"
PER_VIDEO_DIR = "per_video"
UNKNOWN_LABEL = "unknown"
BASE_COLUMNS = ("video_id", "video_uri", "label", "confidence", "top_k")
OUTPUT_PATTERNS = (LABELS_FILE, INDEX_FILE, outputs.FAILURES_FILE, report.REPORT_FILE, f"{PER_VIDEO_DIR}/**",
                   f"{report.THUMBNAILS_DIR}/**")

EXAMPLES = """examples:
  # label a folder of videos with a trained model (offline demo weights are taken from the model):
  python -m beam_jobs.predict --input data/new --model models/run1 --output labels/new

  # label existing feature records, skipping decoding:
  python -m beam_jobs.predict --features 'features/test/features-*.tfrecord' --model models/run1 \\
      --output labels/test --top-k 5 --min-confidence 0.5

  # nightly, on GCS with Dataflow (only new and changed videos are processed):
  python -m beam_jobs.predict --input gs://bucket/incoming/ --model gs://bucket/models/run1 \\
      --output gs://bucket/labels --runner DataflowRunner --project P --region R \\
      --temp_location gs://bucket/tmp --setup_file ./setup.py
"""


def probability_column(label: str) -> str:
    return f"p_{label}"


def label_columns(labels: Sequence[str]) -> list[str]:
    return [*BASE_COLUMNS, *(probability_column(label) for label in labels), "model_id"]


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """One video's classifier input: `features` `[T, D]` float32 padded, `mask` `[T]` bool."""

    features: np.ndarray
    mask: np.ndarray


class VideoClassifierHandler(ModelHandler):
    """RunInference handler for a model directory from `model.train`: ModelInput -> class probabilities.

    The model loads once per worker process (shared across threads and DoFn instances by RunInference)."""

    def __init__(self, model_dir: str, batch_size: int = 64, large_model: bool = False):
        super().__init__()
        self._model_dir = model_dir
        self._batch_size = batch_size
        self._large_model = large_model

    def load_model(self):
        from model.export import load_model_dir

        return load_model_dir(self._model_dir).model

    def run_inference(self, batch: Sequence[ModelInput], model, inference_args=None) -> Iterable[PredictionResult]:
        features = np.stack([item.features for item in batch]).astype(np.float32)
        mask = np.stack([item.mask for item in batch]).astype(bool)
        probabilities = np.asarray(model.predict_on_batch({"features": features, "mask": mask}))
        return [PredictionResult(item, row, self._model_dir) for item, row in zip(batch, probabilities)]

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self._batch_size}

    def share_model_across_processes(self) -> bool:
        return self._large_model

    def get_num_bytes(self, batch: Sequence[ModelInput]) -> int:
        return sum(item.features.nbytes + item.mask.nbytes for item in batch)


def video_model_input(video: Video, max_seq_length: int) -> tuple[str, ModelInput]:
    """Video with features -> (video_id, padded ModelInput)."""
    count, dim = video.features.shape
    features = np.zeros((max_seq_length, dim), np.float32)
    features[:count] = video.features
    mask = np.zeros(max_seq_length, bool)
    mask[:count] = True
    return video.ref.video_id, ModelInput(features, mask)


@dataclasses.dataclass(frozen=True)
class RowFormat:
    labels: tuple[str, ...]
    model_id: str
    top_k: int
    min_confidence: float


def format_label_row(video_id: str, uri: str, probabilities: np.ndarray, fmt: RowFormat) -> dict[str, str]:
    """One labels.csv row: best label (or `unknown` below --min-confidence), confidence, top-k pairs."""
    probabilities = np.asarray(probabilities, np.float64)
    probabilities = probabilities / probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")
    best = int(order[0])
    confidence = float(probabilities[best])
    row = {
        "video_id": video_id,
        "video_uri": uri,
        "label": fmt.labels[best] if confidence >= fmt.min_confidence else UNKNOWN_LABEL,
        "confidence": f"{confidence:.6f}",
        "top_k": ";".join(f"{fmt.labels[i]}:{probabilities[i]:.6f}" for i in order[: fmt.top_k]),
        "model_id": fmt.model_id,
    }
    for label, p in zip(fmt.labels, probabilities):
        row[probability_column(label)] = f"{p:.6f}"
    return row


class FormatLabelRows(beam.PTransform):
    """(video_id, PredictionResult) joined with (video_id, VideoRef) -> labels.csv row dicts."""

    def __init__(self, fmt: RowFormat):
        super().__init__()
        self._fmt = fmt

    def expand(self, inputs):
        predictions, refs = inputs
        return (
            {"prediction": predictions, "ref": refs}
            | "JoinRefs" >> beam.CoGroupByKey()
            | "Format" >> beam.FlatMap(_format_joined, self._fmt)
        )


def _format_joined(joined, fmt: RowFormat):
    video_id, parts = joined
    for result in parts["prediction"]:
        (ref,) = parts["ref"]
        yield format_label_row(video_id, ref.uri, result.inference, fmt)


def rows_to_csv(rows: Iterable[dict], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["video_id"]))
    return buffer.getvalue()


def per_video_csv(row: dict, labels: Sequence[str]) -> str:
    """One video's class distribution, most likely first."""
    pairs = sorted(((label, float(row[probability_column(label)])) for label in labels), key=lambda p: -p[1])
    return "class,probability\n" + "".join(f"{label},{p:.6f}\n" for label, p in pairs)


def per_video_path(video_id: str) -> str:
    """per_video/<video id>.csv; ids that are URIs keep only their path part."""
    relative = video_id.split("://", 1)[-1].lstrip("/")
    return posixpath.join(PER_VIDEO_DIR, relative + ".csv")


@dataclasses.dataclass
class PreviousRun:
    """What a finished earlier run into the same output knows: its rows and index, by video id."""

    rows: dict[str, dict]
    index: dict[str, dict]
    model_id: str

    @classmethod
    def read(cls, output: str) -> "PreviousRun | None":
        manifest_path = outputs.join(output, outputs.MANIFEST_FILE)
        index_path = outputs.join(output, INDEX_FILE)
        if not outputs.FileSystems.exists(manifest_path):
            return None
        manifest = json.loads(outputs.read_text(manifest_path))
        if manifest.get("job") != "predict":
            raise UserError(f"{output} holds the output of a {manifest.get('job', 'different')} job; "
                            "pass --overwrite to replace it")
        if not outputs.FileSystems.exists(index_path):
            return None
        rows = {row["video_id"]: row for row in csv.DictReader(io.StringIO(outputs.read_text(outputs.join(output, LABELS_FILE))))}
        index = {}
        for line in outputs.read_text(index_path).splitlines():
            if line:
                entry = json.loads(line)
                index[entry["video_id"]] = entry
        return cls(rows=rows, index=index, model_id=manifest.get("model_id", ""))


def plan_incremental(refs: list[VideoRef], previous: PreviousRun | None, model_id: str):
    """Split the current videos into (unchanged rows to copy, their index entries, videos to process).

    A video is unchanged when the previous run labelled it with the same model and its size and
    modification time are the same. Videos whose stat changed but whose content did not are caught later,
    by fingerprint (see `split_known_content`)."""
    if previous is None or previous.model_id != model_id:
        return [], [], refs
    kept_rows, kept_index, todo = [], [], []
    for ref in refs:
        entry = previous.index.get(ref.video_id)
        row = previous.rows.get(ref.video_id)
        if (entry and row and entry["uri"] == ref.uri and entry["size"] == ref.size
                and entry["mtime"] == ref.mtime and ref.size >= 0):
            kept_rows.append(row)
            kept_index.append(entry)
        else:
            todo.append(ref)
    return kept_rows, kept_index, todo


def index_entry(ref: VideoRef, fingerprint: str) -> dict:
    return {"video_id": ref.video_id, "uri": ref.uri, "size": ref.size, "mtime": ref.mtime,
            "fingerprint": fingerprint}


class _SplitKnownContent(beam.DoFn):
    """Decoded videos whose content the previous run already labelled (same fingerprint) skip the model."""

    KNOWN = "known"

    def __init__(self, known: dict[str, tuple[str, dict]]):
        self._known = known  # video_id -> (fingerprint, previous row)

    def process(self, video: Video):
        previous = self._known.get(video.ref.video_id)
        if previous and previous[0] == video.fingerprint:
            row = dict(previous[1], video_uri=video.ref.uri)
            yield beam.pvalue.TaggedOutput(self.KNOWN, (row, index_entry(video.ref, video.fingerprint)))
        else:
            yield video


@dataclasses.dataclass(frozen=True)
class _FinishPredict:
    """Publishes labels.csv, failures.csv, report.html, thumbnails, index.jsonl, per-video CSVs and the
    manifest, once; checks that every matched video is in exactly one of labels.csv and failures.csv."""

    output: str
    staging: str
    videos_matched: int
    columns: tuple[str, ...]
    carried_rows: tuple[dict, ...]
    carried_index: tuple[dict, ...]
    manifest: dict
    started_at: float = 0.0  # time.time() when the job was launched
    no_thumbnail: str = "no frames"  # what the report shows for a video without a thumbnail

    def __call__(self, rows, reused_rows, index, failures, per_video, thumbnails=(), frames_sampled=0):
        all_rows = list(self.carried_rows) + list(reused_rows) + list(rows)
        ids = [row["video_id"] for row in all_rows]
        failed_ids = [f[0] for f in failures]
        if len(set(ids)) != len(ids) or set(ids) & set(failed_ids) or len(ids) + len(failed_ids) != self.videos_matched:
            raise RuntimeError(f"accounting error: {self.videos_matched} matched, {len(ids)} labelled, "
                               f"{len(failed_ids)} failed")
        labelled = set(ids)
        thumbnails = [t for t in thumbnails if t[0] in labelled]
        entries = sorted(list(self.carried_index) + list(index), key=lambda e: e["video_id"])
        reused = len(self.carried_rows) + len(reused_rows)
        seconds = max(time.time() - self.started_at if self.started_at else 0.0, 1e-3)
        summary = {
            "Videos": f"{self.videos_matched} matched: {len(all_rows)} labelled ({len(rows)} by the model in this "
                      f"run, {reused} carried over from the previous run), {len(failures)} failed",
            "Model": f"{self.manifest.get('model', '')} (model id {self.manifest.get('model_id', '')})",
            "Input": ", ".join(self.manifest.get("inputs", [])),
            "Output": self.output,
            "Finished": f"{outputs.now_utc()}, after {seconds:.0f} s",
        }
        page = report.render_report(all_rows, failures, {t[0]: t[2] for t in thumbnails}, summary,
                                    unknown_label=UNKNOWN_LABEL, no_thumbnail=self.no_thumbnail)
        texts = {
            LABELS_FILE: rows_to_csv(all_rows, self.columns),
            outputs.FAILURES_FILE: outputs.failures_csv(failures),
            INDEX_FILE: "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries),
            report.REPORT_FILE: page,
        }
        manifest = dict(
            self.manifest,
            videos_matched=self.videos_matched,
            videos_labelled=len(all_rows),
            labelled_this_run=len(rows),
            reused_from_previous_run=reused,
            failures=len(failures),
            frames_sampled=int(frames_sampled),
            seconds=round(seconds, 1),
        )
        staged = sorted(per_video) + sorted(t[1] for t in thumbnails)
        published = outputs.publish(self.output, self.staging, staged, texts, manifest,
                                    replace_patterns=OUTPUT_PATTERNS)
        read = len(rows) + len(reused_rows) + len(failures)  # videos (or records) this run had to open
        rates = f"{read} {'videos' if frames_sampled else 'inputs'} read at {read / seconds:.2f}/s"
        if frames_sampled:
            rates += f", {frames_sampled} frames sampled at {frames_sampled / seconds:.1f} frames/s"
        _LOG.info("predict finished in %.1f s: %d of %d videos labelled (%d by the model, %d carried over from the "
                  "previous run), %d failed; %s", seconds, len(all_rows), self.videos_matched, len(rows), reused,
                  len(failures), rates)
        files = [f"{LABELS_FILE} ({len(all_rows)} rows)", f"{outputs.FAILURES_FILE} ({len(failures)})",
                 f"{report.REPORT_FILE} ({len(page) / 1024:.0f} KB)", outputs.MANIFEST_FILE]
        if thumbnails:
            files.insert(3, f"{report.THUMBNAILS_DIR}/ ({len(thumbnails)} JPEGs)")
        if per_video:
            files.insert(3, f"{PER_VIDEO_DIR}/ ({len(per_video)} CSVs)")
        _LOG.info("predict outputs in %s: %s", self.output, ", ".join(files))
        return published


def _write_per_video(row: dict, staging: str, labels: Sequence[str]) -> str:
    path = outputs.join(staging, per_video_path(row["video_id"]))
    outputs.write_text(path, per_video_csv(row, labels))
    return path


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
    add_frame_flags(parser)
    source = parser._option_string_actions["--input"]
    source.required = False
    parser.add_argument("--features", action="append", metavar="PATTERN",
                        help="existing feature records to label instead of videos (repeatable)")
    parser.add_argument("--model", required=True, help="model directory written by python -m model.train")
    parser.add_argument("--output", required=True, help="output directory or gs:// prefix")
    parser.add_argument("--top-k", type=int, default=3, help="label:probability pairs in top_k (default: %(default)s)")
    parser.add_argument("--min-confidence", type=float, default=0.0,
                        help=f"below this probability the label is '{UNKNOWN_LABEL}' (default: %(default)s)")
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
    return parser


def run(argv: list[str] | None = None):
    """Build and run the labelling pipeline; return its PipelineResult (finished)."""
    from model.export import load_model_dir

    started_at = time.time()
    args, beam_args = build_parser().parse_known_args(argv)
    validate_frame_args(args)
    if bool(args.input) == bool(args.features):
        raise UserError("give either --input (videos) or --features (records), not both and not neither")
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if not 0.0 <= args.min_confidence <= 1.0:
        raise UserError(f"--min-confidence must be within 0..1, got {args.min_confidence}")
    loaded = load_model_dir(args.model)
    spec, labels, model_id = loaded.spec, tuple(loaded.labels), loaded.model_id
    del loaded  # the workers load their own copy
    fmt = RowFormat(labels, model_id, min(args.top_k, len(labels)), args.min_confidence)
    previous = None if args.overwrite else PreviousRun.read(args.output)
    handler = KeyedModelHandler(VideoClassifierHandler(args.model, args.classifier_batch_size, args.large_model))
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    if args.features:
        branch = _features_branch(pipeline, args, spec, handler, fmt)  # checks the records first
        staging = outputs.prepare_output(args.output, overwrite=True)
        carried_rows, carried_index = [], []
    else:
        branch, staging, carried_rows, carried_index = _videos_branch(pipeline, args, spec, handler, fmt, previous)
    rows = (branch["rows"], branch["reused_rows"]) | "AllRows" >> beam.Flatten()
    if args.per_video:
        carried = pipeline | "CarriedRows" >> beam.Create(carried_rows)
        per_video = ((rows, carried) | "RowsForPerVideo" >> beam.Flatten()
                     | "WritePerVideo" >> beam.Map(_write_per_video, staging, labels))
    else:
        per_video = pipeline | "NoPerVideo" >> beam.Create([])
    finish = _FinishPredict(
        output=args.output,
        staging=staging,
        videos_matched=branch["matched"],
        columns=tuple(label_columns(labels)),
        carried_rows=tuple(carried_rows),
        carried_index=tuple(carried_index),
        started_at=started_at,
        no_thumbnail="no frames (labelled from feature records)" if args.features else "no thumbnail",
        manifest={
            "job": "predict",
            "inputs": list(args.input or args.features),
            "model": args.model,
            "model_id": model_id,
            "labels": list(labels),
            "record_spec": dataclasses.asdict(spec),
            "options": {k: v for k, v in vars(args).items() if k != "output"},
        },
    )
    _ = pipeline | "PublishOutputs" >> outputs.PublishOutputs(
        finish,
        rows=beam.pvalue.AsList(branch["rows"]),
        reused_rows=beam.pvalue.AsList(branch["reused_rows"]),
        index=beam.pvalue.AsList(branch["index"]),
        failures=beam.pvalue.AsList(branch["failures"]),
        per_video=beam.pvalue.AsList(per_video),
        thumbnails=beam.pvalue.AsList(branch["thumbnails"]),
        frames_sampled=beam.pvalue.AsSingleton(branch["frames_sampled"]),
    )
    result = pipeline.run()
    result.wait_until_finish()
    if args.show:
        print(describe_rows(outputs.join(args.output, LABELS_FILE), args.show))
    print(f"predict: outputs in {args.output} ({LABELS_FILE}, {report.REPORT_FILE}, {outputs.FAILURES_FILE}, "
          f"{outputs.MANIFEST_FILE})")
    return result


def describe_rows(labels_csv: str, count: int) -> str:
    """The first `count` rows of a labels.csv, the way the Keras reference prints predictions."""
    lines = []
    for row in list(csv.DictReader(io.StringIO(outputs.read_text(labels_csv))))[:count]:
        lines.append(f"{row['video_id']}: {row['label']}")
        for pair in row["top_k"].split(";"):
            label, _, probability = pair.rpartition(":")
            lines.append(f"  {label:>16}: {100 * float(probability):6.2f}%")
    return "\n".join(lines)


def _videos_branch(pipeline, args, spec, handler, fmt, previous: PreviousRun | None):
    """Videos -> rows. Unchanged videos (by stat) are copied from `previous` without reading them; those
    whose content is unchanged (by fingerprint) skip the model."""
    from model import backbone

    weights = backbone.weights_for_backbone_id(spec.backbone_id, args.weights)
    backbone.ensure_available(weights)
    refs = match_videos(args.input, parse_extensions(args.extensions))
    carried_rows, carried_index, todo = plan_incremental(refs, previous, fmt.model_id)
    known = {}
    if previous is not None and previous.model_id == fmt.model_id:
        known = {ref.video_id: (previous.index[ref.video_id]["fingerprint"], previous.rows[ref.video_id])
                 for ref in todo if ref.video_id in previous.index and ref.video_id in previous.rows}
    _LOG.info("predict: %d videos matched, %d unchanged since the last run, %d to read", len(refs),
              len(carried_rows), len(todo))
    staging = outputs.prepare_output(args.output, overwrite=True)
    refs_path = outputs.join(staging, "inputs.jsonl")
    write_refs(refs_path, todo)
    frame_options = FrameOptions(spec.max_seq_length, spec.image_size, spec.sampling, args.decode_timeout)

    videos = pipeline | "MatchVideos" >> ReadVideoList(refs_path)
    decoded = videos | "DecodeFrames" >> DecodeFrames(frame_options, job_id=staging, expected_videos=len(todo))
    thumbnailed = decoded.videos | "MakeThumbnails" >> report.MakeThumbnails()
    split = thumbnailed.videos | "SplitKnownContent" >> beam.ParDo(_SplitKnownContent(known)).with_outputs(
        _SplitKnownContent.KNOWN, main="new")
    embedded = split.new | "EmbedFrames" >> EmbedFrames(_weights_flag(weights), spec.image_size, args.batch_size,
                                                         expected_videos=len(todo), job_id=staging)
    keyed_inputs = embedded | "ModelInputs" >> beam.Map(video_model_input, spec.max_seq_length)
    predictions = keyed_inputs | "Classify" >> RunInference(handler)
    video_refs = embedded | "KeyRefs" >> beam.Map(lambda v: (v.ref.video_id, v.ref))
    rows = (predictions, video_refs) | "FormatLabelRows" >> FormatLabelRows(fmt)
    known_pairs = split[_SplitKnownContent.KNOWN]
    reused_rows = known_pairs | "KnownRows" >> beam.Map(lambda pair: pair[0])
    new_index = embedded | "IndexNew" >> beam.Map(lambda v: index_entry(v.ref, v.fingerprint))
    known_index = known_pairs | "IndexKnown" >> beam.Map(lambda pair: pair[1])
    index = (new_index, known_index) | "AllIndex" >> beam.Flatten()
    # Videos carried over unread keep the thumbnail the previous run made; it is read before publishing
    # replaces the previous outputs, and staged again with the new ones.
    carried_thumbnails = (
        pipeline
        | "CarriedVideoIds" >> beam.Create([row["video_id"] for row in carried_rows])
        | "ReadCarriedThumbnails" >> beam.FlatMap(report.read_previous_thumbnail, args.output)
    )
    thumbnails = (
        (thumbnailed[report.THUMBNAILS], carried_thumbnails)
        | "AllThumbnails" >> beam.Flatten()
        | "StageThumbnails" >> beam.Map(report.stage_thumbnail, staging)
    )
    frames_sampled = (
        thumbnailed.videos
        | "FramesSampled" >> beam.Map(lambda v: len(v.sampled.frame_indices))
        | "SumFramesSampled" >> beam.CombineGlobally(sum)
    )
    branch = {"rows": rows, "reused_rows": reused_rows, "index": index, "failures": decoded[FAILURES],
              "matched": len(refs), "thumbnails": thumbnails, "frames_sampled": frames_sampled}
    return branch, staging, carried_rows, carried_index


def _weights_flag(weights) -> str:
    """The --weights value that rebuilds `weights` in a worker."""
    if weights.kind == "random":
        return f"random:{weights.seed}"
    return weights.path or weights.kind


def _record_model_input(serialized: bytes, spec):
    from tfrecords_schema import decode_video_record

    record = decode_video_record(serialized)
    mask = record.mask.astype(bool)
    ref = VideoRef(video_id=record.video_id, uri=record.uri, label=record.label)
    return ref, record.fingerprint, (record.video_id, ModelInput(record.features, mask))


def _features_branch(pipeline, args, spec, handler, fmt):
    from tfrecords_schema import RecordError, dataset_spec, match_record_files

    files = match_record_files(args.features)
    found = dataset_spec(files)
    if problems := spec.mismatches(found):
        raise RecordError("the feature records do not match the model: " + "; ".join(problems))
    count = sum(1 for f in files for _ in _iter_records(f))
    decoded = (
        pipeline
        | "RecordFiles" >> beam.Create(files)
        | "ReadRecords" >> beam.io.ReadAllFromTFRecord()
        | "SpreadRecords" >> beam.Reshuffle()
        | "DecodeRecords" >> beam.Map(_record_model_input, spec)
    )
    predictions = decoded | "KeyInputs" >> beam.Map(lambda t: t[2]) | "Classify" >> RunInference(handler)
    refs = decoded | "KeyRefs" >> beam.Map(lambda t: (t[0].video_id, t[0]))
    rows = (predictions, refs) | "FormatLabelRows" >> FormatLabelRows(fmt)
    index = decoded | "Index" >> beam.Map(lambda t: index_entry(t[0], t[1]))
    failures = pipeline | "NoFailures" >> beam.Create([])
    reused_rows = pipeline | "NoReusedRows" >> beam.Create([])
    thumbnails = pipeline | "NoThumbnails" >> beam.Create([])  # records hold no frames
    frames_sampled = pipeline | "NoFramesSampled" >> beam.Create([0])
    return {"rows": rows, "reused_rows": reused_rows, "index": index, "failures": failures, "matched": count,
            "thumbnails": thumbnails, "frames_sampled": frames_sampled}


def _iter_records(path: str):
    import tensorflow as tf

    return tf.data.TFRecordDataset(path).as_numpy_iterator()


if __name__ == "__main__":
    from model.cli import main, quiet_tensorflow

    quiet_tensorflow()
    # The importable module's run, not this script's: run as a script, this file's classes (ModelInput, the
    # DoFns) would belong to __main__, which the SDK workers of portable and multi-process runners lack.
    from beam_jobs import predict

    sys.exit(main(predict.run))
