"""Labelled synthetic clips whose classes only temporal order separates, for demos, tests and benchmarks.

The six default classes come in pairs that show the same frames in opposite order:

    growing      / shrinking      a filled shape whose size grows / shrinks over the clip
    fading_in    / fading_out     the shape (and, to a random degree, the scene) brightening / darkening
    hue_forward  / hue_backward   the shape's colour turning from red through yellow to green, cyan or
                                  blue / the same turn from the cool end back to red

Each of these changes alters a frame's global colour statistics, so it survives DenseNet121's global
average pooling; position alone would not, which is why there are no left-vs-right motion classes. The
shape's centre drifts a little in a random direction, so motion carries no label. A per-frame classifier
can at best guess between the two classes of a pair; the order of the frames is the only signal.

Within a set, clip `shrinking_0003` is literally `growing_0003` reversed (same seed key, same size, length
and codec), and likewise for the other pairs. Per clip the generator varies the shape (ellipse or rotated
rectangle), its colour and base size, the background colour, texture and noise, the clip length, the
frame size (non-square and odd sizes such as 96x72 and 176x144) and the codec/container (mp4v .mp4,
XVID .avi, MJPG .avi). Every file written is re-opened and decoded with `cv2.VideoCapture` before it is
kept. `--extra-classes` adds order-free controls (`static`, `flicker`).

Run:
    python -m tools.sample_videos demo_videos --per-class 10 --seed 0

which writes demo_videos/<label>/<label>_<NNNN>.<ext> and demo_videos/labels.csv (header
`video_name,tag`, like UCF101 top-5's train.csv).
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import dataclasses
import functools
import logging
import math
import os
import sys
import tempfile
from typing import Sequence

import cv2
import numpy as np

_LOG = logging.getLogger(__name__)

# Forward class first, its reverse second.
ORDER_PAIRS: tuple[tuple[str, str], ...] = (
    ("growing", "shrinking"),
    ("fading_in", "fading_out"),
    ("hue_forward", "hue_backward"),
)
CLASSES: tuple[str, ...] = tuple(label for pair in ORDER_PAIRS for label in pair)
ORDER_FREE_CLASSES: tuple[str, ...] = ("static", "flicker")
ALL_CLASSES: tuple[str, ...] = CLASSES + ORDER_FREE_CLASSES

# The class showing the same frames in reverse order; order-free classes have none.
REVERSE_CLASS: dict[str, str] = {**dict(ORDER_PAIRS), **{b: a for a, b in ORDER_PAIRS}}
_BACKWARD_CLASSES = frozenset(b for _, b in ORDER_PAIRS)
# Classes of one family share parameters and frames; the family key also seeds the set's clips.
_FAMILY = {
    "growing": "size", "shrinking": "size",
    "fading_in": "brightness", "fading_out": "brightness",
    "hue_forward": "hue", "hue_backward": "hue",
    "static": "static", "flicker": "flicker",
}
_FAMILIES = ("size", "brightness", "hue", "static", "flicker")

CODEC_EXTENSIONS: dict[str, str] = {"mp4v": ".mp4", "XVID": ".avi", "MJPG": ".avi"}
DEFAULT_CODECS: tuple[str, ...] = tuple(CODEC_EXTENSIONS)
# (width, height). Even sides only: the codecs silently crop odd sides to even.
DEFAULT_SIZES: tuple[tuple[int, int], ...] = (
    (96, 72), (128, 128), (160, 120), (120, 160), (176, 144), (320, 240),
)
DEFAULT_FPS = 25.0
LABELS_CSV = "labels.csv"
LABELS_CSV_HEADER = ("video_name", "tag")

_TEXTURES = ("flat", "gradient", "blotches")
_SHAPES = ("ellipse", "rectangle")
_HUE_WARM_START = 0.0    # degrees: red
_HUE_WARM_SPREAD = 40.0  # the start varies over +-20 degrees
_HUE_EXTRA_TURN = 60.0   # added to the drawn 90-180 degree turn: 150-240 degrees, to green, cyan or blue
_DRAW_SHIFT = 4  # OpenCV drawing with 1/16-pixel precision, so sizes change smoothly frame to frame.


class ClipWriteError(RuntimeError):
    """A clip could not be written, or the written file did not decode back to the frames given."""


class CodecUnavailableError(ClipWriteError):
    """This OpenCV build cannot write the requested codec into the requested container."""


@dataclasses.dataclass(frozen=True)
class ClipParams:
    """Everything that determines a clip's frames; `render_frames(params)` is a pure function of it.

    Sizes are half-extents in pixels, hues in degrees, gains multiply the shape's colour (the background
    gets `gain ** background_coupling`). Each `*_start`/`*_end` pair is interpolated linearly over the
    forward clip; a backward class renders the forward clip and reverses it.
    """

    label: str
    num_frames: int
    width: int
    height: int
    shape: str
    aspect: float              # second half-axis / first half-axis
    angle_deg: float
    centre: tuple[float, float]  # (x, y) at mid-clip
    drift: tuple[float, float]   # (dx, dy) travelled over the whole clip
    size_start: float
    size_end: float
    hue_start: float
    hue_end: float
    saturation: float
    value: float
    gain_start: float
    gain_end: float
    background_coupling: float
    flicker_depth: float       # per-frame random gain in [1 - depth, 1]; 0 except for `flicker`
    background_hsv: tuple[float, float, float]
    texture: str
    texture_amplitude: float
    texture_seed: int
    noise_sigma: float
    noise_seed: int


def _check_label(label: str) -> None:
    if label not in _FAMILY:
        raise ValueError(f"unknown class {label!r}; known: {', '.join(ALL_CLASSES)}")


def _check_frame_size(width: int, height: int) -> None:
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"frame size must be even and at least 16x16, got {width}x{height}")


def sample_clip_params(label: str, rng: np.random.Generator, num_frames: int, width: int,
                       height: int) -> ClipParams:
    """Draws a clip's scene from `rng`.

    The draws do not depend on `label`, so two labels given generators in the same state get the same
    scene (and leave the generators in the same state); only the family's start/end values differ.
    """
    _check_label(label)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    _check_frame_size(width, height)
    short_side = min(width, height)

    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    aspect = float(rng.uniform(0.7, 1.4))
    angle_deg = float(rng.uniform(0.0, 180.0))
    centre = (width / 2 + float(rng.uniform(-0.12, 0.12)) * width,
              height / 2 + float(rng.uniform(-0.12, 0.12)) * height)
    drift_angle = float(rng.uniform(0.0, 2 * math.pi))
    drift_length = float(rng.uniform(0.0, 0.06)) * short_side
    drift = (drift_length * math.cos(drift_angle), drift_length * math.sin(drift_angle))

    base_size = float(rng.uniform(0.22, 0.36)) * short_side
    small_fraction = float(rng.uniform(0.1, 0.3))
    large_fraction = float(rng.uniform(1.0, 1.3))
    hue = float(rng.uniform(0.0, 360.0))
    hue_shift = float(rng.uniform(90.0, 180.0))
    dim_gain = float(rng.uniform(0.1, 0.3))
    bright_gain = float(rng.uniform(0.85, 1.0))
    background_coupling = float(rng.uniform(0.3, 1.0))
    flicker_depth = float(rng.uniform(0.3, 0.6))

    # Dark muted background with a bright shape, or light muted background with a saturated, darker
    # shape: either way the shape stands out by at least ~60 grey levels in some channel.
    light_background = bool(rng.random() < 0.35)
    background_hue = float(rng.uniform(0.0, 360.0))
    if light_background:
        background_hsv = (background_hue, float(rng.uniform(0.0, 0.25)), float(rng.uniform(0.7, 0.9)))
        saturation, value = float(rng.uniform(0.7, 1.0)), float(rng.uniform(0.45, 0.8))
    else:
        background_hsv = (background_hue, float(rng.uniform(0.0, 0.35)), float(rng.uniform(0.08, 0.4)))
        saturation, value = float(rng.uniform(0.55, 1.0)), float(rng.uniform(0.75, 1.0))
    texture = _TEXTURES[int(rng.integers(len(_TEXTURES)))]
    texture_amplitude = float(rng.uniform(4.0, 20.0))
    texture_seed = int(rng.integers(2**63))
    noise_sigma = float(rng.uniform(0.0, 6.0))
    noise_seed = int(rng.integers(2**63))

    family = _FAMILY[label]
    size_start = size_end = base_size
    hue_start = hue_end = hue
    gain_start = gain_end = 1.0
    if family == "size":
        size_start, size_end = base_size * small_fraction, base_size * large_fraction
    elif family == "brightness":
        gain_start, gain_end = dim_gain, bright_gain
    elif family == "hue":
        # Always from the warm end of the circle (red) to the cool end (cyan to blue), never across it:
        # with a random start, telling the two directions apart means reading the sense of a rotation on
        # a circle, which a linear probe on first and last frame features could not do (50% within the
        # pair, 30 clips per class) while it read size and brightness order at 95%.
        hue_start = _HUE_WARM_START + (hue / 360.0 - 0.5) * _HUE_WARM_SPREAD
        hue_end = hue_start + hue_shift + _HUE_EXTRA_TURN
    return ClipParams(
        label=label, num_frames=num_frames, width=width, height=height, shape=shape, aspect=aspect,
        angle_deg=angle_deg, centre=centre, drift=drift, size_start=size_start, size_end=size_end,
        hue_start=hue_start, hue_end=hue_end, saturation=saturation, value=value,
        gain_start=gain_start, gain_end=gain_end, background_coupling=background_coupling,
        flicker_depth=flicker_depth if family == "flicker" else 0.0, background_hsv=background_hsv,
        texture=texture, texture_amplitude=texture_amplitude, texture_seed=texture_seed,
        noise_sigma=noise_sigma, noise_seed=noise_seed)


def _hsv_to_bgr(hue_deg: float, saturation: float, value: float) -> np.ndarray:
    red, green, blue = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, saturation, value)
    return np.array([blue, green, red], dtype=np.float32) * 255.0


def _render_background(params: ClipParams) -> np.ndarray:
    """The still background, float32 [height, width, 3] BGR in grey levels."""
    height, width = params.height, params.width
    background = np.broadcast_to(_hsv_to_bgr(*params.background_hsv), (height, width, 3)).copy()
    texture_rng = np.random.default_rng(params.texture_seed)
    if params.texture == "gradient":
        angle = texture_rng.uniform(0.0, 2 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = (xs / width - 0.5) * math.cos(angle) + (ys / height - 0.5) * math.sin(angle)
        background += (2 * params.texture_amplitude * ramp)[..., None]
    elif params.texture == "blotches":
        cells = texture_rng.uniform(-1.0, 1.0, size=(int(texture_rng.integers(3, 7)),
                                                     int(texture_rng.integers(3, 7)), 3))
        background += params.texture_amplitude * cv2.resize(
            cells.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    return background


def _shape_coverage(params: ClipParams, centre: tuple[float, float],
                    size: float) -> tuple[slice, slice, np.ndarray] | None:
    """Anti-aliased coverage of the shape over its bounding box: (rows, columns, float32 [h, w, 1] in
    [0, 1]), or None when the shape lies outside the frame. Drawing only the box keeps large frames cheap.
    """
    axes = (size, size * params.aspect)
    reach = max(axes) * (math.sqrt(2.0) if params.shape == "rectangle" else 1.0) + 2.0
    left, top = max(int(centre[0] - reach), 0), max(int(centre[1] - reach), 0)
    right = min(int(math.ceil(centre[0] + reach)) + 1, params.width)
    bottom = min(int(math.ceil(centre[1] + reach)) + 1, params.height)
    if left >= right or top >= bottom:
        return None
    mask = np.zeros((bottom - top, right - left), dtype=np.uint8)
    scale = 1 << _DRAW_SHIFT
    local_centre = (centre[0] - left, centre[1] - top)
    if params.shape == "ellipse":
        cv2.ellipse(mask, (round(local_centre[0] * scale), round(local_centre[1] * scale)),
                    (round(axes[0] * scale), round(axes[1] * scale)), params.angle_deg, 0, 360, 255,
                    thickness=-1, lineType=cv2.LINE_AA, shift=_DRAW_SHIFT)
    else:
        corners = cv2.boxPoints((local_centre, (2 * axes[0], 2 * axes[1]), params.angle_deg))
        cv2.fillConvexPoly(mask, np.round(corners * scale).astype(np.int32), 255,
                           lineType=cv2.LINE_AA, shift=_DRAW_SHIFT)
    coverage = mask.astype(np.float32)[..., None]
    coverage *= 1.0 / 255.0
    return slice(top, bottom), slice(left, right), coverage


# Per-frame noise is a random crop of one of a few pre-drawn fields: white noise to the eye and to a
# CNN, at a fraction of the cost of drawing every pixel of every frame.
_NOISE_FIELDS = 3
_NOISE_MARGIN = 8


def render_frames(params: ClipParams) -> np.ndarray:
    """Renders `params` as uint8 [num_frames, height, width, 3] BGR (OpenCV channel order)."""
    _check_label(params.label)
    count, height, width = params.num_frames, params.height, params.width
    background = _render_background(params)
    noise_rng = np.random.default_rng(params.noise_seed)
    # +0.5 so that truncating to uint8 after clipping rounds to nearest.
    noise_fields = 0.5 + params.noise_sigma * noise_rng.standard_normal(
        (_NOISE_FIELDS, height + _NOISE_MARGIN, width + _NOISE_MARGIN, 3), dtype=np.float32)
    progress = np.linspace(0.0, 1.0, count) if count > 1 else np.zeros(1)
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    for index, step in enumerate(progress):
        gain = params.gain_start + (params.gain_end - params.gain_start) * step
        if params.flicker_depth:
            gain *= 1.0 - params.flicker_depth * noise_rng.random()
        centre = (params.centre[0] + params.drift[0] * (step - 0.5),
                  params.centre[1] + params.drift[1] * (step - 0.5))
        size = params.size_start + (params.size_end - params.size_start) * step
        hue = params.hue_start + (params.hue_end - params.hue_start) * step
        frame = background * np.float32(gain ** params.background_coupling)
        shape = _shape_coverage(params, centre, size)
        if shape is not None:
            rows, columns, coverage = shape
            region = frame[rows, columns]
            region += (_hsv_to_bgr(hue, params.saturation, params.value) * gain - region) * coverage
        field, dy, dx = noise_rng.integers((_NOISE_FIELDS, _NOISE_MARGIN + 1, _NOISE_MARGIN + 1))
        frame += noise_fields[field, dy:dy + height, dx:dx + width]
        np.clip(frame, 0.0, 255.0, out=frame)
        frames[index] = frame
    if params.label in _BACKWARD_CLASSES:
        frames = np.ascontiguousarray(frames[::-1])
    return frames


def render_clip(label: str, rng: np.random.Generator, num_frames: int, width: int,
                height: int) -> np.ndarray:
    """A clip of class `label`: uint8 [num_frames, height, width, 3] BGR (OpenCV channel order).

    Generators in the same state give `render_clip(REVERSE_CLASS[label], ...)` equal to this clip
    reversed along time. `width` and `height` must be even (video codecs crop odd sides).
    """
    return render_frames(sample_clip_params(label, rng, num_frames, width, height))


def _count_decoded_frames(path: str) -> tuple[int, tuple[int, ...] | None]:
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            return 0, None
        count, shape = 0, None
        while True:
            ok, frame = capture.read()
            if not ok:
                return count, shape
            count, shape = count + 1, frame.shape
    finally:
        capture.release()


def write_clip(path: str, frames: np.ndarray, fourcc: str = "mp4v", fps: float = DEFAULT_FPS) -> None:
    """Writes uint8 [frames, height, width, 3] BGR `frames` to `path` with OpenCV's VideoWriter.

    The container follows `path`'s extension. The file is written under a temporary name, decoded back
    with `cv2.VideoCapture` and only then moved to `path`, so `path` never holds a partial or
    undecodable clip. Raises `CodecUnavailableError` when this OpenCV build cannot write `fourcc`, and
    `ClipWriteError` when the written file does not decode to the same number and size of frames.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"frames must be uint8 [frames, height, width, 3] with at least one frame, "
                         f"got {frames.dtype} {frames.shape}")
    count, height, width = frames.shape[:3]
    if width % 2 or height % 2:
        raise ValueError(f"frame size must be even (codecs crop odd sides), got {width}x{height}")
    if len(fourcc) != 4:
        raise ValueError(f"fourcc must be 4 characters, got {fourcc!r}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    directory, name = os.path.split(path)
    stem, extension = os.path.splitext(name)
    if not extension:
        raise ValueError(f"path needs an extension naming the container (.mp4, .avi), got {path!r}")
    partial = os.path.join(directory, f".{stem}.partial{extension}")
    try:
        writer = cv2.VideoWriter(partial, cv2.VideoWriter_fourcc(*fourcc), float(fps), (width, height))
        try:
            if not writer.isOpened():
                raise CodecUnavailableError(
                    f"this OpenCV build cannot write {fourcc} into {extension} files")
            for frame in frames:
                writer.write(np.ascontiguousarray(frame))
        finally:
            writer.release()
        decoded_count, decoded_shape = _count_decoded_frames(partial)
        if decoded_count != count or decoded_shape != (height, width, 3):
            raise ClipWriteError(
                f"{path}: wrote {count} frames of {width}x{height} with {fourcc}, but decoding gave "
                f"{decoded_count} frames of shape {decoded_shape}")
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


@functools.lru_cache(maxsize=None)
def codec_available(fourcc: str) -> bool:
    """Whether this OpenCV build writes `fourcc` (a `CODEC_EXTENSIONS` key) to a file it can decode."""
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="codec_probe_") as directory:
        try:
            write_clip(os.path.join(directory, "probe" + CODEC_EXTENSIONS[fourcc]), frames, fourcc)
        except ClipWriteError:
            return False
    return True


