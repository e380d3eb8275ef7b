"""Preview one video's labels: an animated GIF of the frames the model sees, with its top labels drawn on.

    python -m model.preview clips/growing/growing_0003.mp4 --model models/run1 --out preview.gif

The frames are sampled exactly as the labelling job samples them for this model (the frame count, image
size and sampling recorded in its preprocessing.json), embedded with the backbone the model was trained on
(its backbone id names the weights: ImageNet, seeded random, or a weights file given with --weights), and
classified once; the GIF shows each sampled frame, larger than the model sees it, with the top-k labels and
their probabilities under it, like the animation of the Keras video-transformer example. The predictions
are printed too.

Frames come from `video.frames.decode_and_sample`, the decoder the featurize and labelling jobs use.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import os
import sys
import time
from typing import Sequence

import numpy as np

from common import fs
from common.errors import UserError
from common.publish import write_atomically
from model.engines import ENGINES, PRECISIONS
from video.frames import DecodeError, decode_and_sample

_LOG = logging.getLogger(__name__)

DEFAULT_DISPLAY_SIZE = 256
MIN_DISPLAY_SIZE = 128
# Colours (RGB) of the drawing; the bars' colours are what tests measure.
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
TRACK = (225, 225, 225)
BAR = (46, 125, 220)
BAR_HEIGHT = 5

EXAMPLES = """examples:
  # the top 3 labels of one video, drawn on its sampled frames:
  python -m model.preview data/new/clip_0007.mp4 --model models/run1 --out clip_0007.gif

  # a model trained on features of a DenseNet121 weights file, larger frames, slower animation:
  python -m model.preview gs://bucket/videos/a.avi --model gs://bucket/models/run2 \\
      --weights densenet121_notop.h5 --size 384 --fps 4 --out a.gif
