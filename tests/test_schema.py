"""Encode/decode round trip of the record contract, malformed records, and the tf.data reader."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfrecords_schema import (
    RecordError,
    RecordSpec,
    VideoRecord,
    dataset_spec,
    decode_video_record,
    encode_video_record,
    make_dataset,
    make_decoded_dataset,
    pad_features,
    parse_video_record,
    read_record_spec,
    read_vocabulary,
    write_vocabulary,
)
from tfrecords_schema.schema import read_record_embedding


def make_record(video_id="a/v1.avi", label="a", valid=5, length=8, dim=6, backbone="densenet121/random-seed1", seed=0):
    rng = np.random.default_rng(seed)
    return VideoRecord(
        video_id=video_id, uri=f"/data/{video_id}", label=label,
        features=rng.normal(size=(length, dim)).astype(np.float32), num_valid_frames=valid,
        frame_indices=list(range(0, 2 * valid, 2)), source_fps=25.0, decoded_frame_count=40,
        frame_height=240, frame_width=320, backbone_id=backbone, image_size=64, fingerprint="abc123",
    )


def write_records(path, records, encoding="float32"):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(encode_video_record(record, encoding))


def test_round_trip_keeps_every_field_and_zeroes_padding():
    record = make_record()
    decoded = decode_video_record(encode_video_record(record))
    assert decoded.video_id == record.video_id and decoded.uri == record.uri and decoded.label == "a"
    np.testing.assert_array_equal(decoded.features[:5], record.features[:5])
    assert not decoded.features[5:].any()
    assert decoded.num_valid_frames == 5 and list(decoded.mask) == [1] * 5 + [0] * 3
    assert decoded.frame_indices == [0, 2, 4, 6, 8]
    assert (decoded.source_fps, decoded.decoded_frame_count) == (25.0, 40)
    assert (decoded.frame_height, decoded.frame_width, decoded.image_size) == (240, 320, 64)
    assert decoded.backbone_id == record.backbone_id and decoded.fingerprint == "abc123"
    assert decoded.sampling == "uniform"


@pytest.mark.parametrize("encoding", ["float32", "float16"])
def test_records_are_tensorflows_own_messages_written_without_it(encoding):
    from tfrecords_schema import schema

    serialized = encode_video_record(make_record(), encoding)
    # TensorFlow's own SequenceExample reads every kind of field where it expects it, and writes the very same
    # bytes back.
    parsed = tf.train.SequenceExample.FromString(serialized)
    context = parsed.context.feature
    assert context[schema.NUM_VALID_FRAMES_KEY].int64_list.value == [5]
    assert context[schema.VIDEO_ID_KEY].bytes_list.value == [b"a/v1.avi"]
    assert context[schema.SOURCE_FPS_KEY].float_list.value == [25.0]
    assert [f.int64_list.value[0] for f in parsed.feature_lists.feature_list[schema.FRAME_MASK_KEY].feature] == [
        1] * 5 + [0] * 3
    assert parsed.SerializeToString(deterministic=True) == serialized
    script = ("import sys, numpy as np; from tfrecords_schema import VideoRecord, encode_video_record, read_record_spec; "
              "r = VideoRecord(video_id='v', uri='u', label='a', features=np.ones((2, 3), np.float32), "
              "num_valid_frames=1, frame_indices=[0], source_fps=25.0, decoded_frame_count=2, frame_height=8, "
              f"frame_width=8, backbone_id='b', image_size=8); read_record_spec(encode_video_record(r, {encoding!r})); "
              "print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_float16_encoding_is_smaller_and_close():
    record = make_record(dim=64)
    small, full = encode_video_record(record, "float16"), encode_video_record(record)
    assert len(small) < 0.7 * len(full)
    decoded = decode_video_record(small)
    np.testing.assert_allclose(decoded.features[:5], record.features[:5], atol=2e-3, rtol=1e-3)
    assert read_record_spec(small).feature_encoding == "float16"


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(num_valid_frames=0), "num_valid_frames"),
        (dict(num_valid_frames=9), "num_valid_frames"),
        (dict(frame_indices=[1, 2]), "one sampled frame index per valid frame"),
        (dict(features=np.zeros((8,), np.float32)), "must be [T, D]"),
        (dict(video_id=""), "^video_id must not be empty$"),
    ],
)
def test_invalid_records_are_refused(change, message):
    record = make_record()
    for key, value in change.items():
        setattr(record, key, value)
    with pytest.raises(RecordError, match=message.replace("[", r"\[").replace("]", r"\]")):
        encode_video_record(record)


def test_every_frame_may_be_valid_and_one_is_enough():
    for valid in (1, 8):  # 8 frames of 6 features: the frame count, not the feature dim, bounds it
        record = make_record(valid=valid)
        assert decode_video_record(encode_video_record(record)).num_valid_frames == valid


def test_pad_features_pads_with_zeros_and_a_mask():
    features = np.arange(6, dtype=np.float64).reshape(3, 2)
    padded, mask = pad_features(features, 5)
    assert padded.dtype == np.float32 and padded.shape == (5, 2)
    np.testing.assert_array_equal(padded, [[0, 1], [2, 3], [4, 5], [0, 0], [0, 0]])
    assert mask.tolist() == [True, True, True, False, False]
    full, mask = pad_features(features, 3)
    assert full.shape == (3, 2) and mask.all()
    one, mask = pad_features(features[:1], 3)  # a single frame is a video too
    assert one[0].tolist() == [0, 1] and mask.tolist() == [True, False, False]
    for bad in (np.zeros((0, 2)), np.zeros((6, 2)), np.zeros(3), np.zeros((3, 2, 1))):
        with pytest.raises(RecordError) as error:
            pad_features(bad, 5)
        assert str(error.value) == f"frame features must be [n, D] with 1 <= n <= 5, got {bad.shape}"


def test_nan_features_are_refused():
    record = make_record()
    record.features[1, 1] = np.nan
    with pytest.raises(RecordError, match="NaN"):
        encode_video_record(record)


def test_padding_rows_may_hold_anything_and_are_written_as_zeros():
    record = make_record()
    record.features[6, 2] = np.nan  # past the 5 valid frames: padding, whatever it holds
    decoded = decode_video_record(encode_video_record(record))
    assert not decoded.features[5:].any() and np.isfinite(decoded.features).all()


def test_an_unknown_feature_encoding_or_schema_version_is_refused():
    with pytest.raises(RecordError, match=r"feature encoding must be one of \('float32', 'float16'\), got 'int8'"):
        encode_video_record(make_record(), "int8")
    example = tf.train.SequenceExample.FromString(encode_video_record(make_record()))
    example.context.feature["schema/version"].int64_list.value[:] = [2]
    with pytest.raises(RecordError, match=r"^schema version 2 is not supported \(this code reads 1\)$"):
        read_record_spec(example.SerializeToString())


def test_the_spec_of_a_record_is_read_from_its_context():
    record = make_record(backbone="densenet121/random-seed4")
    record.sampling = "keyframes"
    serialized = encode_video_record(record, "float16")
    assert read_record_spec(serialized) == RecordSpec(feature_dim=6, max_seq_length=8,
                                                      backbone_id="densenet121/random-seed4", image_size=64,
                                                      sampling="keyframes", feature_encoding="float16", schema_version=1)
    assert decode_video_record(serialized).sampling == "keyframes"
    parsed = parse_video_record(tf.constant(serialized), read_record_spec(serialized))
    assert parsed["backbone_id"].numpy() == b"densenet121/random-seed4" and parsed["video_id"].numpy() == b"a/v1.avi"
    assert parsed["mask"].numpy().tolist() == [True] * 5 + [False] * 3


def test_optional_context_keys_may_be_missing():
    from tfrecords_schema.schema import (FEATURE_ENCODING_KEY, VIDEO_FINGERPRINT_KEY, VIDEO_LABEL_KEY,
                                         VIDEO_URI_KEY)

    example = tf.train.SequenceExample.FromString(encode_video_record(make_record()))
    for key in (FEATURE_ENCODING_KEY, VIDEO_URI_KEY, VIDEO_LABEL_KEY, VIDEO_FINGERPRINT_KEY):
        del example.context.feature[key]
    serialized = example.SerializeToString()
    assert read_record_spec(serialized).feature_encoding == "float32"  # records from before the key existed
    decoded = decode_video_record(serialized)
    assert (decoded.uri, decoded.label, decoded.fingerprint, decoded.video_id) == ("", "", "", "a/v1.avi")


def test_malformed_bytes_are_a_record_error():
    with pytest.raises(RecordError, match="not a SequenceExample"):
        read_record_spec(b"\x00garbage\xff" * 5)
    with pytest.raises(RecordError, match="schema/version"):
        read_record_spec(tf.train.SequenceExample().SerializeToString())


def test_make_dataset_batches_labels_and_masks(tmp_path):
    records = [make_record(f"{label}/v{i}.avi", label, valid=3 + i, seed=i) for i in range(3) for label in "ab"]
    write_records(tmp_path / "s0.tfrecord", records[:3])
    write_records(tmp_path / "s1.tfrecord", records[3:])
    ds = make_dataset(str(tmp_path / "*.tfrecord"), vocabulary=["a", "b"], batch_size=4)
    batches = list(ds)
    features, mask = batches[0][0]
    assert features.shape == (4, 8, 6) and features.dtype == tf.float32 and mask.dtype == tf.bool
    labels = np.concatenate([b[1].numpy() for b in batches])
    masks = np.concatenate([b[0][1].numpy() for b in batches])
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert sorted(masks.sum(axis=1).tolist()) == [3, 3, 4, 4, 5, 5]


def test_unknown_label_fails_with_its_name(tmp_path):
    write_records(tmp_path / "s.tfrecord", [make_record(label="zebra")])
    with pytest.raises(tf.errors.InvalidArgumentError, match="zebra"):
        list(make_dataset(str(tmp_path / "s.tfrecord"), vocabulary=["a"], batch_size=1))


def test_shards_of_different_dims_or_backbones_are_refused(tmp_path):
    write_records(tmp_path / "s0.tfrecord", [make_record()])
    write_records(tmp_path / "s1.tfrecord", [make_record(dim=7)])
    with pytest.raises(RecordError, match=r"feature_dim 7 \(expected 6\)"):
        make_dataset(str(tmp_path / "*.tfrecord"))
    write_records(tmp_path / "s1.tfrecord", [make_record(backbone="densenet121/imagenet")])
    with pytest.raises(RecordError, match="backbone_id"):
        dataset_spec([str(tmp_path / "s0.tfrecord"), str(tmp_path / "s1.tfrecord")])


def test_a_mismatched_record_inside_a_shard_fails_in_the_graph(tmp_path):
    write_records(tmp_path / "s.tfrecord", [make_record(), make_record("b/x.avi", length=9)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"record frame count differs from the dataset\\?'s "
                                                             r"\(8\); video id and value:\] \[b/x.avi\] \[9\]"):
        list(make_decoded_dataset(str(tmp_path / "s.tfrecord")))


def test_a_record_of_another_feature_dim_inside_a_float16_shard_fails_in_the_graph(tmp_path):
    # float16 frames are byte strings, so only the context check can see the dim (float32 ones fail to parse).
    write_records(tmp_path / "s.tfrecord", [make_record(), make_record("b/x.avi", dim=7)], "float16")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"record feature dim differs from the dataset\\?'s "
                                                             r"\(6\); video id and value:\] \[b/x.avi\] \[7\]"):
        list(make_decoded_dataset(str(tmp_path / "s.tfrecord")))


@pytest.mark.parametrize("change, what", [
    ({"backbone_id": "densenet121/imagenet"}, "backbone"),
    ({"image_size": 128}, "image size"),
    ({"sampling": "keyframes"}, "sampling"),
])
def test_a_record_inside_a_shard_that_differs_only_in_backbone_image_size_or_sampling_fails(tmp_path, change, what):
    """The same shape as the first record (so no shape check can notice): only the per-record check does."""
    import dataclasses

    other = dataclasses.replace(make_record("b/x.avi", seed=1), **change)
    write_records(tmp_path / "s.tfrecord", [make_record(), other])
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"record {what} differs from the dataset.*b/x.avi"):
        list(make_decoded_dataset(str(tmp_path / "s.tfrecord")))
    write_records(tmp_path / "s.tfrecord", [make_record(), make_record("b/x.avi", seed=1)])
    assert len(list(make_decoded_dataset(str(tmp_path / "s.tfrecord")))) == 2


def test_no_match_and_corrupt_shard_are_record_errors(tmp_path):
    with pytest.raises(RecordError, match="no feature records match"):
        make_dataset(str(tmp_path / "none-*.tfrecord"))
    (tmp_path / "bad.tfrecord").write_bytes(b"not a tfrecord file at all, just text" * 3)
    with pytest.raises(RecordError, match="not a readable TFRecord"):
        make_dataset(str(tmp_path / "bad.tfrecord"))


def test_vocabulary_round_trip(tmp_path):
    path = str(tmp_path / "labels.txt")
    assert write_vocabulary(path, ["b", "a", "b", ""]) == ["a", "b"]
    assert read_vocabulary(path) == ["a", "b"]
    with pytest.raises(RecordError, match="comma"):
        write_vocabulary(path, ["a,b"])
    with pytest.raises(RecordError, match="does not exist"):
        read_vocabulary(str(tmp_path / "missing.txt"))


def test_records_say_which_engine_made_their_features():
    from tfrecords_schema.schema import CALIBRATION_KEY, ENGINE_KEY, ENGINE_VERSION_KEY, PRECISION_KEY

    record = make_record(backbone="densenet121/random-seed1+int8")
    record.engine, record.engine_version, record.precision, record.calibration = (
        "openvino", "2026.4.1", "int8", "0123456789abcdef")
    serialized = encode_video_record(record, "float16")
    decoded = decode_video_record(serialized)
    assert (decoded.engine, decoded.engine_version, decoded.precision, decoded.calibration) == (
        "openvino", "2026.4.1", "int8", "0123456789abcdef")
    assert decoded.backbone_id == "densenet121/random-seed1+int8"
    context = tf.train.SequenceExample.FromString(serialized).context.feature
    assert context[ENGINE_KEY].bytes_list.value == [b"openvino"]
    assert context[PRECISION_KEY].bytes_list.value == [b"int8"]
    assert context[ENGINE_VERSION_KEY].bytes_list.value == [b"2026.4.1"]
    assert context[CALIBRATION_KEY].bytes_list.value == [b"0123456789abcdef"]
    assert read_record_embedding(serialized) == {"engine": "openvino", "engine_version": "2026.4.1",
                                                 "precision": "int8", "calibration": "0123456789abcdef"}


def test_records_written_before_engines_were_recorded_still_read():
    from tfrecords_schema.schema import CALIBRATION_KEY, ENGINE_KEY, ENGINE_VERSION_KEY, PRECISION_KEY

    record = make_record()
    record.engine, record.precision = "tensorflow", "f32"
    example = tf.train.SequenceExample.FromString(encode_video_record(record))
    for key in (ENGINE_KEY, ENGINE_VERSION_KEY, PRECISION_KEY, CALIBRATION_KEY):
        del example.context.feature[key]
    old = example.SerializeToString()
    decoded = decode_video_record(old)
    assert (decoded.engine, decoded.engine_version, decoded.precision, decoded.calibration) == ("", "", "", "")
    np.testing.assert_array_equal(decoded.features[:5], record.features[:5])
    assert read_record_spec(old) == read_record_spec(encode_video_record(record))
    assert read_record_embedding(old) == {"engine": "", "engine_version": "", "precision": "", "calibration": ""}


def test_int8_records_are_refused_beside_float_records_of_the_same_network(tmp_path):
    from tfrecords_schema import RecordSpec

    write_records(tmp_path / "float.tfrecord", [make_record(backbone="densenet121/random-seed1")])
    write_records(tmp_path / "int8.tfrecord", [make_record(backbone="densenet121/random-seed1+int8")])
    with pytest.raises(RecordError, match=r"backbone_id 'densenet121/random-seed1\+int8'.*int8 and float "
                                          r"features of one network are different feature spaces"):
        dataset_spec([str(tmp_path / "float.tfrecord"), str(tmp_path / "int8.tfrecord")])
    # A model trained on float features is given int8 records (and the other way round).
    float_spec = read_record_spec(encode_video_record(make_record(backbone="densenet121/random-seed1")))
    with pytest.raises(RecordError, match="embed with --precision f32 or bf16"):
        make_dataset(str(tmp_path / "int8.tfrecord"), spec=float_spec)
    int8_spec = RecordSpec(**{**float_spec.__dict__, "backbone_id": "densenet121/random-seed1+int8"})
    with pytest.raises(RecordError, match="embed with --precision int8"):
        make_dataset(str(tmp_path / "float.tfrecord"), spec=int8_spec)
    # Engines and precisions that share a backbone id mix freely.
    bf16 = make_record(backbone="densenet121/random-seed1", seed=3)
    bf16.engine, bf16.precision = "openvino", "bf16"
    write_records(tmp_path / "int8.tfrecord", [bf16])
    assert dataset_spec([str(tmp_path / "float.tfrecord"), str(tmp_path / "int8.tfrecord")]) == float_spec
