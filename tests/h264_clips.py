"""Small H.264 clips for the decoding tests, encoded with PyAV's libx264: a known keyframe interval, B-frames,
and frames that differ (frame `i` has brightness `3 i mod 256` plus a moving bar), optionally at a
variable frame rate."""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def numbered_frame(i: int, width: int, height: int) -> np.ndarray:
    frame = np.full((height, width, 3), (i * 3) % 256, np.uint8)
    x = (i * 5) % max(width - 8, 1)
    frame[:, x : x + 8] = (255 - (i * 3) % 256, 40, 200)
    return frame


def write_h264(path, num_frames: int, keyframe_interval: int, width: int = 96, height: int = 64, fps: int = 25,
               frame_times_s: list[float] | None = None, bframes: int = 2) -> None:
    """Encode `num_frames` numbered frames. With `frame_times_s`, frame `i` is shown at that time (a
    variable-frame-rate clip in a millisecond time base); else at `i / fps`."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_type, stream.codec_context.thread_count = "FRAME", 1
        if frame_times_s is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"preset": "veryfast", "g": str(keyframe_interval), "keyint_min": str(keyframe_interval),
                          "sc_threshold": "0", "bf": str(bframes)}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(numbered_frame(i, width, height), format="rgb24")
            if frame_times_s is not None:
                frame.pts, frame.time_base = int(round(frame_times_s[i] * 1000)), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decode_every_frame(path, size: int, pick) -> tuple[int, dict[int, np.ndarray]]:
    """The reference: decode every frame of the file's first video stream with plain PyAV (no seeking, no
    threads) to count them, then again to take the positions `pick(count)` at `size`: (count, frames)."""
    import av

    from video.frames import square_rgb

    with av.open(str(path)) as container:
        count = sum(1 for _ in container.decode(video=0))
    wanted = set(pick(count))
    with av.open(str(path)) as container:
        frames = {n: square_rgb(frame, size) for n, frame in enumerate(container.decode(video=0)) if n in wanted}
    return count, frames