def _resolve_codecs(codecs: Sequence[str]) -> dict[str, str]:
    """Maps each requested codec to itself, or to the first available one when this build lacks it."""
    available = [codec for codec in codecs if codec_available(codec)]
    if not available:
        raise CodecUnavailableError(
            f"this OpenCV build can write none of the codecs {', '.join(codecs)}")
    resolved = {}
    for codec in codecs:
        resolved[codec] = codec if codec in available else available[0]
        if resolved[codec] != codec:
            _LOG.warning("codec %s is unavailable in this OpenCV build; writing its clips with %s instead",
                         codec, resolved[codec])
    return resolved


def _validate_set_args(per_class: int, seed: int, classes: Sequence[str], min_frames: int, max_frames: int,
                       sizes: Sequence[tuple[int, int]], codecs: Sequence[str]) -> None:
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not classes:
        raise ValueError("classes must name at least one class")
    for label in classes:
        _check_label(label)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must not repeat, got {list(classes)}")
    if not 2 <= min_frames <= max_frames:
        raise ValueError(f"need 2 <= min_frames <= max_frames, got {min_frames} and {max_frames}")
    if not sizes:
        raise ValueError("sizes must hold at least one (width, height)")
    for width, height in sizes:
        _check_frame_size(width, height)
    if not codecs:
        raise ValueError("codecs must name at least one codec")
    for codec in codecs:
        if codec not in CODEC_EXTENSIONS:
            raise ValueError(f"unknown codec {codec!r}; known: {', '.join(CODEC_EXTENSIONS)}")


