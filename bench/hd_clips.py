"""Long HD clips for the decoding benchmark, encoded here with PyAV's bundled libx264 (no downloads).

A clip is `seconds` of `width` x `height` at `fps`, H.264 (yuv420p) with a keyframe every `keyframe_interval`
frames (closed GOPs, no scene-cut keyframes, so the interval is exact) and B-frames, as phones and cameras
write it: a drifting colour gradient, a grain of noise that moves with it, and shapes that cross the frame at
different speeds, so that the encoder has real motion to code and every frame differs from its neighbours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GRAIN_STD = 3.0  # in 8-bit levels
GRAIN_BANK = 16


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A colour gradient twice the frame's width; frames are windows that drift over it."""
    x = np.linspace(0.0, 1.0, 2 * width, dtype=np.float32)[None, :, None]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)
    gradient = 0.5 + 0.35 * np.sin(2 * np.pi * (x * 1.5 + y * 0.7) + phase)
    return np.clip(gradient * 255.0, 0, 255).astype(np.uint8)


def _grain(width: int, height: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Sensor-like noise that changes every frame: a bank of noise images (int16, a few levels of std)
    taken in turn, more of them than an encoder keeps reference frames, so no frame can copy another's."""
    return [np.rint(rng.normal(0.0, GRAIN_STD, size=(height, width, 1))).astype(np.int16) for _ in range(GRAIN_BANK)]


def render_frames(width: int, height: int, count: int, fps: float, seed: int = 0):
    """`count` RGB frames `[height, width, 3]` uint8, one at a time: the gradient drifting sideways, five
    discs and bars moving across it, each on its own path and speed, and grain."""
    import cv2

    rng = np.random.default_rng(seed)
    background = _background(width, height, rng)
    grain = _grain(width, height, rng)
    shapes = [(rng.uniform(0.05, 0.12) * height, rng.uniform(40, 200), rng.uniform(0, 2 * np.pi),
               tuple(int(c) for c in rng.integers(0, 256, 3))) for _ in range(5)]
    for index in range(count):
        t = index / fps
        offset = int(t * width * 0.08) % width
        frame = np.ascontiguousarray(background[:, offset : offset + width])
        for number, (radius, speed, angle, colour) in enumerate(shapes):
            cx = int((width / 2 + np.cos(angle) * speed * t * 3) % width)
            cy = int((height / 2 + np.sin(angle + t) * height * 0.35))
            if number % 2:
                cv2.circle(frame, (cx, cy), int(radius), colour, -1)
            else:
                half = int(radius)
                cv2.rectangle(frame, (cx - 2 * half, cy - half), (cx + 2 * half, cy + half), colour, -1)
        yield np.clip(frame + grain[index % GRAIN_BANK], 0, 255).astype(np.uint8)


def write_hd_clip(path: Path, width: int, height: int, seconds: float, fps: int, keyframe_interval: int,
                  seed: int = 0, crf: int = 23) -> None:
    """Encode the clip to `path` (an .mp4) with libx264."""
    import av

    count = int(round(seconds * fps))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Frame threads, not sliced threads: one slice a frame, as most encoders write (and slice threads
        # would make decoding these clips faster than decoding what users have).
        stream.codec_context.thread_type, stream.codec_context.thread_count = "FRAME", 0
        stream.options = {"preset": "veryfast", "crf": str(crf), "g": str(keyframe_interval),
                          "keyint_min": str(keyframe_interval), "sc_threshold": "0", "bf": "2"}
        for frame in render_frames(width, height, count, fps, seed):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