"""


@dataclasses.dataclass
class PreviewFrames:
    """Frames sampled from one video: `model_frames` `[n, image_size, image_size, 3]` uint8 RGB (what the
    labelling job embeds), `display_frames` `[n, display_size, display_size, 3]` uint8 RGB (the same frames,
    larger), `frame_indices` their positions among the `decoded_frame_count` decoded frames."""

    model_frames: np.ndarray
    display_frames: np.ndarray
    frame_indices: list[int]
    decoded_frame_count: int


@dataclasses.dataclass(frozen=True)
class Preview:
    """What `run` made: the class probabilities `[num_classes]` (in `labels` order), the top-k
    (label, probability) pairs best first, the sampled frame indices and where the GIF went."""

    probabilities: np.ndarray
    labels: list[str]
    top: list[tuple[str, float]]
    frame_indices: list[int]
    out: str
    seconds: float


# --- Decoding ---------------------------------------------------------------------------------------------


def read_sampled_frames(path: str, max_seq_length: int, image_size: int, sampling: str = "uniform",
                        display_size: int = DEFAULT_DISPLAY_SIZE) -> PreviewFrames:
    """Decode the local video `path` and sample frames exactly as the labelling job does (`video.frames`),
    with a larger copy of each for display. A video that cannot be used is a UserError."""
    try:
        sampled = decode_and_sample(path, max_seq_length, image_size, sampling, display_size=display_size)
    except DecodeError as exc:
        raise UserError(f"{path}: {exc}") from None
    return PreviewFrames(
        model_frames=sampled.frames,
        display_frames=sampled.display_frames,
        frame_indices=sampled.frame_indices,
        decoded_frame_count=sampled.decoded_frame_count,
    )


# --- Drawing -----------------------------------------------------------------------------------------------


def _font(size: int):
    from PIL import ImageFont
    import matplotlib

    # matplotlib (a dependency already) ships DejaVu Sans: the same text on every machine, no system fonts.
    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    try:
        return ImageFont.truetype(path, size)
    except OSError:
        return ImageFont.load_default(size=size)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where things go on a preview frame of side `size`: the frame on top, then one line per label (text,
    then a bar `BAR_HEIGHT` px high whose filled part is the probability)."""

    size: int
    lines: int

    @property
    def font_size(self) -> int:
        return max(11, self.size // 18)

    @property
    def pad(self) -> int:
        return max(6, self.size // 32)

    @property
    def line_height(self) -> int:
        return self.font_size + BAR_HEIGHT + 9

    @property
    def height(self) -> int:
        return self.size + 2 * self.pad + self.lines * self.line_height

    def bar_box(self, line: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the bar track of `line` (0 = best), right/bottom exclusive."""
        top = self.size + self.pad + line * self.line_height + self.font_size + 4
        return self.pad, top, self.size - self.pad, top + BAR_HEIGHT


def fit_text(draw, text: str, font, width: float) -> str:
    """`text`, cut short with an ellipsis where it would be wider than `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "\u2026", font=font) > width:
        text = text[:-1]
    return text + "\u2026"


def draw_frame(frame: np.ndarray, top: Sequence[tuple[str, float]], position: int, total: int):
    """One GIF frame (a PIL image): the display frame `[S, S, 3]`, a 'k/n' counter on it, and the top labels
    with percentages and bars under it."""
    from PIL import Image, ImageDraw

    layout = Layout(frame.shape[0], len(top))
    image = Image.new("RGB", (layout.size, layout.height), BACKGROUND)
    image.paste(Image.fromarray(frame), (0, 0))
    draw = ImageDraw.Draw(image)
    font = _font(layout.font_size)
    counter = f"{position + 1}/{total}"
    left, upper, right, lower = draw.textbbox((0, 0), counter, font=font)
    draw.rectangle((0, 0, right - left + 2 * layout.pad, lower + layout.pad), fill=(0, 0, 0))
    draw.text((layout.pad, layout.pad // 2), counter, fill=(255, 255, 255), font=font)
    for line, (label, probability) in enumerate(top):
        bar_left, bar_top, bar_right, bar_bottom = layout.bar_box(line)
        text_top = bar_top - layout.font_size - 4
        percent = f"{100 * probability:.1f}%"
        room = bar_right - bar_left - draw.textlength(" " + percent, font=font)
        draw.text((bar_left, text_top), fit_text(draw, f"{line + 1}. {label}", font, room), fill=TEXT, font=font)
        draw.text((bar_right, text_top), percent, fill=TEXT, font=font, anchor="ra")
        draw.rectangle((bar_left, bar_top, bar_right - 1, bar_bottom - 1), fill=TRACK)
        filled = round((bar_right - bar_left) * min(max(probability, 0.0), 1.0))
        if filled:
            draw.rectangle((bar_left, bar_top, bar_left + filled - 1, bar_bottom - 1), fill=BAR)
    return image


def gif_bytes(frames: np.ndarray, top: Sequence[tuple[str, float]], fps: float) -> bytes:
    """The animated GIF (looping) of `frames` `[n, S, S, 3]` with `top` drawn on each."""
    images = [draw_frame(frame, top, i, len(frames)) for i, frame in enumerate(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0)
    return buffer.getvalue()


# --- The command -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.preview",
        description="Write an animated GIF of the frames a model sees in one video (sampled as the labelling\n"
                    "job samples them), with the model's top labels and probabilities drawn on it; print the\n"
                    "top labels.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("video", metavar="VIDEO", help="the video file (local or gs://)")
    parser.add_argument("--model", required=True, help="model directory written by python -m model.train")
    parser.add_argument("--out", required=True, metavar="GIF", help="where to write the GIF (local or gs://)")
    parser.add_argument("--top-k", type=int, default=3, help="labels drawn and printed (default: %(default)s)")
    parser.add_argument("--size", type=int, default=DEFAULT_DISPLAY_SIZE,
                        help="side of the frames in the GIF, in pixels (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=10.0, help="GIF frames per second (default: %(default)s)")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="what runs DenseNet121, as in the jobs: auto is TensorFlow with a GPU, else OpenVINO "
                             "(default: %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="as in the jobs; auto follows the model's features (int8 or a float precision) "
                             "(default: %(default)s)")
    parser.add_argument("--weights", default=None,
                        help="DenseNet121 weights file, needed only when the model was trained on features of "
                             "a weights file (imagenet and random backbones are rebuilt from the model)")
    return parser


def _validate(args) -> None:
    if not args.out.lower().endswith(".gif"):
        raise UserError(f"--out must name a .gif file, got {args.out}")
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if args.size < MIN_DISPLAY_SIZE:
        raise UserError(f"--size must be at least {MIN_DISPLAY_SIZE} pixels, got {args.size}")
    if not 0 < args.fps <= 100:
        raise UserError(f"--fps must be within (0, 100], got {args.fps:g}")


def _read_video(uri: str, spec, display_size: int) -> PreviewFrames:
    if fs.is_dir(uri):
        raise UserError(f"{uri} is a directory; give one video file")
    if not fs.exists(uri):
        raise UserError(f"video {uri} does not exist")
    with fs.local_copy(uri) as local:
        return read_sampled_frames(local, spec.max_seq_length, spec.image_size, spec.sampling, display_size)


def classify_frames(loaded, frames: np.ndarray, embedder) -> np.ndarray:
    """Sampled frames `[n, S, S, 3]` uint8 -> class probabilities `[num_classes]` from the loaded model
    directory, embedded by `embedder` (model.engines), padded to its frame count and masked as the labelling
    job does."""
    from tfrecords_schema import pad_features

    features = embedder(frames)
    padded, mask = pad_features(features, loaded.spec.max_seq_length)
    inputs = {"features": padded[None], "mask": mask[None]}
    probabilities = np.asarray(loaded.model.predict_on_batch(inputs), np.float64)[0]
    return probabilities / probabilities.sum()


def run(argv: Sequence[str] | None = None) -> Preview:
    """Make the preview the command line asks for; returns what it made."""
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    _validate(args)
    from model import backbone, engines
    from model.export import load_model_dir

    loaded = load_model_dir(args.model)
    backbone.ensure_available(backbone.weights_for_backbone_id(loaded.spec.backbone_id, args.weights))
    options = engines.options_for_backbone(loaded.spec.backbone_id, loaded.spec.image_size, args.engine,
                                           args.precision, args.weights)
    frames = _read_video(args.video, loaded.spec, args.size)
    # An int8 model's features come from a network calibrated on frames; the preview has this video's.
    embedder = engines.make_embedder(options, batch_size=loaded.spec.max_seq_length,
                                     calibration_frames=frames.model_frames if options.quantised else None)
    probabilities = classify_frames(loaded, frames.model_frames, embedder)
    order = np.argsort(-probabilities, kind="stable")[: args.top_k]
    top = [(loaded.labels[i], float(probabilities[i])) for i in order]
    write_atomically(args.out, gif_bytes(frames.display_frames, top, args.fps))
    seconds = time.monotonic() - started
    print(f"{args.video}: {top[0][0]}")
    for label, probability in top:
        print(f"  {label:>16}: {100 * probability:6.2f}%")
    print(f"preview: {len(frames.frame_indices)} sampled frames (of {frames.decoded_frame_count}) -> {args.out} "
          f"in {seconds:.1f} s")
    return Preview(probabilities, list(loaded.labels), top, frames.frame_indices, args.out, seconds)


if __name__ == "__main__":
    from common.cli import main, quiet_tensorflow
    from tfrecords_schema import RecordError

    quiet_tensorflow()
    sys.exit(main(run, user_errors=(RecordError,)))
