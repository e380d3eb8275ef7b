"""Sampled frames -> DenseNet121 features, in batches of frames gathered across videos.

One embedder per worker process (shared across the DoFn's threads), built at its first frames by
`model.engines.make_embedder` from picklable `EmbedderOptions` (engine, precision, int8 calibration frames),
on the threads `--embed-threads` or the process's core plan (beam_jobs.cores) gives it.
A video's frames may span two batches; a video leaves the step once all its frames are embedded, its frames
dropped unless `keep_frames`. The chunks of windows of `predict --segments` (beam_jobs.segments) go through
the same step as videos do; only whole videos count as videos embedded.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils import shared
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs.cores import CoreRequest
from beam_jobs.decode import Video
from beam_jobs.progress import Progress
from model.engines import EmbedderOptions
from video.segments import WindowFrames


class FrameBatcher:
    """Queues videos and cuts their frames into batches of `batch_size` across video boundaries.

    `ready()` says whether a full batch is queued; `next_batch()` returns the frames of the next batch (fewer
    at the end); `finish_batch(features)` hands back their features and returns the videos it completes,
    each with `features` `[n, D]` for its n frames, oldest first."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self._queue: list[Video] = []  # videos with frames not yet embedded, oldest first
        self._offset = 0  # frames of self._queue[0] already embedded
        self._partial: list[np.ndarray] = []  # their features so far
        self._queued_frames = 0
        self._takes: list[int] = []  # frames the batch in flight takes from each queued video, in order

    def __bool__(self) -> bool:
        return bool(self._queue)

    def add(self, video: Video) -> None:
        self._queue.append(video)
        self._queued_frames += len(video.sampled.frames)

    def ready(self) -> bool:
        return self._queued_frames >= self.batch_size

    def next_batch(self) -> np.ndarray:
        pieces, self._takes, room = [], [], self.batch_size
        for position, video in enumerate(self._queue):
            start = self._offset if position == 0 else 0
            take = min(room, len(video.sampled.frames) - start)
            pieces.append(video.sampled.frames[start : start + take])
            self._takes.append(take)
            room -= take
            if room == 0:
                break
        return np.concatenate(pieces)

    def finish_batch(self, features: np.ndarray, keep_frames: bool = False) -> list[Video]:
        done, cursor = [], 0
        self._queued_frames -= len(features)
        for take in self._takes:
            self._partial.append(features[cursor : cursor + take])
            cursor += take
            self._offset += take
            video = self._queue[0]
            if self._offset == len(video.sampled.frames):
                # A new element: Beam forbids changing the input in place.
                sampled = video.sampled if keep_frames else dataclasses.replace(video.sampled, frames=None)
                done.append(dataclasses.replace(video, sampled=sampled, features=np.concatenate(self._partial)))
                self._queue.pop(0)
                self._offset, self._partial = 0, []
        self._takes = []
        return done


def _embedder_options(embedder: EmbedderOptions | str, image_size: int | None) -> EmbedderOptions:
    """`EmbedderOptions`, or a bare `--weights` value with `image_size` for the TensorFlow engine in f32."""
    if isinstance(embedder, EmbedderOptions):
        if image_size is not None and image_size != embedder.image_size:
            raise ValueError(f"image_size {image_size} differs from the embedder's {embedder.image_size}")
        return embedder
    if image_size is None:
        raise TypeError("a bare weights value needs image_size")
    return EmbedderOptions(embedder, image_size)


class EmbedFramesDoFn(beam.DoFn):
    """Video -> Video with `features`, DenseNet121 run on batches of `batch_size` frames across videos.

    `embedder` is `EmbedderOptions` (resolve `auto` on the launcher, so that every worker and the records
    agree on what made the features), or a `--weights` value and `image_size`: TensorFlow in f32."""

    def __init__(self, embedder: EmbedderOptions | str, image_size: int | None = None, batch_size: int = 32,
                 keep_frames: bool = False, expected_videos: int = 0, job_id: str = "",
                 cores: CoreRequest = CoreRequest()):
        self._options = _embedder_options(embedder, image_size)
        self._cores = cores
        self._batch_size = batch_size
        self._keep_frames = keep_frames
        self._expected = expected_videos
        self._job_id = job_id
        self._embedded = Metrics.counter("videos", "videos_embedded")
        self._batches = Metrics.counter("videos", "embedding_batches")
        # One DenseNet per worker process, however many threads run this DoFn.
        self._shared_embedder = shared.Shared()

    def setup(self):
        from common.shutdown import freeze_at_exit

        freeze_at_exit()  # an SDK worker process exits in 0.07 s instead of 0.35 s
        self._progress = Progress.of(self._job_id, self._expected) if self._job_id else None
        self._embedder = None

    def _embed(self, frames: np.ndarray) -> np.ndarray:
        """The worker's network, built at the first frames it gets: a scheduled re-run with nothing new to
        embed never builds (or converts and compiles) DenseNet121."""
        if self._embedder is None:
            from model.engines import make_embedder

            options, batch_size = self._options, self._batch_size
            if not options.threads:  # this process's share of the machine's cores (beam_jobs.cores)
                options = dataclasses.replace(options, threads=self._cores.plan().embed_threads)
            self._embedder = self._shared_embedder.acquire(
                lambda: make_embedder(options, batch_size), tag=f"{options}@{batch_size}")
        return self._embedder(frames)

    def start_bundle(self):
        self._batcher = FrameBatcher(self._batch_size)

    def process(self, video: Video):
        self._batcher.add(video)
        while self._batcher.ready():
            yield from self._run_batch()

    def finish_bundle(self):
        while self._batcher:
            for video in self._run_batch():
                yield WindowedValue(video, MIN_TIMESTAMP, [GlobalWindow()])

    def _run_batch(self) -> list[Video]:
        features = self._embed(self._batcher.next_batch())
        self._batches.inc()
        done = self._batcher.finish_batch(features, self._keep_frames)
        videos = sum(not isinstance(video.sampled, WindowFrames) for video in done)
        self._embedded.inc(videos)
        if self._progress:
            self._progress.count(frames=len(features), embedded=videos)
        return done

    def teardown(self):
        if getattr(self, "_progress", None) is not None:
            self._progress.release()
            self._progress = None


class EmbedFrames(beam.PTransform):
    """PCollection[Video] -> PCollection[Video] with DenseNet121 features, from the engine `embedder` names
    (see EmbedFramesDoFn). With a `job_id` (the same one given to DecodeFrames), progress is logged every 10 s
    (see Progress)."""

    def __init__(self, embedder: EmbedderOptions | str, image_size: int | None = None, batch_size: int = 32,
                 keep_frames: bool = False, expected_videos: int = 0, job_id: str = "",
                 cores: CoreRequest = CoreRequest()):
        super().__init__()
        self._dofn = EmbedFramesDoFn(embedder, image_size, batch_size, keep_frames, expected_videos, job_id, cores)

    def expand(self, videos):
        return videos | "Embed" >> beam.ParDo(self._dofn)