def write_sample_set(out_dir: str, per_class: int, seed: int = 0, classes: Sequence[str] | None = None,
                     min_frames: int = 24, max_frames: int = 72,
                     sizes: Sequence[tuple[int, int]] | None = None, codecs: Sequence[str] | None = None,
                     include_order_free: bool = False, first_index: int = 0) -> list[tuple[str, str]]:
    """Writes `per_class` clips per class and `out_dir/labels.csv`; returns sorted (relative path, label).

    Clips go to `out_dir/<label>/<label>_<NNNN>.<ext>`, NNNN from `first_index` on (sets made apart for
    training and testing need distinct names: a video id must be in one set only); `first_index` changes the
    names only, not the frames. `classes` defaults to `CLASSES`, plus
    `ORDER_FREE_CLASSES` when `include_order_free`. Clip i of a class and clip i of its reverse class
    come from the same generator (keyed by seed, family and i): the same frames in opposite order, with
    the same length, frame size (drawn from `sizes`, (width, height)) and codec (drawn from `codecs`).
    """
    if classes is None:
        classes = CLASSES + (ORDER_FREE_CLASSES if include_order_free else ())
    classes = tuple(classes)
    sizes = tuple(tuple(size) for size in (sizes or DEFAULT_SIZES))
    codecs = tuple(codecs or DEFAULT_CODECS)
    _validate_set_args(per_class, seed, classes, min_frames, max_frames, sizes, codecs)
    if first_index < 0:
        raise ValueError(f"first_index must be >= 0, got {first_index}")
    codec_for = _resolve_codecs(codecs)

    written = []
    for label in classes:
        os.makedirs(os.path.join(out_dir, label), exist_ok=True)
        family_index = _FAMILIES.index(_FAMILY[label])
        for position in range(per_class):
            clip_index = first_index + position  # its name; its frames come from the seed and the position
            rng = np.random.default_rng([seed, family_index, position])
            num_frames = int(rng.integers(min_frames, max_frames + 1))
            width, height = sizes[int(rng.integers(len(sizes)))]
            codec = codec_for[codecs[int(rng.integers(len(codecs)))]]
            relative_path = f"{label}/{label}_{clip_index:04d}{CODEC_EXTENSIONS[codec]}"
            frames = render_clip(label, rng, num_frames, width, height)
            write_clip(os.path.join(out_dir, relative_path), frames, codec)
            _LOG.debug("wrote %s: %d frames of %dx%d, %s", relative_path, num_frames, width, height, codec)
            written.append((relative_path, label))
    written.sort()

    labels_path = os.path.join(out_dir, LABELS_CSV)
    partial = labels_path + ".partial"
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LABELS_CSV_HEADER)
        writer.writerows(written)
    os.replace(partial, labels_path)
    _LOG.info("wrote %d clips in %d classes to %s", len(written), len(classes), out_dir)
    return written


