"""The transforms the featurize and predict jobs share: read the matched videos, decode and sample frames,
embed them with DenseNet121 in batches gathered across videos, and turn them into feature records.

Per-video problems (a file that cannot be read or decoded) leave the main output as `(video_id, uri,
reason)` on the `failures` output and count in `videos_failed`; programming errors raise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
import time

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils import shared
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from model.frames import DecodeError, SampledFrames
from beam_jobs.matching import VideoRef
from tfrecords_schema import VideoRecord, encode_video_record

_LOG = logging.getLogger(__name__)

FAILURES = "failures"
_CHUNK = 1 << 22


@dataclasses.dataclass
class Video:
    """A video on its way through a job: where it came from, its sampled frames, and (once embedded)
    `features` `[n, D]` float32 for its `n` sampled frames (no padding yet)."""

    ref: VideoRef
    fingerprint: str
    sampled: SampledFrames
    features: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class FrameOptions:
    """How frames are taken from a video; recorded in every record and in a model's preprocessing."""

    max_seq_length: int = 20
    image_size: int = 128
    sampling: str = "uniform"
    decode_timeout_s: float = 120.0


def read_refs(path: str) -> list[VideoRef]:
    """The matched-video list the launcher wrote (`write_refs`)."""
    with FileSystems.open(path) as f:
        return [VideoRef(**json.loads(line)) for line in f.read().decode("utf-8").splitlines() if line]


