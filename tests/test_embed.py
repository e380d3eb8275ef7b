"""beam_jobs.embed: FrameBatcher's batches across videos, and EmbedFrames against the embedder on each video alone."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.decode import Video
from beam_jobs.embed import EmbedFrames, FrameBatcher
from beam_jobs.matching import VideoRef
from video.frames import SampledFrames

TestPipeline.__test__ = False  # a Beam class, not a test class for pytest to collect

IMAGE_SIZE = 32
WEIGHTS = "random:7"


def video(video_id: str, frames: np.ndarray) -> Video:
    n = len(frames)
    sampled = SampledFrames(frames=frames, frame_indices=list(range(0, 2 * n, 2)), decoded_frame_count=2 * n,
                            source_fps=25.0, frame_height=IMAGE_SIZE, frame_width=IMAGE_SIZE)
    return Video(ref=VideoRef(video_id, f"/videos/{video_id}", "label"), fingerprint=f"fp-{video_id}", sampled=sampled)


def marked(video_number: int, count: int) -> np.ndarray:
    """Frames `[count, 1]` whose value says which video and frame they are: 10 * video + frame."""
    return (10 * video_number + np.arange(count)).reshape(count, 1)


def fake_features(frames: np.ndarray) -> np.ndarray:
    return np.concatenate([frames, -frames], axis=1).astype(np.float32)


def test_batches_cross_video_boundaries_and_features_go_back_in_order():
    a, b, c = video("a", marked(1, 2)), video("b", marked(2, 5)), video("c", marked(3, 1))
    batcher = FrameBatcher(3)
    assert not batcher and not batcher.ready()
    batcher.add(a)
    assert batcher and not batcher.ready()  # 2 frames queued of 3
    batcher.add(b)
    assert batcher.ready()

    first = batcher.next_batch()
    assert first.ravel().tolist() == [10, 11, 20]
    (done_a,) = batcher.finish_batch(fake_features(first))
    assert done_a.ref.video_id == "a" and done_a.features.tolist() == [[10, -10], [11, -11]]

    assert batcher.ready()  # 4 frames of b queued
    second = batcher.next_batch()
    assert second.ravel().tolist() == [21, 22, 23]
    assert batcher.finish_batch(fake_features(second)) == []  # b has one frame left
    assert not batcher.ready() and batcher

    batcher.add(c)
    assert not batcher.ready()  # 2 frames queued: only the end of the bundle flushes them
    last = batcher.next_batch()
    assert last.ravel().tolist() == [24, 30]  # the last, partial batch
    done_b, done_c = batcher.finish_batch(fake_features(last))
    assert not batcher
    assert done_b.ref.video_id == "b" and done_b.features[:, 0].tolist() == [20, 21, 22, 23, 24]
    assert done_c.ref.video_id == "c" and done_c.features.tolist() == [[30, -30]]
    assert done_b.features.shape == (5, 2) and done_b.features.dtype == np.float32


def test_finished_videos_are_new_elements_with_frames_dropped_unless_kept():
    original = video("a", marked(1, 3))
    for keep_frames in (False, True):
        batcher = FrameBatcher(8)
        batcher.add(original)
        (done,) = batcher.finish_batch(fake_features(batcher.next_batch()), keep_frames=keep_frames)
        assert done is not original and original.features is None  # the input is not changed in place
        assert original.sampled.frames.shape == (3, 1)
        assert (done.sampled.frames is None) == (not keep_frames)
        if keep_frames:
            assert done.sampled.frames.ravel().tolist() == [10, 11, 12]
        assert done.sampled.frame_indices == [0, 2, 4] and done.fingerprint == "fp-a"
        assert done.features[:, 0].tolist() == [10, 11, 12]


@pytest.mark.parametrize("batch_size", [1, 3, 4, 100])
def test_every_frame_is_embedded_once_whatever_the_batch_size(batch_size):
    counts = [2, 5, 1, 7, 3]
    videos = [video(f"v{i}", marked(i, n)) for i, n in enumerate(counts)]
    batcher, done, batches = FrameBatcher(batch_size), [], []
    for v in videos:
        batcher.add(v)
        while batcher.ready():
            batch = batcher.next_batch()
            batches.append(len(batch))
            done += batcher.finish_batch(fake_features(batch))
    while batcher:
        batch = batcher.next_batch()
        batches.append(len(batch))
        done += batcher.finish_batch(fake_features(batch))
    assert [v.ref.video_id for v in done] == [f"v{i}" for i in range(len(counts))]
    for i, v in enumerate(done):
        assert v.features[:, 0].tolist() == marked(i, counts[i]).ravel().tolist()
    total = sum(counts)
    assert batches == [batch_size] * (total // batch_size) + ([total % batch_size] if total % batch_size else [])


@pytest.fixture(scope="module")
def embedder():
    from model.backbone import FrameEmbedder, resolve_weights

    return FrameEmbedder(resolve_weights(WEIGHTS), IMAGE_SIZE)


def test_embed_frames_matches_the_embedder_on_each_video_alone(embedder):
    rng = np.random.default_rng(3)
    counts = {"two": 2, "five": 5, "one": 1}
    videos = [video(name, rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)) for name, n in counts.items()]
    expected = {v.ref.video_id: embedder(v.sampled.frames) for v in videos}
    assert all(features.shape == (counts[name], 1024) for name, features in expected.items())

    def compare(v, expected):
        return (v.ref.video_id, v.features.shape, str(v.features.dtype),
                bool(np.allclose(v.features, expected[v.ref.video_id], rtol=1e-4, atol=1e-5)),
                v.sampled.frames is None, v.fingerprint)

    pipeline = TestPipeline()
    inputs = pipeline | beam.Create(videos)
    for batch_size in (3, 64):
        embedded = inputs | f"Embed{batch_size}" >> EmbedFrames(WEIGHTS, IMAGE_SIZE, batch_size)
        assert_that(embedded | f"Compare{batch_size}" >> beam.Map(compare, expected), equal_to([
            ("two", (2, 1024), "float32", True, True, "fp-two"),
            ("five", (5, 1024), "float32", True, True, "fp-five"),
            ("one", (1, 1024), "float32", True, True, "fp-one"),
        ]), label=f"Features{batch_size}")
    result = pipeline.run()
    result.wait_until_finish()

    def counter(name, step):
        (found,) = result.metrics().query(MetricsFilter().with_name(name).with_step(step))["counters"]
        return found.committed

    # 8 frames in one bundle: batches of 3, 3 and 2 frames; or one batch of all 8.
    assert (counter("embedding_batches", "Embed3"), counter("embedding_batches", "Embed64")) == (3, 1)
    assert (counter("videos_embedded", "Embed3"), counter("videos_embedded", "Embed64")) == (3, 3)


def test_the_comparison_is_not_trivial(embedder):
    """Different frames give different features, so matching each video's own features means something."""
    frames = np.random.default_rng(4).integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    features = embedder(frames)
    assert features.shape == (2, 1024) and np.isfinite(features).all()
    assert not np.allclose(features[0], features[1], rtol=1e-4, atol=1e-5)
    assert embedder(frames[:0]).shape == (0, 1024)