def _int_at_least(minimum: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(1, text)


def _non_negative_int(text: str) -> int:
    return _int_at_least(0, text)


def _class_list(text: str) -> tuple[str, ...]:
    labels = tuple(label.strip() for label in text.split(",") if label.strip())
    unknown = [label for label in labels if label not in _FAMILY]
    if unknown or not labels:
        raise argparse.ArgumentTypeError(
            f"unknown class(es) {', '.join(unknown) or repr(text)}; known: {', '.join(ALL_CLASSES)}")
    return tuple(dict.fromkeys(labels))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.sample_videos",
        description="Write labelled synthetic clips whose classes only temporal order separates "
                    f"({', '.join(CLASSES)}), plus OUT/labels.csv (video_name,tag).",
        epilog="example:\n  python -m tools.sample_videos demo_videos --per-class 10 --seed 0\n"
               "  python -m tools.sample_videos demo_videos --per-class 4 --classes growing,shrinking",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", metavar="OUT", help="output directory (created if missing)")
    parser.add_argument("--per-class", type=_positive_int, required=True, help="clips per class")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--classes", type=_class_list, default=None,
                        help=f"comma-separated classes (default: the six order-dependent ones); "
                             f"known: {', '.join(ALL_CLASSES)}")
    parser.add_argument("--first-index", type=_non_negative_int, default=0,
                        help="number the clips from this one on (their names, not their frames): sets made apart "
                             "for training and testing need distinct names (default: %(default)s)")
    parser.add_argument("--min-frames", type=int, default=24, help="shortest clip (default: %(default)s)")
    parser.add_argument("--max-frames", type=int, default=72, help="longest clip (default: %(default)s)")
    parser.add_argument("--extra-classes", action="store_true",
                        help=f"also write the order-free classes ({', '.join(ORDER_FREE_CLASSES)})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not 2 <= args.min_frames <= args.max_frames:
        parser.error(f"need 2 <= --min-frames <= --max-frames, got {args.min_frames} and {args.max_frames}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"OUT exists and is not a directory: {args.out}")
    classes = args.classes or CLASSES
    if args.extra_classes:
        classes = tuple(dict.fromkeys(classes + ORDER_FREE_CLASSES))

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        written = write_sample_set(args.out, args.per_class, seed=args.seed, classes=classes,
                                   min_frames=args.min_frames, max_frames=args.max_frames,
                                   first_index=args.first_index)
    except ClipWriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    labels_path = os.path.join(args.out, LABELS_CSV)
    print(f"wrote {len(written)} clips ({len(classes)} classes) under {args.out}; labels in {labels_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