def write_refs(path: str, refs: list[VideoRef]) -> None:
    lines = "".join(json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n" for r in refs)
    with FileSystems.create(path) as f:
        f.write(lines.encode("utf-8"))


class ReadVideoList(beam.PTransform):
    """The launcher's list of matched videos -> PCollection[VideoRef], spread across workers."""

    def __init__(self, refs_path: str):
        super().__init__()
        self._refs_path = refs_path

    def expand(self, pbegin):
        return (
            pbegin
            | "ListFile" >> beam.Create([self._refs_path])
            | "ReadRefs" >> beam.FlatMap(read_refs)
            | "SpreadVideos" >> beam.Reshuffle()
        )


def _copy_and_hash(source, destination) -> str:
    sha = hashlib.sha256()
    while chunk := source.read(_CHUNK):
        sha.update(chunk)
        if destination is not None:
            destination.write(chunk)
    return sha.hexdigest()


def fingerprint_file(uri: str) -> str:
    """sha256 of a file's content (local or remote)."""
    if "://" in uri:
        with FileSystems.open(uri) as source:
            return _copy_and_hash(source, None)
    with open(uri, "rb") as source:
        return _copy_and_hash(source, None)


def _read_error(uri: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(uri):
            return "broken symbolic link (its target does not exist)"
        return "file not found (removed after it was listed?)"
    if isinstance(exc, PermissionError):
        return "cannot read the file: permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a video file"
    return f"cannot read the file: {exc.strerror or exc}"


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "an unusual file type"


class Progress:
    """One job's progress in this worker process, logged every `interval_s` seconds while its decode and
    embed steps are set up: videos embedded of those matched, failures so far, frames/s.

    DecodeFramesDoFn and EmbedFramesDoFn of one job share one `Progress` through `Progress.of(job_id)`; a
    daemon thread logs, so a line comes even while one long video decodes. Counts are this process's share
    (a distributed runner has one per worker process); Beam's counters hold the totals.
    """

    _jobs: dict[str, "Progress"] = {}
    _jobs_lock = threading.Lock()

    def __init__(self, job_id: str, expected_videos: int, interval_s: float):
        self.job_id, self.expected_videos, self.interval_s = job_id, expected_videos, interval_s
        self._lock = threading.Lock()
        self._users = 0
        self._stop = threading.Event()
        self._started = time.monotonic()
        self.failed = self.embedded = self.frames = 0

    @classmethod
    def of(cls, job_id: str, expected_videos: int = 0, interval_s: float = 10.0) -> "Progress":
        """The job's Progress, started; each caller (a DoFn's setup) must `release()` it (in teardown)."""
        with cls._jobs_lock:
            progress = cls._jobs.get(job_id)
            if progress is None:
                progress = cls._jobs[job_id] = cls(job_id, expected_videos, interval_s)
                threading.Thread(target=progress._log_every_interval, daemon=True, name="progress").start()
            progress._users += 1
            return progress

    def release(self) -> None:
        with self._jobs_lock:
            self._users -= 1
            if self._users == 0:
                self._stop.set()
                self._jobs.pop(self.job_id, None)

    def count(self, failed: int = 0, embedded: int = 0, frames: int = 0) -> None:
        with self._lock:
            self.failed += failed
            self.embedded += embedded
            self.frames += frames

    def line(self) -> str:
        with self._lock:
            elapsed = max(time.monotonic() - self._started, 1e-9)
            of = f"/{self.expected_videos}" if self.expected_videos else ""
            return (f"progress: {self.embedded + self.failed}{of} videos done ({self.embedded} embedded, "
                    f"{self.failed} failed so far); {self.frames} frames at {self.frames / elapsed:.1f} frames/s; "
                    f"{elapsed:.0f} s")

    def _finished(self) -> bool:
        with self._lock:
            return bool(self.expected_videos) and self.embedded + self.failed >= self.expected_videos

    def _log_every_interval(self) -> None:
        while not self._stop.wait(self.interval_s) and not self._finished():
            _LOG.info("%s", self.line())


class DecodeFramesDoFn(beam.DoFn):
    """VideoRef -> Video with sampled frames, decoded in an isolated child process (see decoder.py)."""

    def __init__(self, options: FrameOptions, job_id: str = "", expected_videos: int = 0):
        self._options = options
        self._job_id = job_id
        self._expected = expected_videos
        self._decoded = Metrics.counter("videos", "videos_decoded")
        self._failed = Metrics.counter("videos", "videos_failed")
        self._frames = Metrics.counter("videos", "frames_sampled")

    def setup(self):
        from beam_jobs.decoder import IsolatedDecoder

        self._decoder = IsolatedDecoder(timeout_s=self._options.decode_timeout_s)
        self._scratch = tempfile.mkdtemp(prefix="decode-")
        self._progress = Progress.of(self._job_id, self._expected) if self._job_id else None

    def _local_copy(self, ref: VideoRef) -> tuple[str, str]:
        """(local path, content fingerprint); remote files are copied to scratch space first."""
        if "://" not in ref.uri:
            mode = os.stat(ref.uri).st_mode
            if not stat.S_ISREG(mode):  # reading a named pipe would block this worker for good
                raise DecodeError(f"not a regular file ({_file_kind(mode)})")
            with open(ref.uri, "rb") as source:
                return ref.uri, _copy_and_hash(source, None)
        suffix = os.path.splitext(ref.uri)[1]
        local = os.path.join(self._scratch, "video" + suffix)
        with FileSystems.open(ref.uri) as source, open(local, "wb") as destination:
            return local, _copy_and_hash(source, destination)

    def process(self, ref: VideoRef):
        try:
            path, fingerprint = self._local_copy(ref)
        except DecodeError as exc:
            yield self._failure(ref, str(exc))
            return
        except OSError as exc:
            yield self._failure(ref, _read_error(ref.uri, exc))
            return
        except Exception as exc:  # remote filesystem errors
            yield self._failure(ref, f"cannot read the file: {type(exc).__name__}: {exc}")
            return
        try:
            if os.path.getsize(path) == 0:
                raise DecodeError("empty file (0 bytes)")
            o = self._options
            sampled = self._decoder.decode(path, o.max_seq_length, o.image_size, o.sampling)
        except DecodeError as exc:
            yield self._failure(ref, str(exc))
            return
        finally:
            if path != ref.uri:
                os.remove(path)
        self._decoded.inc()
        self._frames.inc(len(sampled.frame_indices))
        yield Video(ref=ref, fingerprint=fingerprint, sampled=sampled)

    def _failure(self, ref: VideoRef, reason: str):
        self._failed.inc()
        if self._progress:
            self._progress.count(failed=1)
        _LOG.warning("skipping %s: %s", ref.uri, reason)
        return beam.pvalue.TaggedOutput(FAILURES, (ref.video_id, ref.uri, reason))

    def teardown(self):
        if getattr(self, "_decoder", None) is not None:
            self._decoder.close()
        shutil.rmtree(getattr(self, "_scratch", ""), ignore_errors=True)
        if getattr(self, "_progress", None) is not None:
            self._progress.release()
            self._progress = None


class DecodeFrames(beam.PTransform):
    """PCollection[VideoRef] -> tagged outputs: main PCollection[Video], `failures` (id, uri, reason).

    With a `job_id` (the same one given to EmbedFrames), progress is logged every 10 s (see Progress)."""

    def __init__(self, options: FrameOptions, job_id: str = "", expected_videos: int = 0):
        super().__init__()
        self._dofn = DecodeFramesDoFn(options, job_id, expected_videos)

    def expand(self, refs):
        return refs | "Decode" >> beam.ParDo(self._dofn).with_outputs(FAILURES, main="videos")


class EmbedFramesDoFn(beam.DoFn):
    """Video -> Video with `features`, running DenseNet121 on batches of `batch_size` frames gathered
    across videos (a video's frames may span two batches). Frames are dropped once embedded unless
    `keep_frames`."""

    def __init__(self, weights: str, image_size: int, batch_size: int, keep_frames: bool = False,
                 expected_videos: int = 0, job_id: str = ""):
        self._weights = weights
        self._image_size = image_size
        self._batch_size = batch_size
        self._keep_frames = keep_frames
        self._expected = expected_videos
        self._job_id = job_id
        self._embedded = Metrics.counter("videos", "videos_embedded")
        self._batches = Metrics.counter("videos", "embedding_batches")
        # One DenseNet per worker process, however many threads run this DoFn.
        self._shared_embedder = shared.Shared()

    def setup(self):
        from model.backbone import FrameEmbedder, resolve_weights

        self._progress = Progress.of(self._job_id, self._expected) if self._job_id else None
        weights, image_size = self._weights, self._image_size
        self._embedder = self._shared_embedder.acquire(
            lambda: FrameEmbedder(resolve_weights(weights), image_size), tag=f"{weights}@{image_size}")
        self._done_videos = 0
        self._done_frames = 0
        self._started = None
        self._last_log = 0.0

    def start_bundle(self):
        self._queue: list[Video] = []  # videos with frames not yet embedded, oldest first
        self._offset = 0  # frames of self._queue[0] already embedded
        self._partial: list[np.ndarray] = []  # their features so far
        self._queued_frames = 0

    def process(self, video: Video):
        self._queue.append(video)
        self._queued_frames += len(video.sampled.frame_indices)
        while self._queued_frames >= self._batch_size:
            yield from self._run_batch()

    def finish_bundle(self):
        while self._queue:
            for video in self._run_batch():
                yield WindowedValue(video, MIN_TIMESTAMP, [GlobalWindow()])

    def _run_batch(self):
        """Embed the next `batch_size` frames (fewer at the end); yield the videos this completes."""
        if self._started is None:
            self._started = time.monotonic()
        pieces, owners, room = [], [], self._batch_size
        for position, video in enumerate(self._queue):
            start = self._offset if position == 0 else 0
            take = min(room, len(video.sampled.frames) - start)
            pieces.append(video.sampled.frames[start : start + take])
            owners.append(take)
            room -= take
            if room == 0:
                break
        features = self._embedder(np.concatenate(pieces))
        self._batches.inc()
        self._queued_frames -= len(features)
        self._done_frames += len(features)
        if self._progress:
            self._progress.count(frames=len(features))
        cursor = 0
        for take in owners:
            self._partial.append(features[cursor : cursor + take])
            cursor += take
            self._offset += take
            video = self._queue[0]
            if self._offset == len(video.sampled.frames):
                # A new element: Beam forbids changing the input in place.
                sampled = video.sampled if self._keep_frames else dataclasses.replace(video.sampled, frames=None)
                video = dataclasses.replace(video, sampled=sampled, features=np.concatenate(self._partial))
                self._queue.pop(0)
                self._offset, self._partial = 0, []
                self._embedded.inc()
                self._done_videos += 1
                if self._progress:
                    self._progress.count(embedded=1)
                yield video
        self._log_progress()

    def teardown(self):
        if getattr(self, "_progress", None) is not None:
            self._progress.release()
            self._progress = None

    def _log_progress(self):
        if self._progress:  # it logs by itself
            return
        now = time.monotonic()
        if now - self._last_log < 10:
            return
        self._last_log = now
        elapsed = max(now - self._started, 1e-9)
        of = f"/{self._expected}" if self._expected else ""
        _LOG.info("embedded %d%s videos, %d frames, %.1f frames/s", self._done_videos, of,
                  self._done_frames, self._done_frames / elapsed)


class EmbedFrames(beam.PTransform):
    """PCollection[Video] -> PCollection[Video] with DenseNet121 features. With a `job_id` (the same one
    given to DecodeFrames), progress is logged every 10 s (see Progress)."""

    def __init__(self, weights: str, image_size: int, batch_size: int, keep_frames: bool = False,
                 expected_videos: int = 0, job_id: str = ""):
        super().__init__()
        self._dofn = EmbedFramesDoFn(weights, image_size, batch_size, keep_frames, expected_videos, job_id)

    def expand(self, videos):
        return videos | "Embed" >> beam.ParDo(self._dofn)


def to_video_record(video: Video, options: FrameOptions, backbone_id: str) -> VideoRecord:
    """Pad the video's features to `max_seq_length` rows; the record's mask marks the real ones."""
    features = video.features
    padded = np.zeros((options.max_seq_length, features.shape[1]), np.float32)
    padded[: len(features)] = features
    sampled = video.sampled
    return VideoRecord(
        video_id=video.ref.video_id,
        uri=video.ref.uri,
        label=video.ref.label,
        features=padded,
        num_valid_frames=len(features),
        frame_indices=list(sampled.frame_indices),
        source_fps=sampled.source_fps,
        decoded_frame_count=sampled.decoded_frame_count,
        frame_height=sampled.frame_height,
        frame_width=sampled.frame_width,
        backbone_id=backbone_id,
        image_size=options.image_size,
        sampling=options.sampling,
        fingerprint=video.fingerprint,
    )


def encode_video(video: Video, options: FrameOptions, backbone_id: str, feature_encoding: str) -> bytes:
    return encode_video_record(to_video_record(video, options, backbone_id), feature_encoding)
