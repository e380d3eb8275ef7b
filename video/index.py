"""A video stream's packet index, read by demuxing alone (no decoding): where its frames and keyframes are.

Every packet's presentation timestamp (pts), decode timestamp (dts) and keyframe flag come from the
container, so building the index costs reading the file, not decoding it (about 0.05 s for a minute of
1080p). Frame `i` of the stream, in presentation order, is the packet with the `i`-th smallest pts, as long
as every packet decodes to one frame; seeking (video.reader) checks that on every frame it takes.

An index is `trusted` only when that mapping can hold: every packet has a pts, the pts are distinct, the
dts (where the container has them) strictly increase, and the stream starts with a keyframe. Otherwise
`untrusted` says why, and the reader decodes through instead of seeking.
"""

from __future__ import annotations

import dataclasses
import time
from fractions import Fraction

import numpy as np

PACKET_OVERHEAD_BYTES = 1024  # what a kept packet costs besides its data (PyAV object, AVPacket, padding)


@dataclasses.dataclass(frozen=True)
class PacketIndex:
    """The frames of one video stream as its container lists them.

    `pts` are the frames' presentation timestamps in presentation order (packets the container marks for
    discarding, before an edit list's start, are not frames); `keyframe_pts` the sorted pts of every
    keyframe packet, including discarded ones (seeking may land on them). `positions_of_keyframes` are
    the presentation indices of the keyframes that are frames. `untrusted` is empty for an index seeking
    can rely on, else the reason it cannot.
    """

    pts: np.ndarray
    keyframe_pts: np.ndarray
    time_base: Fraction
    stated_count: int
    untrusted: str = ""

    @property
    def frame_count(self) -> int:
        return len(self.pts)

    @property
    def trusted(self) -> bool:
        return not self.untrusted

    @property
    def positions_of_keyframes(self) -> np.ndarray:
        positions = np.searchsorted(self.pts, self.keyframe_pts)
        inside = positions < len(self.pts)
        return positions[inside][self.pts[positions[inside]] == self.keyframe_pts[inside]]

    def keyframe_before(self, position: int) -> tuple[int, int]:
        """(pts, presentation index) of the last keyframe at or before frame `position`: where decoding must
        start to reach it. The index is where that keyframe's pts falls among the frames (a discarded
        keyframe falls before frame 0)."""
        target = self.pts[position]
        k = int(np.searchsorted(self.keyframe_pts, target, side="right")) - 1
        if k < 0:
            raise ValueError(f"no keyframe at or before frame {position}")
        key_pts = int(self.keyframe_pts[k])
        return key_pts, int(np.searchsorted(self.pts, key_pts))

    def times_s(self, start_pts: int | None = None) -> np.ndarray:
        """The frames' presentation times in seconds from `start_pts` (default: the first frame's)."""
        start = self.pts[0] if start_pts is None and len(self.pts) else (start_pts or 0)
        return (self.pts - start).astype(np.float64) * float(self.time_base)


class IndexTimeout(Exception):
    """Reading the index ran past the deadline."""


def read_index(container, stream, deadline: float | None = None,
               keep_bytes: int = 0) -> tuple[PacketIndex, list | None]:
    """Demux every packet of `stream` (a PyAV video stream of the open `container`) and index them.

    Returns the index and, when the stream's packets (with their overhead) come to at most `keep_bytes`, the
    packets themselves (else None): decoding through them then needs no second pass over the file. Raises
    IndexTimeout past
    `deadline` (a time.monotonic() value) and the demuxer's own errors (av.error)."""
    pts, dts, key, discard = [], [], [], []
    kept: list | None = [] if keep_bytes > 0 else None
    kept_bytes = 0
    for number, packet in enumerate(container.demux(stream)):
        if not packet.size:  # the flush packet at the end of the stream
            continue
        if deadline is not None and number % 256 == 0 and time.monotonic() > deadline:
            raise IndexTimeout(f"{number} packets indexed")
        pts.append(packet.pts)
        dts.append(packet.dts)
        key.append(packet.is_keyframe)
        discard.append(packet.is_discard)
        if kept is not None:
            kept_bytes += packet.size + PACKET_OVERHEAD_BYTES
            kept.append(packet)
            if kept_bytes > keep_bytes:
                kept = None
    return _index(pts, dts, key, discard, stream), kept


def _index(pts: list, dts: list, key: list, discard: list, stream) -> PacketIndex:
    stated = int(stream.frames or 0)
    time_base = stream.time_base or Fraction(1, 1)
    reason = _why_untrusted(pts, dts, key)
    if reason:
        # The frame count is all an untrusted index gives: the packets that hold data.
        return PacketIndex(np.arange(len(pts), dtype=np.int64), np.zeros(0, np.int64), time_base, stated, reason)
    pts_array = np.asarray(pts, dtype=np.int64)
    frame_pts = np.sort(pts_array[~np.asarray(discard, dtype=bool)])
    keyframe_pts = np.sort(pts_array[np.asarray(key, dtype=bool)])
    return PacketIndex(frame_pts, keyframe_pts, time_base, stated)


def _why_untrusted(pts: list, dts: list, key: list) -> str:
    if not pts:
        return "no packets"
    if any(p is None for p in pts):
        return "packets without presentation timestamps"
    if len(set(pts)) != len(pts):
        return "repeated presentation timestamps"
    known_dts = [d for d in dts if d is not None]
    if len(known_dts) == len(dts) and any(b <= a for a, b in zip(known_dts, known_dts[1:])):
        return "decode timestamps out of order"
    if not key[0]:
        return "the stream does not start with a keyframe"
    return ""
