"""Matched videos -> decoded, sampled frames: the launcher's video list read back, each file read (copied
out of remote storage first), fingerprinted and decoded in an isolated child process, several videos ahead
of the embedder (video.ahead), as many decoders as the worker's cores plan (beam_jobs.cores).

A video that cannot be used leaves the main output as `(video_id, uri, reason)` on the `failures` output
and counts in `videos_failed`; programming errors raise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import stat
import tempfile

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs.cores import CoreRequest
from beam_jobs.matching import VideoRef, parse_ref
from beam_jobs.progress import Progress
from common import fs
from video.frames import DecodeError, SampledFrames

_LOG = logging.getLogger(__name__)

FAILURES = "failures"
READ_COUNTERS = {"seek": "videos_read_seeking", "through": "videos_read_through", "fallback": "videos_seek_fallbacks"}
_CHUNK = 1 << 22


@dataclasses.dataclass
class Video:
    """A video on its way through a job: where it came from, its sampled frames, and (once embedded)
    `features` `[n, D]` float32 for its `n` sampled frames (no padding yet)."""

    ref: VideoRef
    fingerprint: str
    sampled: SampledFrames
    features: np.ndarray | None = None
    previous: tuple[str, dict] | None = None  # (fingerprint, row) when an earlier labelling run knew it


@dataclasses.dataclass(frozen=True)
class FrameOptions:
    """How frames are taken from a video; recorded in every record and in a model's preprocessing."""

    max_seq_length: int = 20
    image_size: int = 128
    sampling: str = "uniform"
    decode_timeout_s: float = 120.0


class ReadVideoList(beam.PTransform):
    """The launcher's listing file (one VideoRef as JSON a line, see beam_jobs.matching) -> PCollection[VideoRef],
    read in parallel and spread across workers."""

    def __init__(self, listing_path: str):
        super().__init__()
        self._listing_path = listing_path

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadListing" >> beam.io.ReadFromText(self._listing_path)
            | "ParseRefs" >> beam.Map(parse_ref)
            | "SpreadVideos" >> beam.Reshuffle()
        )


def copy_and_hash(source, destination=None) -> str:
    """sha256 of what `source` holds, copied to `destination` on the way when one is given."""
    sha = hashlib.sha256()
    while chunk := source.read(_CHUNK):
        sha.update(chunk)
        if destination is not None:
            destination.write(chunk)
    return sha.hexdigest()


def read_error(uri: str, exc: OSError) -> str:
    """The failures.csv reason for a file that could not be read."""
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(uri):
            return "broken symbolic link (its target does not exist)"
        return "file not found (removed after it was listed?)"
    if isinstance(exc, PermissionError):
        return "cannot read the file: permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a video file"
    return f"cannot read the file: {exc.strerror or exc}"


def file_kind(mode: int) -> str:
    """What a path that is not a regular file is, for its failure reason."""
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "an unusual file type"


