"""The frames int8 calibrates on, chosen by the launcher and read back by every worker.

    calibration = prepare_calibration([ref.uri for ref in refs], frame_options, fs.join(staging, CALIBRATION_FILE))
    options = dataclasses.replace(options, calibration=calibration.path)   # workers load the same frames

Up to `CALIBRATION_VIDEOS` videos spread evenly over the sorted list (the job's own inputs, or a
`--calibration` folder), each decoded in the isolated child process and sampled as the job samples it, until
`CALIBRATION_FRAMES` frames. The choice depends only on the list, so the same inputs give the same frames,
the same digest and the same int8 network; what was used goes into the manifest (`Calibration.manifest`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from beam_jobs.decode import FrameOptions
from common import fs
from common.errors import UserError

_LOG = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.npy"
CALIBRATION_VIDEOS = 32
CALIBRATION_FRAMES = 256


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Calibration frames written to `path` (uint8 `[frames, S, S, 3]`), their digest, and where they came from."""

    path: str
    digest: str
    source: str  # "inputs" (the job's own videos) or the --calibration patterns
    videos: tuple[str, ...]
    frames: int

    def manifest(self) -> dict:
        return {"digest": self.digest, "source": self.source, "frames": self.frames, "videos": list(self.videos)}


def spread(items: Sequence[str], count: int) -> list[str]:
    """`count` items evenly spread over sorted `items` (all of them when there are no more)."""
    items = sorted(items)
    if len(items) <= count:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def sample_calibration_frames(uris: Sequence[str], options: FrameOptions, max_videos: int = CALIBRATION_VIDEOS,
                              max_frames: int = CALIBRATION_FRAMES) -> tuple[np.ndarray, list[str]]:
    """(uint8 `[n, S, S, 3]` frames, the videos they came from): the job's sampling of up to `max_videos`
    videos spread over `uris`, at most `max_frames` frames. A video that cannot be decoded is skipped."""
    from video.frames import DecodeError
    from video.isolated import IsolatedDecoder

    frames, used, total = [], [], 0
    decoder = IsolatedDecoder(timeout_s=options.decode_timeout_s)
    try:
        for uri in spread(uris, max_videos):
            try:
                with fs.local_copy(uri) as local:
                    sampled = decoder.decode(local, options.max_seq_length, options.image_size, options.sampling)
            except (DecodeError, OSError) as exc:
                _LOG.warning("calibration: skipping %s: %s", uri, exc)
                continue
            take = sampled.frames[: max_frames - total]
            frames.append(take)
            used.append(uri)
            total += len(take)
            if total >= max_frames:
                break
    finally:
        decoder.close()
    if not frames:
        raise UserError(f"--precision int8: none of the {len(uris)} calibration videos could be decoded")
    return np.concatenate(frames), used


def prepare_calibration(uris: Sequence[str], options: FrameOptions, path: str, source: str = "inputs") -> Calibration:
    """Sample calibration frames from `uris` and write them to `path` (in the job's staging folder)."""
    from model.engines import save_calibration

    if not uris:
        raise UserError(f"--precision int8: no videos to calibrate on ({source})")
    frames, used = sample_calibration_frames(uris, options)
    digest = save_calibration(path, frames)
    _LOG.info("int8 calibration: %d frames of %d videos (%s), digest %s", len(frames), len(used), source, digest)
    return Calibration(path, digest, source, tuple(used), len(frames))


def listing_uris(listing_path: str, listed: int, count: int = CALIBRATION_VIDEOS) -> list[str]:
    """`count` video URIs spread evenly over the launcher's listing file of `listed` lines, read as it goes."""
    from beam_jobs.matching import parse_ref

    wanted = {round(i * (listed - 1) / max(count - 1, 1)) for i in range(min(count, listed))}
    with open(listing_path, encoding="utf-8") as f:
        return [parse_ref(line).uri for i, line in enumerate(f) if i in wanted]


def calibrate(options, patterns, extensions, listing_path: str, listed: int, frame_options: FrameOptions,
              staging: str):
    """For int8 `options`: calibration frames from `patterns` (--calibration) or the job's own videos,
    staged; returns (options pointing at them, the Calibration). Other precisions pass through (None)."""
    if not options.quantised:
        return options, None
    if patterns:
        from beam_jobs.matching import iter_videos

        uris, source = [r.uri for r in iter_videos(patterns, extensions)], ", ".join(patterns)
    else:
        uris, source = listing_uris(listing_path, listed), "inputs"
    calibration = prepare_calibration(uris, frame_options, fs.join(staging, CALIBRATION_FILE), source=source)
    return dataclasses.replace(options, calibration=calibration.path), calibration
