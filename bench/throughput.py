"""Featurize throughput (benchmarks 1-3 and 6 of issue 6): the featurize job end to end, the bare DenseNet121
it is limited by, the keras-io reference's one-`predict()`-per-frame loop, the job's peak memory at N and
8N clips, and the bytes per video of each feature encoding. And the engines (issue 22): the bare embedder
per engine and precision, its fidelity to TensorFlow fp32, its threads beside a busy decoder, and whether a
classifier trained on TF features labels each engine's features alike.

The bare model and the reference run inside the benchmark process, between the featurize jobs, so that a
change in the machine's load hits both sides of a ratio alike; each job runs in its own process (a user's
`python -m beam_jobs.featurize`), sampled by `bench.harness.run_job`.

The job's steady-state rate comes from its output growing: the records are written while the job runs, so
bytes written against time, between 10% and 90% of the final size, give records (and frames) per second with
start-up (imports, DenseNet121 build, tracing, decoder start) and the final publish left out. Its whole-job
rate is frames over wall time, start-up included.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from bench.data import featurize_args, read_records, record_files
from bench.harness import WORK_DIR, JobRun, log, progress_frames_per_s, run_job, tree_bytes

IMAGE_SIZE = 128
FRAMES_PER_VIDEO = 20
WEIGHTS = "random"
RECORDS_NAME = "features"  # in the names of the shards and of Beam's temporary files while it writes them


def load_frames(clips: Path, count: int) -> np.ndarray:
    """`count` frames sampled (20 per clip) from the clips, as the featurize job samples them: uint8
    `[count, 128, 128, 3]`."""
    from video.frames import decode_and_sample

    frames, total = [], 0
    for path in sorted(p for p in clips.rglob("*") if p.suffix in (".mp4", ".avi")):
        sampled = decode_and_sample(str(path), FRAMES_PER_VIDEO, IMAGE_SIZE, "uniform").frames
        frames.append(sampled)
        total += len(sampled)
        if total >= count:
            break
    if total < count:
        raise ValueError(f"{clips} holds only {total} frames, {count} needed")
    return np.concatenate(frames)[:count]


def _timed(call) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


class BareModel:
    """The product's `FrameEmbedder` (DenseNet121 at 128x128, preprocessing in the same traced function),
    called on ready-made batches: the most the featurize job could reach."""

    def __init__(self, batch_size: int):
        from model.backbone import FrameEmbedder, resolve_weights

        self.batch_size = batch_size
        self.embedder = FrameEmbedder(resolve_weights(WEIGHTS), IMAGE_SIZE)

    def measure(self, frames: np.ndarray) -> dict:
        batches = [frames[i : i + self.batch_size] for i in range(0, len(frames), self.batch_size)]
        self.embedder(batches[0])  # traced once; later calls are steady state
        wall, cpu = _timed(lambda: [self.embedder(b) for b in batches])
        return {"frames": len(frames), "frames_per_s": len(frames) / wall, "cpu_s_per_frame": cpu / len(frames)}


class ReferenceExtractor:
    """The keras-io example's feature extractor and loop: `keras.Model(inputs, DenseNet121(preprocess_input(
    inputs)))` and one `feature_extractor.predict(frame[None])` per frame, with `verbose=0` (the example
    prints a progress bar per call, which costs nothing measurable) and a warm-up call before timing;
    decoding is not included on either side of its ratio."""

    def __init__(self):
        import keras

        from model.backbone import build_densenet, resolve_weights

        densenet = build_densenet(resolve_weights(WEIGHTS), IMAGE_SIZE)
        inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
        outputs = densenet(keras.applications.densenet.preprocess_input(inputs))
        self.model = keras.Model(inputs, outputs, name="feature_extractor")

    def measure(self, frames: np.ndarray) -> dict:
        self.model.predict(frames[:1], verbose=0)
        wall, cpu = _timed(lambda: [self.model.predict(frame[None], verbose=0) for frame in frames])
        return {"frames": len(frames), "frames_per_s": len(frames) / wall, "cpu_s_per_frame": cpu / len(frames)}


@dataclasses.dataclass
class FeaturizeRun:
    """One featurize job: its sampled process tree and what it wrote."""

    job: JobRun
    videos: int
    frames: int
    record_bytes: int  # bytes of the finished shards (TFRecord framing included)

    @property
    def whole_job_frames_per_s(self) -> float:
        return self.frames / self.job.wall_s

    def steady_state(self, low: float = 0.1, high: float = 0.9) -> dict:
        """Frames/s and CPU seconds per frame while records were being written (between `low` and `high`
        of the final output size), by least squares over the samples."""
        samples = np.array(self.job.samples)
        t, cpu, written = samples[:, 0], samples[:, 1], samples[:, 2]
        final = written.max()
        window = (written >= low * final) & (written <= high * final)
        if window.sum() < 3:
            return {"frames_per_s": float("nan"), "cpu_s_per_frame": float("nan"), "samples": int(window.sum())}
        frames_per_byte = self.frames / self.record_bytes
        bytes_per_s = np.polyfit(t[window], written[window], 1)[0]
        cpu_per_byte = np.polyfit(written[window], cpu[window], 1)[0]
        return {
            "frames_per_s": float(bytes_per_s * frames_per_byte),
            "cpu_s_per_frame": float(cpu_per_byte / frames_per_byte),
            "samples": int(window.sum()),
            "window_s": float(t[window].max() - t[window].min()),
        }

    def startup_s(self) -> float:
        """Seconds until the first record was written."""
        return next((t for t, _, written in self.job.samples if written > 0), float("nan"))

    def summary(self) -> dict:
        return {
            "videos": self.videos, "frames": self.frames, "wall_s": round(self.job.wall_s, 2),
            "cpu_s": round(self.job.cpu_s, 2), "whole_job_frames_per_s": round(self.whole_job_frames_per_s, 2),
            "whole_job_videos_per_s": round(self.videos / self.job.wall_s, 3),
            "steady_state": {k: round(v, 5) if isinstance(v, float) else v for k, v in self.steady_state().items()},
            "steady_frames_per_s_from_progress_log": round(progress_frames_per_s(self.job.log_path), 2),
            "first_record_after_s": round(self.startup_s(), 2), "peak_rss_mb": round(self.job.peak_rss_mb, 1),
            "peak_pss_mb": round(self.job.peak_pss_mb, 1), "peak_processes": self.job.peak_processes,
            "bytes_per_video": round(self.record_bytes / self.videos, 1), "load_before": self.job.load_before,
        }


def count_frames(records_dir: Path) -> tuple[int, int]:
    """(videos, valid frames) in a featurize output."""
    from tfrecords_schema import decode_video_record

    records = [decode_video_record(r) for r in read_records(records_dir)]
    return len(records), sum(r.num_valid_frames for r in records)


def featurize(name: str, clips: Path, encoding: str = "float32", batch_size: int = 32,
              extra: tuple[str, ...] = ()) -> FeaturizeRun:
    """Run the featurize job on `clips` into bench/_work/runs/NAME (with `extra` flags), sampling its output as
    it grows."""
    output = WORK_DIR / "runs" / name
    shutil.rmtree(output, ignore_errors=True)
    job = run_job(name, featurize_args(clips, output, encoding, batch_size) + list(extra),
                  probe=lambda: tree_bytes(output, RECORDS_NAME))
    job.check()
    manifest = json.loads((output / "manifest.json").read_text())
    if manifest["failures"]:
        raise RuntimeError(f"{name}: {manifest['failures']} clips failed; see {output}/failures.csv")
    videos, frames = count_frames(output)
    record_bytes = sum(f.stat().st_size for f in record_files(output))
    log(f"{name}: {videos} videos, {frames} frames in {job.wall_s:.1f}s, peak RSS {job.peak_rss_mb:.0f} MB")
    return FeaturizeRun(job, videos, frames, record_bytes)


# --- Engines (issue 22): the bare embedder per engine and precision, interleaved with the TF reference --------

ENGINE_CASES = (("tensorflow", "f32"), ("openvino", "f32"), ("openvino", "bf16"), ("openvino", "int8"))


class EngineModel:
    """One engine's embedder (model.engines.make_embedder) at 128x128 on ready-made batches."""

    def __init__(self, engine: str, precision: str, batch_size: int, calibration_frames=None, threads: int = 0):
        from model.engines import EmbedderOptions, make_embedder

        self.name = f"{engine} {precision}" + (f" threads={threads}" if threads else "")
        self.embedder = make_embedder(EmbedderOptions(f"{WEIGHTS}", IMAGE_SIZE, engine, precision, threads=threads),
                                      batch_size, calibration_frames)
        self.batch_size = batch_size

    def measure(self, frames: np.ndarray, min_seconds: float = 3.0) -> dict:
        """Frames/s over passes through `frames` until at least `min_seconds` (fast engines get more passes)."""
        batches = [frames[i : i + self.batch_size] for i in range(0, len(frames), self.batch_size)]
        self.embedder(batches[0])
        done, wall, cpu = 0, 0.0, 0.0
        while wall < min_seconds:
            w, c = _timed(lambda: [self.embedder(b) for b in batches])
            done, wall, cpu = done + len(frames), wall + w, cpu + c
        return {"frames": done, "frames_per_s": done / wall, "cpu_s_per_frame": cpu / done}


def fidelity(features: np.ndarray, reference: np.ndarray) -> dict:
    """How close features are to the reference's: the min cosine over frames (and its gap to 1, and the
    median's), the max abs difference (absolute and over the largest reference magnitude)."""
    features, reference = np.asarray(features, np.float64), np.asarray(reference, np.float64)
    cosine = (features * reference).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(reference, axis=1)
    diff = float(np.abs(features - reference).max())
    return {"min_cosine": float(cosine.min()), "cosine_gap": float(1.0 - cosine.min()),
            "median_cosine_gap": float(1.0 - np.median(cosine)), "max_abs": diff,
            "max_abs_relative": diff / float(np.abs(reference).max()), "reference_max_abs": float(np.abs(reference).max())}


def _decode_loop(paths: list[str], frames_done, stop) -> None:
    """A stand-in for the job's decoder child: decode and sample the clips round and round until `stop`."""
    from video.frames import decode_and_sample

    while not stop.is_set():
        for path in paths:
            if stop.is_set():
                return
            sampled = decode_and_sample(path, FRAMES_PER_VIDEO, IMAGE_SIZE, "uniform")
            with frames_done.get_lock():
                frames_done.value += len(sampled.frames)


class DecoderLoad:
    """A child process decoding clips while the embedder runs (the featurize job's decoder child, when other
    threads of the worker keep it busy); `rate()` is its frames/s so far."""

    def __init__(self, clips: Path):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._paths = [str(p) for p in sorted(clips.rglob("*")) if p.suffix in (".mp4", ".avi")]
        self._count, self._stop = context.Value("q", 0), context.Event()
        self._process = context.Process(target=_decode_loop, args=(self._paths, self._count, self._stop),
                                        daemon=True)

    def __enter__(self):
        self._process.start()
        deadline = time.monotonic() + 120
        while self._count.value == 0:  # started and decoding
            if not self._process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the decoder load process did not start (exit code {self._process.exitcode})")
            time.sleep(0.05)
        self._start, self._start_count = time.perf_counter(), self._count.value
        return self

    def rate(self) -> float:
        return (self._count.value - self._start_count) / (time.perf_counter() - self._start)

    def __exit__(self, *exc):
        self._stop.set()
        self._process.join(timeout=30)


def agreement_of_labels(train: dict[str, np.ndarray], test: dict[str, dict[str, np.ndarray]], labels: list[str],
                        train_labels: np.ndarray, test_labels: np.ndarray) -> dict:
    """A classifier trained (in this process, 150 epochs) on TF fp32 features `train` (`features`, `mask`),
    applied to the test clips' features from each engine: labels identical to TF's? largest probability
    difference? accuracy?"""
    import keras

    from model.classifier import ClassifierConfig, build_classifier

    keras.utils.set_random_seed(0)
    model = build_classifier(ClassifierConfig(num_classes=len(labels), max_seq_length=FRAMES_PER_VIDEO))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(train, train_labels, epochs=150, batch_size=16, verbose=0)
    probabilities = {name: model.predict(inputs, verbose=0) for name, inputs in test.items()}
    reference = probabilities["tensorflow f32"]
    return {name: {"labels_identical": float((p.argmax(1) == reference.argmax(1)).mean()),
                   "max_probability_difference": float(np.abs(p - reference).max()),
                   "accuracy": float((p.argmax(1) == test_labels).mean())}
            for name, p in probabilities.items()}


def clip_inputs(embedder, clips: Path) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """Classifier inputs (`features` [N, 20, 1024], `mask` [N, 20]) of every clip, label ids, labels."""
    from video.frames import decode_and_sample

    paths = [p for p in sorted(clips.rglob("*")) if p.suffix in (".mp4", ".avi")]
    labels = sorted({p.parent.name for p in paths})
    features = np.zeros((len(paths), FRAMES_PER_VIDEO, 1024), np.float32)
    mask = np.zeros((len(paths), FRAMES_PER_VIDEO), bool)
    for i, path in enumerate(paths):
        sampled = decode_and_sample(str(path), FRAMES_PER_VIDEO, IMAGE_SIZE, "uniform").frames
        features[i, : len(sampled)], mask[i, : len(sampled)] = embedder(sampled), True
    return {"features": features, "mask": mask}, np.array([labels.index(p.parent.name) for p in paths]), labels
