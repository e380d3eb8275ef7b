"""model.engines: each engine's features against TensorFlow fp32 on generated frames (cosine and max-abs
bounds), the conversion cache, static batches with padding, int8 calibration and its backbone id, the
choice `auto` makes, and the fallback and the user error when OpenVINO cannot be imported."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading

import cv2
import numpy as np
import pytest

from common.errors import UserError
from model import engines
from model.engines import EmbedderOptions, make_embedder

IMAGE_SIZE = 64
WEIGHTS = "random:7"

# Features that agree with TensorFlow fp32 this closely share its backbone id (f32 and bf16 do; measured on
# these frames: f32 cosine 0.9999999, max abs 1e-7; bf16 0.999994, max abs 8e-4 of features up to 0.24).
SAME_ID_MIN_COSINE = 0.9999
SAME_ID_MAX_ABS = 0.01  # of the largest reference feature
# int8 is another feature space (measured 0.998, max abs 0.05 of 0.24), but still the same network.
INT8_MIN_COSINE = 0.99
INT8_MAX_ABS = 0.4


def generated_frames(count: int, seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Smooth colour fields with a little noise: closer to video frames than white noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        side = int(rng.integers(2, 9))
        coarse = rng.integers(0, 256, (side, side, 3), np.uint8)
        frame = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        out.append(np.clip(frame + rng.integers(-12, 13, frame.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def agreement(features: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(min cosine over frames, max abs difference / largest reference magnitude)."""
    cosine = (features * reference).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(reference, axis=1)
    return float(cosine.min()), float(np.abs(features - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(engines.CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def frames():
    return generated_frames(24, seed=1)


@pytest.fixture(scope="module")
def calibration():
    return generated_frames(32, seed=2)


@pytest.fixture(scope="module")
def reference(frames):
    return make_embedder(EmbedderOptions(WEIGHTS, IMAGE_SIZE, "tensorflow", "f32"))(frames)


@pytest.fixture(scope="module")
def int8(cache, calibration):
    return make_embedder(EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", "int8"), batch_size=8,
                         calibration_frames=calibration)


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_openvino_float_features_match_tensorflow_fp32_and_share_its_backbone_id(cache, frames, reference, precision):
    if precision == "bf16" and "BF16" not in engines.cpu_capabilities():
        pytest.skip("this CPU has no bf16")
    embedder = make_embedder(EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", precision), batch_size=8)
    features = embedder(frames)
    assert features.shape == (24, 1024) and features.dtype == np.float32
    cosine, max_abs = agreement(features, reference)
    assert cosine >= SAME_ID_MIN_COSINE and max_abs <= SAME_ID_MAX_ABS, (cosine, max_abs)
    if precision == "f32":
        assert cosine >= 0.999999 and max_abs <= 1e-4
    assert embedder.backbone_id == "densenet121/random-seed7"
    assert (embedder.engine, embedder.precision, embedder.calibration) == ("openvino", precision, "")
    assert engines.describe(embedder)["engine_version"] == engines._version()


def test_int8_features_are_close_but_another_feature_space_with_their_own_backbone_id(int8, frames, reference,
                                                                                      calibration):
    features = int8(frames)
    cosine, max_abs = agreement(features, reference)
    assert cosine >= INT8_MIN_COSINE and max_abs <= INT8_MAX_ABS, (cosine, max_abs)
    assert not (cosine >= SAME_ID_MIN_COSINE and max_abs <= SAME_ID_MAX_ABS)  # hence the id of its own
    assert int8.backbone_id == "densenet121/random-seed7+int8"
    assert int8.precision == "int8" and int8.calibration == engines.calibration_digest(calibration)


def test_int8_calibration_is_deterministic(int8, frames, calibration, tmp_path, monkeypatch):
    """Calibrated again from scratch (another cache) on the same frames: the same network, bit for bit."""
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path))
    again = make_embedder(EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", "int8"), batch_size=8,
                          calibration_frames=calibration.copy())
    np.testing.assert_array_equal(again(frames), int8(frames))
    other = make_embedder(EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", "int8"), batch_size=8,
                          calibration_frames=generated_frames(32, seed=3))
    assert other.calibration != int8.calibration
    # Another calibration set of the same kind of frames agrees with it better than int8 agrees with fp32.
    cosine, _ = agreement(other(frames), int8(frames))
    assert cosine >= 0.999


def test_int8_calibration_frames_from_a_file(cache, calibration, frames, int8, tmp_path):
    path = str(tmp_path / "calibration.npy")
    digest = engines.save_calibration(path, calibration)
    assert digest == int8.calibration
    np.testing.assert_array_equal(engines.load_calibration(path, IMAGE_SIZE), calibration)
    from_file = make_embedder(EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", "int8", calibration=path),
                              batch_size=8)
    np.testing.assert_array_equal(from_file(frames), int8(frames))
    with pytest.raises(UserError, match="needs calibration frames"):
        make_embedder(EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", "int8"))
    with pytest.raises(UserError, match="uint8"):
        np.save(tmp_path / "bad.npy", calibration.astype(np.float32))
        engines.load_calibration(str(tmp_path / "bad.npy"), IMAGE_SIZE)


def test_converted_once_then_read_from_the_cache(cache, frames, caplog):
    with caplog.at_level(logging.INFO, logger="model.engines"):
        first = make_embedder(EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", "f32"), batch_size=8)
    converted = sorted(p.name for p in (cache / "openvino").iterdir())
    assert f"densenet121_random-seed7-{IMAGE_SIZE}px-ov{engines._version()}-c{engines.CONVERSION_VERSION}" in converted
    assert not any(p.startswith(".") for p in converted)  # no scratch folder left behind
    assert "converting" not in caplog.text  # the float tests above converted it already
    np.testing.assert_array_equal(first(frames[:4]), first(frames[:4]))


def test_static_batches_pad_the_last_and_split_long_calls(cache, frames):
    embedder = make_embedder(EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", "f32"), batch_size=8)
    assert list(embedder._compiled.inputs[0].shape) == [8, IMAGE_SIZE, IMAGE_SIZE, 3]  # compiled for one shape
    whole = embedder(frames)  # 24 frames: three batches
    for start, stop in [(0, 1), (3, 8), (5, 18), (23, 24)]:
        np.testing.assert_allclose(embedder(frames[start:stop]), whole[start:stop], rtol=1e-5, atol=1e-6)
    assert embedder(frames[:0]).shape == (0, 1024)
    with pytest.raises(ValueError, match="uint8"):
        embedder(frames.astype(np.float32))


def test_an_embedder_with_fewer_threads_than_cores_leaves_them_unpinned(cache, frames):
    """OpenVINO pins its threads to the first cores: two worker processes planned one thread each (of 2 cores)
    both ran on core 0, at half the speed. Pinned only when the embedder has every core of its process."""
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: every embedder has all of them")
    for threads, pinned in ((1, False), (cores, True)):
        embedder = make_embedder(EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", "f32", threads=threads), 8)
        assert embedder._compiled.get_property("INFERENCE_NUM_THREADS") == threads
        assert embedder._compiled.get_property("ENABLE_CPU_PINNING") is pinned, threads


def test_threads_share_one_compiled_network(cache, frames):
    embedder = make_embedder(EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", "f32"), batch_size=8)
    expected = embedder(frames)
    results = {}

    def run(i):
        results[i] = embedder(frames[i * 6 : (i + 1) * 6])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(np.concatenate([results[i] for i in range(4)]), expected, rtol=1e-5, atol=1e-6)


def test_auto_is_openvino_on_a_cpu_bf16_where_it_has_it(monkeypatch):
    monkeypatch.setattr(engines, "gpu_visible", lambda: False)
    # What OpenVINO reports of a CPU with bf16 (a Sapphire Rapids: AMX), then of one without.
    monkeypatch.setattr(engines, "cpu_capabilities", lambda: ("FP32", "BF16", "FP16", "INT8", "BIN", "EXPORT_IMPORT"))
    assert engines.resolve("auto", "auto") == ("openvino", "bf16")
    assert engines.resolve("openvino", "auto") == ("openvino", "bf16")
    assert engines.resolve("auto", "f32") == ("openvino", "f32")
    assert engines.resolve("tensorflow", "auto") == ("tensorflow", "f32")
    assert engines.resolve("auto", "int8") == ("openvino", "int8")
    monkeypatch.setattr(engines, "gpu_visible", lambda: True)
    assert engines.resolve("auto", "auto") == ("tensorflow", "f32")
    monkeypatch.setattr(engines, "cpu_capabilities", lambda: ("FP32", "INT8"))
    monkeypatch.setattr(engines, "gpu_visible", lambda: False)
    assert engines.resolve("auto", "auto") == ("openvino", "f32")
    with pytest.raises(UserError, match="this CPU has no bf16"):
        engines.resolve("openvino", "bf16")


def test_tensorflow_is_asked_for_gpus_only_where_a_gpu_driver_is(monkeypatch):
    asked = []
    monkeypatch.setattr(engines, "gpu_driver_present", lambda: False)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # an import of TensorFlow fails
    engines.gpu_visible.cache_clear()
    try:
        assert engines.gpu_visible() is False
        engines.gpu_visible.cache_clear()
        monkeypatch.setattr(engines, "gpu_driver_present", lambda: asked.append(1) or True)
        with pytest.raises(ImportError):  # a driver is there: TensorFlow says whether it sees a GPU
            engines.gpu_visible()
        assert asked == [1]
    finally:
        engines.gpu_visible.cache_clear()


def test_options_are_checked_and_picklable():
    import pickle

    options = EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", "int8", calibration="gs://b/c.npy", threads=2)
    assert pickle.loads(pickle.dumps(options)) == options
    with pytest.raises(UserError, match="--engine tensorflow embeds in f32 only"):
        EmbedderOptions(WEIGHTS, IMAGE_SIZE, "tensorflow", "bf16")
    with pytest.raises(UserError, match="--precision int8"):
        EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", "bf16", calibration="c.npy")
    with pytest.raises(UserError, match="--engine must be one of"):
        EmbedderOptions(WEIGHTS, IMAGE_SIZE, "onnx")


def test_the_model_decides_int8_or_float_and_a_contradiction_is_refused(monkeypatch):
    monkeypatch.setattr(engines, "gpu_visible", lambda: False)
    monkeypatch.setattr(engines, "cpu_capabilities", lambda: ("FP32", "INT8", "BIN", "EXPORT_IMPORT"))
    fp = engines.options_for_backbone("densenet121/random-seed7", IMAGE_SIZE)
    assert (fp.weights, fp.engine, fp.precision) == ("random:7", "openvino", "f32")
    monkeypatch.setattr(engines, "cpu_capabilities", lambda: ("FP32", "BF16", "INT8", "BIN", "EXPORT_IMPORT"))
    assert engines.options_for_backbone("densenet121/random-seed7", IMAGE_SIZE).precision == "bf16"
    q = engines.options_for_backbone("densenet121/random-seed7+int8", IMAGE_SIZE, calibration="c.npy")
    assert (q.weights, q.precision, q.calibration) == ("random:7", "int8", "c.npy")
    assert engines.options_for_backbone("densenet121/random-seed7", IMAGE_SIZE, "tensorflow").precision == "f32"
    with pytest.raises(UserError, match=r"trained on float \(f32 or bf16\) features .* --precision int8"):
        engines.options_for_backbone("densenet121/random-seed7", IMAGE_SIZE, precision="int8")
    with pytest.raises(UserError, match="trained on int8 features"):
        engines.options_for_backbone("densenet121/random-seed7+int8", IMAGE_SIZE, precision="bf16")


@pytest.fixture
def no_openvino(monkeypatch):
    """OpenVINO not importable, as on a machine without the package."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setattr(engines, "gpu_visible", lambda: False)
    engines.openvino_import_error.cache_clear()
    yield
    engines.openvino_import_error.cache_clear()


def test_without_openvino_auto_falls_back_with_one_line_and_openvino_is_a_user_error(no_openvino, caplog):
    with caplog.at_level(logging.WARNING, logger="model.engines"):
        assert engines.resolve("auto", "auto") == ("tensorflow", "f32")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "OpenVINO cannot be imported" in line and "TensorFlow" in line
    for precision in ("auto", "f32", "bf16", "int8"):
        with pytest.raises(UserError, match="needs OpenVINO, which cannot be imported") as error:
            engines.resolve("openvino", precision)
        assert "\n" not in str(error.value)
    embedder = make_embedder(EmbedderOptions(WEIGHTS, 32, "auto", "auto"))
    assert embedder.engine == "tensorflow" and embedder(generated_frames(2, 0, 32)).shape == (2, 1024)


def test_a_model_trained_on_tensorflow_features_labels_openvino_features_identically(clip_set, cache):
    """The classifier trained on TF fp32 features of the clips gives the same labels, and probabilities within
    1e-3, on the OpenVINO f32 and bf16 features of the same clips."""
    import keras

    from model.classifier import ClassifierConfig, build_classifier
    from video.frames import decode_and_sample

    clips = sorted(p for p in clip_set.rglob("*") if p.suffix in (".mp4", ".avi"))
    labels = sorted({p.parent.name for p in clips})
    sampled = [decode_and_sample(str(p), 8, IMAGE_SIZE, "uniform") for p in clips]
    frames = np.concatenate([s.frames for s in sampled])
    counts = [len(s.frames) for s in sampled]

    def records(features):
        padded, mask = np.zeros((len(clips), 8, 1024), np.float32), np.zeros((len(clips), 8), bool)
        for i, part in enumerate(np.split(features, np.cumsum(counts)[:-1])):
            padded[i, : len(part)], mask[i, : len(part)] = part, True
        return {"features": padded, "mask": mask}

    by_engine = {"tensorflow": make_embedder(EmbedderOptions(WEIGHTS, IMAGE_SIZE))(frames)}
    for precision in ("f32", "bf16"):
        if precision in ("f32",) or "BF16" in engines.cpu_capabilities():
            by_engine[precision] = make_embedder(EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", precision))(frames)
    keras.utils.set_random_seed(0)
    model = build_classifier(ClassifierConfig(num_classes=len(labels), max_seq_length=8))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    label_ids = np.array([labels.index(p.parent.name) for p in clips])
    model.fit(records(by_engine["tensorflow"]), label_ids, epochs=60, batch_size=6, verbose=0)
    expected = model.predict(records(by_engine["tensorflow"]), verbose=0)
    assert (expected.argmax(1) == label_ids).mean() > 0.5  # it learnt something, so labels mean something
    for precision in set(by_engine) - {"tensorflow"}:
        probabilities = model.predict(records(by_engine[precision]), verbose=0)
        assert (probabilities.argmax(1) == expected.argmax(1)).all(), precision
        assert np.abs(probabilities - expected).max() <= 1e-3, (precision, np.abs(probabilities - expected).max())


def test_what_the_launcher_records_is_what_the_workers_embedder_reports(cache, int8, calibration):
    """`describe_options` (the launcher, for records and the manifest) agrees with `describe` (the embedder a
    worker builds from the same options); both are VideoRecord keyword arguments."""
    from tfrecords_schema import VideoRecord

    q = EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", "int8")
    assert engines.describe_options(q, engines.calibration_digest(calibration)) == engines.describe(int8)
    tf_options = EmbedderOptions(WEIGHTS, IMAGE_SIZE, "tensorflow", "f32")
    assert engines.describe_options(tf_options) == engines.describe(make_embedder(tf_options))
    assert set(engines.describe(int8)) <= {f.name for f in dataclasses.fields(VideoRecord)}
    with pytest.raises(ValueError, match="resolve the options first"):
        engines.describe_options(EmbedderOptions(WEIGHTS, IMAGE_SIZE, "auto", "auto"))
