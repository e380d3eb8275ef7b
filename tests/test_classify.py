"""beam_jobs.classify: the classifier's inputs (padding, mask) and its RunInference model handler."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.classify import ModelInput, VideoClassifierHandler, record_model_input, video_model_input
from beam_jobs.decode import FrameOptions, Video
from beam_jobs.matching import VideoRef
from beam_jobs.records import encode_video
from tfrecords_schema import RecordError
from video.frames import SampledFrames

TestPipeline.__test__ = False  # a Beam class, not a test class for pytest to collect


def embedded(video_id: str, features: np.ndarray, uri: str | None = None, label: str = "") -> Video:
    sampled = SampledFrames(frames=None, frame_indices=list(range(len(features))), decoded_frame_count=len(features),
                            source_fps=30.0, frame_height=64, frame_width=64)
    return Video(ref=VideoRef(video_id, uri or f"/v/{video_id}", label), fingerprint="f" * 64, sampled=sampled,
                 features=features)


class RecordingModel:
    """Stands in for the Keras classifier: remembers each batch and returns a fixed distribution per row,
    made from the features so that rows can be told apart."""

    def __init__(self):
        self.calls = []

    def predict_on_batch(self, inputs):
        self.calls.append(inputs)
        first = inputs["features"][:, 0, 0]
        valid = inputs["mask"].sum(axis=1)
        return np.stack([first, valid.astype(np.float32), np.ones_like(first)], axis=1)


def test_video_model_input_pads_and_masks():
    features = np.arange(12, dtype=np.float64).reshape(3, 4)
    video_id, model_input = video_model_input(embedded("dir/a.avi", features), max_seq_length=5)
    assert video_id == "dir/a.avi"
    assert model_input.features.shape == (5, 4) and model_input.features.dtype == np.float32
    np.testing.assert_array_equal(model_input.features[:3], features)
    assert not model_input.features[3:].any()
    assert model_input.mask.dtype == bool and model_input.mask.tolist() == [True, True, True, False, False]
    with pytest.raises(RecordError, match=r"got \(6, 4\)"):
        video_model_input(embedded("long.avi", np.ones((6, 4))), max_seq_length=5)


def test_run_inference_stacks_the_batch_and_keeps_each_input_with_its_result():
    handler = VideoClassifierHandler("models/run1", batch_size=8)
    batch = [video_model_input(embedded(name, np.full((n, 4), value)), 5)[1]
             for name, n, value in [("a", 1, 7.0), ("b", 5, 2.0), ("c", 3, -1.0)]]
    model = RecordingModel()
    results = list(handler.run_inference(batch, model))
    (call,) = model.calls
    assert sorted(call) == ["features", "mask"]
    assert call["features"].shape == (3, 5, 4) and call["features"].dtype == np.float32
    assert call["mask"].shape == (3, 5) and call["mask"].dtype == bool
    assert call["mask"].sum(axis=1).tolist() == [1, 5, 3]
    assert [type(r) for r in results] == [PredictionResult] * 3
    assert [r.example for r in results] == batch  # same objects, same order
    assert [r.inference.tolist() for r in results] == [[7.0, 1.0, 1.0], [2.0, 5.0, 1.0], [-1.0, 3.0, 1.0]]
    assert {r.model_id for r in results} == {"models/run1"}


def test_handler_batching_sharing_and_size():
    handler = VideoClassifierHandler("m", batch_size=16)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 16}
    assert handler.share_model_across_processes() is False
    assert VideoClassifierHandler("m", large_model=True).share_model_across_processes() is True
    assert VideoClassifierHandler("m").batch_elements_kwargs()["max_batch_size"] == 64
    item = ModelInput(np.zeros((5, 4), np.float32), np.zeros(5, bool))
    assert handler.get_num_bytes([item, item]) == 2 * (5 * 4 * 4 + 5)


def test_record_model_input_on_an_encoded_record():
    features = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
    video = embedded("Class/v1.avi", features, uri="gs://bucket/Class/v1.avi", label="Class")
    options = FrameOptions(max_seq_length=4, image_size=32)
    serialized = encode_video(video, options, "densenet121/random-seed1", "float32")
    ref, fingerprint, (video_id, model_input) = record_model_input(serialized)
    assert ref == VideoRef("Class/v1.avi", "gs://bucket/Class/v1.avi", "Class")  # size and mtime unknown
    assert fingerprint == "f" * 64 and video_id == "Class/v1.avi"
    assert model_input.features.shape == (4, 6) and model_input.mask.tolist() == [True, True, False, False]
    np.testing.assert_array_equal(model_input.features[:2], features)
    expected_id, expected = video_model_input(video, 4)
    assert video_id == expected_id and np.array_equal(model_input.features, expected.features)
    assert np.array_equal(model_input.mask, expected.mask)


def test_every_record_is_checked_against_the_model_and_a_mismatch_is_a_failure_with_its_reason():
    """predict --features: a shard whose first record fits the model may hold others that do not."""
    from beam_jobs.classify import DecodeRecordDoFn
    from beam_jobs.decode import FAILURES
    from tfrecords_schema import RecordSpec

    options = FrameOptions(max_seq_length=4, image_size=32)
    features = np.ones((2, 6), np.float32)
    fits = encode_video(embedded("a/fits.avi", features), options, "densenet121/random-seed1", "float32")
    other_backbone = encode_video(embedded("a/net.avi", features), options, "densenet121/imagenet", "float32")
    keyframes = encode_video(embedded("a/kf.avi", features), FrameOptions(4, 32, "keyframes"),
                             "densenet121/random-seed1", "float32")
    spec = RecordSpec(6, 4, "densenet121/random-seed1", 32)
    with TestPipeline() as pipeline:
        checked = (pipeline | beam.Create([fits, other_backbone, keyframes])
                   | beam.ParDo(DecodeRecordDoFn(spec)).with_outputs(FAILURES, main="records"))
        assert_that(checked.records | "Ids" >> beam.Map(lambda t: t[0].video_id), equal_to(["a/fits.avi"]),
                    label="Kept")
        assert_that(checked[FAILURES], equal_to([
            ("a/net.avi", "/v/a/net.avi", "the record does not match the model: backbone_id 'densenet121/imagenet' "
                                       "(expected 'densenet121/random-seed1')"),
            ("a/kf.avi", "/v/a/kf.avi", "the record does not match the model: sampling 'keyframes' (expected "
                                     "'uniform')")]), label="Refused")


class StandInHandler(VideoClassifierHandler):
    """The real handler with the model load replaced: the stand-in is built on the worker, like Keras would be."""

    def load_model(self):
        return RecordingModel()


def test_keyed_run_inference_in_a_pipeline():
    inputs = [video_model_input(embedded(name, np.full((n, 4), value)), 5)
              for name, n, value in [("a.avi", 1, 7.0), ("b.avi", 5, 2.0), ("c.avi", 3, -1.0)]]
    with TestPipeline() as pipeline:
        predictions = (pipeline | beam.Create(inputs)
                       | RunInference(KeyedModelHandler(StandInHandler("models/run1", batch_size=2))))
        assert_that(predictions | beam.MapTuple(lambda video_id, result: (
            video_id, result.inference.tolist(), int(result.example.mask.sum()), result.model_id)), equal_to([
                ("a.avi", [7.0, 1.0, 1.0], 1, "models/run1"),
                ("b.avi", [2.0, 5.0, 1.0], 5, "models/run1"),
                ("c.avi", [-1.0, 3.0, 1.0], 3, "models/run1"),
            ]))