# --- The engine choice: EmbedderOptions through the transform, int8 calibration frames, the engine flags ---


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory):
    from model import engines

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(engines.CACHE_ENV, str(tmp_path_factory.mktemp("engine-cache")))
        yield


def embed_in_pipeline(videos, options, batch_size, folder):
    """{video id: features} from EmbedFrames(options) in a TestPipeline (written to `folder`, read back)."""
    pipeline = TestPipeline()
    embedded = pipeline | beam.Create(videos) | EmbedFrames(options, batch_size=batch_size)
    _ = embedded | beam.Map(lambda v: np.save(folder / f"{v.ref.video_id}.npy", v.features))
    pipeline.run().wait_until_finish()
    return {p.stem: np.load(p) for p in folder.glob("*.npy")}


def test_embed_frames_runs_the_engine_the_options_name(engine_cache, tmp_path):
    from model.engines import EmbedderOptions, make_embedder

    rng = np.random.default_rng(5)
    videos = [video(name, rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
              for name, n in {"two": 2, "five": 5, "one": 1}.items()]
    options = EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", "f32")
    alone = make_embedder(options, batch_size=3)
    assert alone.engine == "openvino"
    found = embed_in_pipeline(videos, options, 3, tmp_path)
    assert sorted(found) == ["five", "one", "two"]
    for v in videos:
        np.testing.assert_allclose(found[v.ref.video_id], alone(v.sampled.frames), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="image_size 64 differs"):
        EmbedFrames(options, 64)


def test_int8_calibrates_on_frames_the_launcher_chose_from_the_inputs(engine_cache, clip_set, tmp_path):
    from beam_jobs.calibration import prepare_calibration, spread
    from beam_jobs.decode import FrameOptions
    from model.engines import EmbedderOptions, make_embedder

    assert spread(["e", "a", "c", "b", "d"], 3) == ["a", "c", "e"] and spread(["b", "a"], 5) == ["a", "b"]
    uris = [str(p) for p in sorted(clip_set.rglob("*")) if p.suffix in (".mp4", ".avi")]
    frame_options = FrameOptions(max_seq_length=4, image_size=IMAGE_SIZE)
    first = prepare_calibration(uris, frame_options, str(tmp_path / "a.npy"))
    again = prepare_calibration(list(reversed(uris)), frame_options, str(tmp_path / "b.npy"))
    assert first.digest == again.digest and first.videos == again.videos  # the choice depends on the list only
    assert first.frames == 4 * len(first.videos) and set(first.videos) <= set(uris)
    assert first.manifest() == {"digest": first.digest, "source": "inputs", "frames": first.frames,
                                "videos": list(first.videos)}

    options = EmbedderOptions(WEIGHTS, IMAGE_SIZE, "openvino", "int8", calibration=first.path)
    frames = np.random.default_rng(6).integers(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    (tmp_path / "out").mkdir()
    found = embed_in_pipeline([video("x", frames)], options, 4, tmp_path / "out")
    alone = make_embedder(options, batch_size=4)
    assert alone.backbone_id == "densenet121/random-seed7+int8" and alone.calibration == first.digest
    np.testing.assert_allclose(found["x"], alone(frames), rtol=1e-5, atol=1e-6)


def engine_args(*argv):
    import argparse

    from beam_jobs.flags import add_engine_flags

    parser = argparse.ArgumentParser()
    add_engine_flags(parser)
    return parser.parse_args(list(argv))


def test_engine_flags_default_to_auto_and_resolve_on_this_machine(monkeypatch):
    from beam_jobs.flags import embedder_options
    from model import engines

    args = engine_args()
    assert (args.engine, args.precision, args.calibration, args.embed_threads) == ("auto", "auto", None, 0)
    monkeypatch.setattr(engines, "gpu_visible", lambda: False)
    monkeypatch.setattr(engines, "cpu_capabilities", lambda: ("FP32", "BF16", "INT8", "BIN", "EXPORT_IMPORT"))
    options = embedder_options(args, "random:3", 128)
    assert (options.weights, options.image_size, options.engine, options.precision) == ("random:3", 128, "openvino",
                                                                                        "bf16")
    monkeypatch.setattr(engines, "cpu_capabilities", lambda: ("FP32", "INT8", "BIN", "EXPORT_IMPORT"))
    assert embedder_options(args, "random:3", 128).precision == "f32"
    options = embedder_options(engine_args("--precision", "int8", "--calibration", "clips/"), "random", 64, "c.npy")
    assert (options.precision, options.calibration) == ("int8", "c.npy")
    assert embedder_options(engine_args("--engine", "tensorflow"), "random", 64).precision == "f32"


@pytest.mark.parametrize("argv, message", [
    (["--calibration", "clips/"], "--calibration is for --precision int8"),
    (["--engine", "tensorflow", "--precision", "bf16"], "--engine tensorflow embeds in f32 only"),
    (["--engine", "tensorflow", "--precision", "int8"], "--engine tensorflow embeds in f32 only"),
    (["--embed-threads", "-1"], "--embed-threads must be 0"),
])
def test_engine_flags_that_contradict_each_other_are_user_errors(argv, message):
    from beam_jobs.flags import validate_engine_args
    from common.errors import UserError

    with pytest.raises(UserError, match=message):
        validate_engine_args(engine_args(*argv))


def test_engine_openvino_without_openvino_is_one_line(monkeypatch):
    import sys

    from beam_jobs.flags import embedder_options
    from common.errors import UserError
    from model import engines

    monkeypatch.setitem(sys.modules, "openvino", None)
    engines.openvino_import_error.cache_clear()
    try:
        with pytest.raises(UserError, match="--engine openvino needs OpenVINO") as error:
            embedder_options(engine_args("--engine", "openvino"), "random", 64)
        assert "\n" not in str(error.value)
        monkeypatch.setattr(engines, "gpu_visible", lambda: False)
        assert embedder_options(engine_args(), "random", 64).engine == "tensorflow"
    finally:
        engines.openvino_import_error.cache_clear()
