"""The classifier as a RunInference model handler: padded frame features and their mask -> class
probabilities, batched across videos and keyed by video id."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult

from beam_jobs.decode import FAILURES
from beam_jobs.label_rows import RowFormat


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """One video's classifier input: `features` `[T, D]` float32 padded, `mask` `[T]` bool (True = real)."""

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


def video_model_input(video, max_seq_length: int) -> tuple[str, ModelInput]:
    """An embedded Video -> (video_id, padded ModelInput)."""
    from tfrecords_schema import pad_features

    features, mask = pad_features(video.features, max_seq_length)
    return video.ref.video_id, ModelInput(features, mask)


class DecodeRecordDoFn(beam.DoFn):
    """A serialized feature record -> `record_model_input`'s tuple, checked against the model's RecordSpec:
    every record, not only a shard's first (a shard may mix records of several runs). A record of another
    feature dim, frame count, backbone, image size or sampling goes to the FAILURES output as (video_id, uri,
    reason), counted as `records_refused`."""

    def __init__(self, spec):
        self._spec = spec
        self._refused = Metrics.counter("predict", "records_refused")

    def process(self, serialized: bytes):
        from beam_jobs.matching import VideoRef
        from tfrecords_schema import decode_video_record

        record = decode_video_record(serialized)
        if problems := self._spec.mismatches(record.spec):
            self._refused.inc()
            yield beam.pvalue.TaggedOutput(
                FAILURES, (record.video_id, record.uri, "the record does not match the model: " + "; ".join(problems)))
            return
        ref = VideoRef(video_id=record.video_id, uri=record.uri, label=record.label)
        yield ref, record.fingerprint, (record.video_id, ModelInput(record.features, record.mask))


def record_model_input(serialized: bytes):
    """A serialized feature record -> (VideoRef, fingerprint, (video_id, ModelInput))."""
    from beam_jobs.matching import VideoRef
    from tfrecords_schema import decode_video_record

    record = decode_video_record(serialized)
    ref = VideoRef(video_id=record.video_id, uri=record.uri, label=record.label)
    return ref, record.fingerprint, (record.video_id, ModelInput(record.features, record.mask))


@dataclasses.dataclass(frozen=True)
class LabellingModel:
    """What the labelling job's launcher needs of its model (the workers load their own copy): the spec its
    records must match, its labels and id, how rows are decided, and the RunInference handler."""

    spec: object  # tfrecords_schema.RecordSpec
    labels: tuple[str, ...]
    model_id: str
    fmt: RowFormat
    handler: KeyedModelHandler


def load_labelling_model(args) -> LabellingModel:
    """Load and check `args.model` (TensorFlow is imported here, its start-up notes muted)."""
    from common.cli import quiet_tensorflow

    quiet_tensorflow()
    from model.export import load_model_dir

    loaded = load_model_dir(args.model)
    labels = tuple(loaded.labels)
    fmt = RowFormat(labels, loaded.model_id, min(args.top_k, len(labels)), args.min_confidence)
    handler = KeyedModelHandler(VideoClassifierHandler(args.model, args.classifier_batch_size, args.large_model))
    return LabellingModel(loaded.spec, labels, loaded.model_id, fmt, handler)
