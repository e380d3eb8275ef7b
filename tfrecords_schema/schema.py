"""The feature-record contract: one `tf.train.SequenceExample` per video.

Context (one value per video) says what a reader needs to trust the record; the feature lists hold one
frame-feature vector and one mask bit per time step, padded to a fixed length. Every key is defined here
once. Encoding (`encode_video_record`) and decoding (`parse_video_record`, `decode_video_record`) sit side
by side; turning decoded tensors into model inputs lives in `tfrecords_schema.dataset`.

Frame features are stored either as a float list (`float32`, the default) or, for compact storage, as one
raw little-endian byte string per frame (`float16`); `FEATURE_ENCODING` names which.

Which engine made the features (`backbone/engine`, its version, its precision, and for int8 a digest of the
calibration frames) is recorded in every record; records written before these keys existed decode with
empty strings there (they were all made by the TensorFlow engine in float32). Engines whose features agree
within the tolerance tests/test_engines.py checks share a backbone id; int8 features are another feature
space, so their backbone id ends in `INT8_BACKBONE_SUFFIX` and a dataset or model of float features refuses
them (`RecordSpec.mismatches`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from tfrecords_schema import example_pb

SCHEMA_VERSION = 1

# Context keys.
SCHEMA_VERSION_KEY = "schema/version"
VIDEO_ID_KEY = "video/id"
VIDEO_URI_KEY = "video/uri"
VIDEO_LABEL_KEY = "video/label"
VIDEO_FINGERPRINT_KEY = "video/fingerprint"
NUM_VALID_FRAMES_KEY = "video/num_valid_frames"
FRAME_INDICES_KEY = "video/sampled_frame_indices"
SAMPLING_KEY = "video/sampling"
SOURCE_FPS_KEY = "video/source_fps"
DECODED_FRAME_COUNT_KEY = "video/decoded_frame_count"
FRAME_HEIGHT_KEY = "video/frame_height"
FRAME_WIDTH_KEY = "video/frame_width"
FEATURE_DIM_KEY = "features/dim"
MAX_SEQ_LENGTH_KEY = "features/max_seq_length"
FEATURE_ENCODING_KEY = "features/encoding"
BACKBONE_ID_KEY = "backbone/id"
IMAGE_SIZE_KEY = "backbone/image_size"
ENGINE_KEY = "backbone/engine"  # "tensorflow" or "openvino"
ENGINE_VERSION_KEY = "backbone/engine_version"
PRECISION_KEY = "backbone/precision"  # "f32", "bf16" or "int8"
CALIBRATION_KEY = "backbone/calibration"  # int8: digest of the calibration frames; "" otherwise

# Feature-list keys.
FRAME_FEATURES_KEY = "frames/features"  # float_list per step (float32 encoding)
FRAME_FEATURES_BYTES_KEY = "frames/features_bytes"  # bytes_list per step (float16 encoding)
FRAME_MASK_KEY = "frames/mask"  # int64 per step: 1 = real frame, 0 = padding

FEATURE_ENCODINGS = ("float32", "float16")

# The backbone id of features from an int8-quantised backbone: `<backbone id>+int8`.
INT8_BACKBONE_SUFFIX = "+int8"


class RecordError(ValueError):
    """A record, or a set of records, that does not fit the contract."""


@dataclasses.dataclass(frozen=True)
class RecordSpec:
    """What every record of one dataset must agree on, so a model can trust them together."""

    feature_dim: int
    max_seq_length: int
    backbone_id: str
    image_size: int
    sampling: str = "uniform"
    feature_encoding: str = "float32"
    schema_version: int = SCHEMA_VERSION

    def mismatches(self, other: "RecordSpec") -> list[str]:
        """Human-readable differences that make `other` unusable beside `self` (encoding may differ)."""
        out = []
        for name in ("feature_dim", "max_seq_length", "backbone_id", "image_size", "sampling", "schema_version"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                out.append(f"{name} {theirs!r} (expected {mine!r})")
        mine, theirs = self.backbone_id, other.backbone_id
        if mine != theirs and mine.removesuffix(INT8_BACKBONE_SUFFIX) == theirs.removesuffix(INT8_BACKBONE_SUFFIX):
            wanted = "int8" if mine.endswith(INT8_BACKBONE_SUFFIX) else "f32 or bf16"
            out.append(f"int8 and float features of one network are different feature spaces: embed with "
                       f"--precision {wanted}")
        return out


@dataclasses.dataclass
class VideoRecord:
    """One video's features and provenance, in NumPy form.

    `features` is `[max_seq_length, feature_dim]` float32, rows past `num_valid_frames` are padding (their
    content is meaningless; the mask says which rows are real). `frame_indices` are the decoded-frame
    indices of the valid rows.
    """

    video_id: str
    uri: str
    label: str
    features: np.ndarray
    num_valid_frames: int
    frame_indices: Sequence[int]
    source_fps: float
    decoded_frame_count: int
    frame_height: int
    frame_width: int
    backbone_id: str
    image_size: int
    sampling: str = "uniform"
    fingerprint: str = ""
    engine: str = ""  # what made the features; "" in records written before engines were recorded
    engine_version: str = ""
    precision: str = ""
    calibration: str = ""

    @property
    def mask(self) -> np.ndarray:
        """`[max_seq_length]` bool: True for real frames, False for padding."""
        return np.arange(self.features.shape[0]) < self.num_valid_frames

    @property
    def spec(self) -> RecordSpec:
        return RecordSpec(
            feature_dim=int(self.features.shape[1]),
            max_seq_length=int(self.features.shape[0]),
            backbone_id=self.backbone_id,
            image_size=int(self.image_size),
            sampling=self.sampling,
        )


def pad_features(features: np.ndarray, max_seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    """`[n, D]` features of a video's `n` sampled frames -> (`[max_seq_length, D]` float32 padded with zeros,
    `[max_seq_length]` bool mask, True for the `n` real frames). Padding is explicit: the mask, never the
    zeros, says which rows are real."""
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or not 0 < len(features) <= max_seq_length:
        raise RecordError(f"frame features must be [n, D] with 1 <= n <= {max_seq_length}, got {features.shape}")
    padded = np.zeros((max_seq_length, features.shape[1]), np.float32)
    padded[: len(features)] = features
    return padded, np.arange(max_seq_length) < len(features)


def _bytes(values: Sequence[bytes]):
    return example_pb.Feature(bytes_list=example_pb.BytesList(value=list(values)))


def _ints(values: Sequence[int]):
    return example_pb.Feature(int64_list=example_pb.Int64List(value=[int(v) for v in values]))


def _floats(values):
    return example_pb.Feature(float_list=example_pb.FloatList(value=values))


def validate_video_record(record: VideoRecord) -> None:
    """Raise RecordError naming the bad value if `record` breaks the contract."""
    features = np.asarray(record.features)
    if features.ndim != 2:
        raise RecordError(f"frame features must be [T, D], got shape {features.shape}")
    length = features.shape[0]
    if not 0 < record.num_valid_frames <= length:
        raise RecordError(f"num_valid_frames must be in 1..{length}, got {record.num_valid_frames}")
    if len(record.frame_indices) != record.num_valid_frames:
        raise RecordError(
            f"need one sampled frame index per valid frame ({record.num_valid_frames}), "
            f"got {len(record.frame_indices)}"
        )
    if not np.all(np.isfinite(features[: record.num_valid_frames])):
        raise RecordError(f"frame features of {record.video_id!r} contain NaN or infinity")
    if not record.video_id:
        raise RecordError("video_id must not be empty")


def encode_video_record(record: VideoRecord, feature_encoding: str = "float32") -> bytes:
    """Serialize `record` as a SequenceExample (without TensorFlow: tfrecords_schema.example_pb). Padding rows are
    written as zeros."""
    if feature_encoding not in FEATURE_ENCODINGS:
        raise RecordError(f"feature encoding must be one of {FEATURE_ENCODINGS}, got {feature_encoding!r}")
    validate_video_record(record)
    features = np.asarray(record.features, np.float32).copy()
    features[record.num_valid_frames :] = 0.0
    context = {
        SCHEMA_VERSION_KEY: _ints([SCHEMA_VERSION]),
        VIDEO_ID_KEY: _bytes([record.video_id.encode()]),
        VIDEO_URI_KEY: _bytes([record.uri.encode()]),
        VIDEO_LABEL_KEY: _bytes([record.label.encode()]),
        VIDEO_FINGERPRINT_KEY: _bytes([record.fingerprint.encode()]),
        NUM_VALID_FRAMES_KEY: _ints([record.num_valid_frames]),
        FRAME_INDICES_KEY: _ints(record.frame_indices),
        SAMPLING_KEY: _bytes([record.sampling.encode()]),
        SOURCE_FPS_KEY: _floats([float(record.source_fps)]),
        DECODED_FRAME_COUNT_KEY: _ints([record.decoded_frame_count]),
        FRAME_HEIGHT_KEY: _ints([record.frame_height]),
        FRAME_WIDTH_KEY: _ints([record.frame_width]),
        FEATURE_DIM_KEY: _ints([features.shape[1]]),
        MAX_SEQ_LENGTH_KEY: _ints([features.shape[0]]),
        FEATURE_ENCODING_KEY: _bytes([feature_encoding.encode()]),
        BACKBONE_ID_KEY: _bytes([record.backbone_id.encode()]),
        IMAGE_SIZE_KEY: _ints([record.image_size]),
        ENGINE_KEY: _bytes([record.engine.encode()]),
        ENGINE_VERSION_KEY: _bytes([record.engine_version.encode()]),
        PRECISION_KEY: _bytes([record.precision.encode()]),
        CALIBRATION_KEY: _bytes([record.calibration.encode()]),
    }
    if feature_encoding == "float32":
        frames_key = FRAME_FEATURES_KEY
        steps = [_floats(row.tolist()) for row in features]  # FloatList takes a list ~4x faster than a NumPy row
    else:
        frames_key = FRAME_FEATURES_BYTES_KEY
        steps = [_bytes([row.astype("<f2").tobytes()]) for row in features]
    feature_lists = {
        frames_key: example_pb.FeatureList(feature=steps),
        FRAME_MASK_KEY: example_pb.FeatureList(feature=[_ints([int(m)]) for m in record.mask]),
    }
    example = example_pb.SequenceExample(
        context=example_pb.Features(feature=context),
        feature_lists=example_pb.FeatureLists(feature_list=feature_lists),
    )
    return example.SerializeToString(deterministic=True)


def _context_value(context, key: str, kind: str, required: bool = True):
    feature = context.feature.get(key)
    values = list(getattr(feature, kind).value) if feature is not None else []
    if not values:
        if required:
            raise RecordError(f"record has no {key!r}")
        return None
    return values


def read_record_spec(serialized: bytes) -> RecordSpec:
    """The spec of one serialized record, read in Python (cheap: no TensorFlow)."""
    try:
        example = example_pb.SequenceExample.FromString(serialized)
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise RecordError(f"not a SequenceExample: {exc}") from None
    context = example.context
    version = _context_value(context, SCHEMA_VERSION_KEY, "int64_list")[0]
    if version != SCHEMA_VERSION:
        raise RecordError(f"schema version {version} is not supported (this code reads {SCHEMA_VERSION})")
    encoding = _context_value(context, FEATURE_ENCODING_KEY, "bytes_list", required=False)
    return RecordSpec(
        feature_dim=_context_value(context, FEATURE_DIM_KEY, "int64_list")[0],
        max_seq_length=_context_value(context, MAX_SEQ_LENGTH_KEY, "int64_list")[0],
        backbone_id=_context_value(context, BACKBONE_ID_KEY, "bytes_list")[0].decode(),
        image_size=_context_value(context, IMAGE_SIZE_KEY, "int64_list")[0],
        sampling=_context_value(context, SAMPLING_KEY, "bytes_list")[0].decode(),
        feature_encoding=encoding[0].decode() if encoding else "float32",
        schema_version=version,
    )


EMBEDDING_KEYS = {"engine": ENGINE_KEY, "engine_version": ENGINE_VERSION_KEY, "precision": PRECISION_KEY,
                  "calibration": CALIBRATION_KEY}


def read_record_embedding(serialized: bytes) -> dict[str, str]:
    """What made one serialized record's features: `engine`, `engine_version`, `precision`, `calibration`
    ("" where the record does not say: records written before engines were recorded)."""
    context = example_pb.SequenceExample.FromString(serialized).context
    found = {name: _context_value(context, key, "bytes_list", required=False) for name, key in EMBEDDING_KEYS.items()}
    return {name: values[0].decode() if values else "" for name, values in found.items()}


def decode_video_record(serialized: bytes) -> VideoRecord:
    """Parse one record into NumPy form (the inverse of `encode_video_record`)."""
    import tensorflow as tf

    spec = read_record_spec(serialized)
    parsed = parse_video_record(tf.constant(serialized), spec)
    context = tf.train.SequenceExample.FromString(serialized).context

    def one(key, kind):
        return _context_value(context, key, kind)[0]

    def text(key):  # optional: absent from records written before the key existed
        values = _context_value(context, key, "bytes_list", required=False)
        return values[0].decode() if values else ""

    return VideoRecord(
        video_id=parsed["video_id"].numpy().decode(),
        uri=parsed["uri"].numpy().decode(),
        label=parsed["label"].numpy().decode(),
        features=parsed["features"].numpy(),
        num_valid_frames=int(parsed["num_valid_frames"].numpy()),
        frame_indices=[int(i) for i in _context_value(context, FRAME_INDICES_KEY, "int64_list")],
        source_fps=float(one(SOURCE_FPS_KEY, "float_list")),
        decoded_frame_count=int(one(DECODED_FRAME_COUNT_KEY, "int64_list")),
        frame_height=int(one(FRAME_HEIGHT_KEY, "int64_list")),
        frame_width=int(one(FRAME_WIDTH_KEY, "int64_list")),
        backbone_id=one(BACKBONE_ID_KEY, "bytes_list").decode(),
        image_size=int(one(IMAGE_SIZE_KEY, "int64_list")),
        sampling=one(SAMPLING_KEY, "bytes_list").decode(),
        fingerprint=parsed["fingerprint"].numpy().decode(),
        engine=text(ENGINE_KEY),
        engine_version=text(ENGINE_VERSION_KEY),
        precision=text(PRECISION_KEY),
        calibration=text(CALIBRATION_KEY),
    )


def _assert_context_equal(video_id: tf.Tensor, found: tf.Tensor, expected, what: str) -> tf.Operation:
    """Graph assertion that names the record and both values when a record disagrees with its dataset."""
    import tensorflow as tf

    return tf.debugging.Assert(
        tf.equal(found, tf.constant(expected, found.dtype)),
        [f"record {what} differs from the dataset's ({expected}); video id and value:", video_id, found],
    )


def parse_video_record(serialized: tf.Tensor, spec: RecordSpec) -> dict[str, tf.Tensor]:
    """Graph-mode parse of one serialized record (bytes -> tensors), checked against `spec`.

    Returns a dict: `features` `[T, D]` float32, `mask` `[T]` bool (True = real frame), `num_valid_frames`
    int64 scalar, `video_id`, `uri`, `label`, `fingerprint` string scalars, `backbone_id` string scalar.
    A record whose shape, backbone, image size or sampling differs from `spec` fails with InvalidArgumentError
    naming it: every record is checked, not only a shard's first.
    """
    import tensorflow as tf

    context_spec = {
        VIDEO_ID_KEY: tf.io.FixedLenFeature([], tf.string),
        VIDEO_URI_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        VIDEO_LABEL_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        VIDEO_FINGERPRINT_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        NUM_VALID_FRAMES_KEY: tf.io.FixedLenFeature([], tf.int64),
        FEATURE_DIM_KEY: tf.io.FixedLenFeature([], tf.int64),
        MAX_SEQ_LENGTH_KEY: tf.io.FixedLenFeature([], tf.int64),
        BACKBONE_ID_KEY: tf.io.FixedLenFeature([], tf.string),
        IMAGE_SIZE_KEY: tf.io.FixedLenFeature([], tf.int64),
        SAMPLING_KEY: tf.io.FixedLenFeature([], tf.string),
    }
    if spec.feature_encoding == "float32":
        frames_key = FRAME_FEATURES_KEY
        frames_spec = tf.io.FixedLenSequenceFeature([spec.feature_dim], tf.float32)
    else:
        frames_key = FRAME_FEATURES_BYTES_KEY
        frames_spec = tf.io.FixedLenSequenceFeature([], tf.string)
    sequence_spec = {frames_key: frames_spec, FRAME_MASK_KEY: tf.io.FixedLenSequenceFeature([], tf.int64)}
    context, sequence = tf.io.parse_single_sequence_example(
        serialized, context_features=context_spec, sequence_features=sequence_spec
    )
    video_id = context[VIDEO_ID_KEY]
    checks = [
        _assert_context_equal(video_id, context[FEATURE_DIM_KEY], spec.feature_dim, "feature dim"),
        _assert_context_equal(video_id, context[MAX_SEQ_LENGTH_KEY], spec.max_seq_length, "frame count"),
        _assert_context_equal(video_id, context[BACKBONE_ID_KEY], spec.backbone_id, "backbone"),
        _assert_context_equal(video_id, context[IMAGE_SIZE_KEY], spec.image_size, "image size"),
        _assert_context_equal(video_id, context[SAMPLING_KEY], spec.sampling, "sampling"),
    ]
    with tf.control_dependencies(checks):
        if spec.feature_encoding == "float32":
            features = tf.identity(sequence[frames_key])
        else:
            raw = tf.io.decode_raw(sequence[frames_key], tf.float16, little_endian=True)
            features = tf.cast(raw, tf.float32)
        features = tf.ensure_shape(features, [spec.max_seq_length, spec.feature_dim])
        mask = tf.ensure_shape(tf.cast(sequence[FRAME_MASK_KEY], tf.bool), [spec.max_seq_length])
    return {
        "features": features,
        "mask": mask,
        "num_valid_frames": context[NUM_VALID_FRAMES_KEY],
        "video_id": video_id,
        "uri": context[VIDEO_URI_KEY],
        "label": context[VIDEO_LABEL_KEY],
        "fingerprint": context[VIDEO_FINGERPRINT_KEY],
        "backbone_id": context[BACKBONE_ID_KEY],
    }