class DecodeFramesDoFn(beam.DoFn):
    """VideoRef -> Video with sampled frames, decoded in isolated child processes (see video.isolated) that
    work ahead of the steps after this one (video.ahead): while those embed the videos already decoded,
    `cores.decoders` children read and decode the next ones, at most `cores.max_in_flight` videos in flight.
    Videos leave in the order they finish; each leaves as a Video or a failure."""

    def __init__(self, options: FrameOptions, job_id: str = "", expected_videos: int = 0,
                 cores: CoreRequest = CoreRequest()):
        self._options = options
        self._job_id = job_id
        self._expected = expected_videos
        self._cores = cores
        self._decoded = Metrics.counter("videos", "videos_decoded")
        self._failed = Metrics.counter("videos", "videos_failed")
        self._frames = Metrics.counter("videos", "frames_sampled")
        # Bundles started: each drains the decoders working ahead at its end (a runner that splits the stage
        # into many bundles costs decoding ahead and full embedder batches; see beam_jobs.flags).
        self._bundles = Metrics.counter("videos", "decode_bundles")
        # How each video was read (video.reader): seeking, decoding through, or seeking abandoned for decoding
        # through because the container's index could not be trusted.
        self._read_methods = {method: Metrics.counter("videos", counter) for method, counter in READ_COUNTERS.items()}

    def setup(self):
        from common.shutdown import freeze_at_exit
        from video.ahead import DecodeAhead
        from video.isolated import IsolatedDecoder

        freeze_at_exit()  # an SDK worker process exits in 0.07 s instead of 0.35 s
        plan = self._cores.plan()
        timeout_s = self._options.decode_timeout_s
        self._pool = DecodeAhead(self._work, plan.decoders, plan.max_in_flight,
                                 make_decoder=lambda: IsolatedDecoder(timeout_s, decoder_threads=plan.decoder_threads))
        self._scratch = tempfile.mkdtemp(prefix="decode-")
        self._progress = Progress.of(self._job_id, self._expected) if self._job_id else None

    def _local_copy(self, ref: VideoRef) -> tuple[str, str]:
        """(local path, content fingerprint); remote files are copied to scratch space first."""
        if not fs.is_remote(ref.uri):
            mode = os.stat(ref.uri).st_mode
            if not stat.S_ISREG(mode):  # reading a named pipe would block this worker for good
                raise DecodeError(f"not a regular file ({file_kind(mode)})")
            with open(ref.uri, "rb") as source:
                return ref.uri, copy_and_hash(source)
        fd, local = tempfile.mkstemp(suffix=os.path.splitext(ref.uri)[1], dir=self._scratch)
        with fs.open_read(ref.uri) as source, os.fdopen(fd, "wb") as destination:
            return local, copy_and_hash(source, destination)

    def _read(self, ref: VideoRef) -> tuple[str, str]:
        """(local path, fingerprint), or DecodeError with the reason the file cannot be read."""
        try:
            return self._local_copy(ref)
        except OSError as exc:
            raise DecodeError(read_error(ref.uri, exc)) from None
        except DecodeError:
            raise
        except Exception as exc:  # remote filesystem errors
            raise DecodeError(f"cannot read the file: {type(exc).__name__}: {exc}") from None

    def start_bundle(self):
        self._bundles.inc()

    def process(self, element):
        """`element` is a VideoRef, or (VideoRef, previous) for the labelling job's incremental runs."""
        for outcome in self._pool.submit(element):
            yield from self._outputs(outcome)

    def finish_bundle(self):
        for outcome in self._pool.drain():
            for output in self._outputs(outcome):
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(output.tag, _in_global_window(output.value))
                else:
                    yield _in_global_window(output)

    def _work(self, decoder, element, emit):
        """On a decoder thread: read and decode one video -> its Video, or (VideoRef, reason) when it fails.
        Outputs `_sample` yields on the way are `emit`ted."""
        ref, previous = element if isinstance(element, tuple) else (element, None)
        path = None
        try:
            path, fingerprint = self._read(ref)
            if os.path.getsize(path) == 0:
                raise DecodeError("empty file (0 bytes)")
            parts = self._sample(decoder, path, ref, fingerprint, previous)
            while True:
                try:
                    emit(next(parts))
                except StopIteration as stop:
                    sampled = stop.value
                    break
        except DecodeError as exc:
            return ref, str(exc)
        finally:
            if path is not None and path != ref.uri:
                os.remove(path)
        return Video(ref=ref, fingerprint=fingerprint, sampled=sampled, previous=previous)

    def _outputs(self, outcome):
        """The outputs of an outcome of `_work` (in the DoFn's own thread, where Beam's counters count)."""
        if not outcome.final:
            self._count_partial(outcome.value)
            yield outcome.value
            return
        if not isinstance(outcome.value, Video):
            yield self._failure(*outcome.value)
            return
        video = outcome.value
        self._decoded.inc()
        self._frames.inc(len(video.sampled.frame_indices))
        self._read_methods[video.sampled.read_method].inc()
        if video.sampled.read_method == "fallback":
            _LOG.info("%s: decoded through instead of seeking: %s", video.ref.uri, video.sampled.fallback_reason)
        yield video

    def _sample(self, decoder, path: str, ref: VideoRef, fingerprint: str, previous):
        """The video's SampledFrames (raising DecodeError), from `decoder`; a generator, so that a subclass can
        emit more outputs on the way (the labelling job's windows, beam_jobs.segments). Runs on a decoder
        thread: it must not touch Beam's counters (see `_count_partial`)."""
        o = self._options
        return decoder.decode(path, o.max_seq_length, o.image_size, o.sampling)
        yield  # unreachable: it makes this method a generator

    def _count_partial(self, output) -> None:
        """Count an output `_sample` emitted, in the DoFn's thread."""

    def _failure(self, ref: VideoRef, reason: str):
        self._failed.inc()
        if self._progress:
            self._progress.count(failed=1)
        _LOG.warning("skipping %s: %s", ref.uri, reason)
        return beam.pvalue.TaggedOutput(FAILURES, (ref.video_id, ref.uri, reason))

    def teardown(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.close()
            self._pool = None
        shutil.rmtree(getattr(self, "_scratch", ""), ignore_errors=True)
        if getattr(self, "_progress", None) is not None:
            self._progress.release()
            self._progress = None


def _in_global_window(value) -> WindowedValue:
    return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])


class DecodeFrames(beam.PTransform):
    """PCollection[VideoRef] -> tagged outputs: main `videos` PCollection[Video], `failures` (id, uri, reason).

    With a `job_id` (the same one given to EmbedFrames), progress is logged every 10 s (see Progress)."""

    def __init__(self, options: FrameOptions, job_id: str = "", expected_videos: int = 0,
                 cores: CoreRequest = CoreRequest()):
        super().__init__()
        self._dofn = DecodeFramesDoFn(options, job_id, expected_videos, cores)

    def expand(self, refs):
        return refs | "Decode" >> beam.ParDo(self._dofn).with_outputs(FAILURES, main="videos")
