"""The settings of one training run, `TrainConfig`, and the `python -m model.train` flags derived from it.

Each field carries its flag's help text (and metavar) in its metadata. `build_parser` makes one flag per
field and `config_from_args` turns the parsed flags back into a TrainConfig, so every default is written
once, on its field. The field's type gives the kind of flag: a tuple of patterns is a repeatable flag, a bool
a switch (`--no-<name>` when it is on by default), an int or a float takes a value and shows its default.

    config = parse_args(["--train", "features/train", "--output", "models/run-1"])
    config.epochs  # 200
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import typing
from typing import Sequence

from common.errors import UserError

# The learning-rate schedule's fixed parts: halved when the validation loss stalls, never below the floor.
LR_FACTOR = 0.5
MIN_LEARNING_RATE = 1e-5
# Where the epochs read the records from (model.datasets).
CACHE_MODES = ("auto", "memory", "disk", "none")
MEMORY_CACHE_BUDGET = 2 * 1024**3  # bytes of decoded (float32) features that `--cache auto` keeps in memory

EXAMPLES = """examples:
  # defaults: 60 warm-up epochs, then the learning rate halved after 10 epochs without a lower validation
  # loss and early stopping after 30 (up to 200 epochs), moving average of the weights kept, 15% held out
  # by video id
  python -m model.train --train features/train --test features/test --output models/run1

  # the Keras reference recipe: 5 epochs at a constant learning rate, no early stopping, raw weights, one
  # attention head
  python -m model.train --train 'features/train/features-*.tfrecord' --epochs 5 --patience 0 --lr-patience 0 \\
      --ema-momentum 0 --start-from-epoch 0 --num-heads 1 --output models/ref
"""


def _flag(default=dataclasses.MISSING, *, help: str, metavar: str | None = None, exclusive: str | None = None,
          choices: tuple[str, ...] | None = None):
    """A field with its flag's help text (and the values it may take); fields of the same `exclusive` group
    are mutually exclusive flags."""
    return dataclasses.field(default=default, metadata={"help": help, "metavar": metavar, "exclusive": exclusive,
                                                        "choices": choices})


# (field, test, what it must be): checked in this order, each a one-line UserError naming the flag.
_RULES = (
    ("epochs", lambda v: v >= 1, "at least 1"),
    ("patience", lambda v: v >= 0, "0 (no early stopping) or more"),
    ("lr_patience", lambda v: v >= 0, "0 (constant learning rate) or more"),
    ("ema_momentum", lambda v: 0.0 <= v < 1.0, "0 (no averaging) or more and below 1"),
    ("start_from_epoch", lambda v: v >= 0, "0 (judge every epoch) or more"),
    ("batch_size", lambda v: v >= 1, "at least 1"),
    ("num_heads", lambda v: v >= 1, "at least 1"),
    ("learning_rate", lambda v: v > 0, "positive"),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run, as given on the command line (the flag of `num_heads` is `--num-heads`)."""

    train: tuple[str, ...] = _flag(
        help="training feature records: a file pattern or a directory (repeatable)", metavar="PATTERN")
    validation: tuple[str, ...] = _flag(
        (), help="validation records (repeatable); default: a share of the training videos", metavar="PATTERN",
        exclusive="held out")
    validation_split: float = _flag(
        0.15, help="share of training videos held out for validation, by video id hash", metavar="FRACTION",
        exclusive="held out")
    split_by: str = _flag(
        "", metavar="REGEX",
        help="hold out by a hash of each video's group, the first group of REGEX in the video id (for UCF101 ids: "
             "'_g(\\d+)_'), so that no group is in two sets; with --validation or --test, a group in two sets is "
             "refused; default: by video id")
    test: tuple[str, ...] = _flag(
        (), help="test records, evaluated once with the final weights (repeatable, optional)", metavar="PATTERN")
    output: str = _flag(help="model directory to write (local or gs://)")
    epochs: int = _flag(200, help="most epochs to train")
    patience: int = _flag(
        30, help="stop after this many epochs without a lower validation loss; 0 trains all --epochs")
    batch_size: int = _flag(32, help="videos per training step")
    learning_rate: float = _flag(1e-3, help="Adam's learning rate at the start")
    lr_patience: int = _flag(
        10, help=f"halve the learning rate after this many epochs without a lower validation loss (not below "
                 f"{MIN_LEARNING_RATE:g}); 0 keeps it constant")
    ema_momentum: float = _flag(
        0.99, help="validate, keep and export an exponential moving average of the weights, updated every step "
                   "with this momentum, at most (1 + t) / (10 + t) at step t (so 0.99 binds only after 890 steps; "
                   "before, the average spans about the last tenth of the steps); 0 uses the raw weights")
    start_from_epoch: int = _flag(
        60, metavar="N", help="warm-up: the first N epochs are validated but not judged (no checkpoint kept, no "
                              "halving, no early stopping), like Keras's EarlyStopping(start_from_epoch=N); 0 "
                              "judges every epoch")
    num_heads: int = _flag(
        8, help="attention heads, each of key_dim feature_dim / N, so the weight count does not change; 1 is the "
                "reference model")
    seed: int = _flag(0, help="seeds weights, dropout and shuffling; same seed, same model")
    resume: bool = _flag(False, help="continue the interrupted run staged in <output>.partial")
    overwrite: bool = _flag(False, help="replace a finished model in --output")
    cache: str = _flag(
        "auto", choices=CACHE_MODES,
        help=f"where the epochs read the records from: memory (decoded, read once; each epoch permutes all of "
             f"them), disk (a local copy made in the first epoch, read as none reads the shards), none (the "
             f"shards every epoch, from random starting points, permuted in blocks); auto: memory when the "
             f"decoded sets fit {MEMORY_CACHE_BUDGET / 1024**3:g} GiB, else disk for gs:// records, else none")

    def __post_init__(self):
        for name, valid, rule in _RULES:
            value = getattr(self, name)
            if not valid(value):
                raise UserError(f"--{name.replace('_', '-')} must be {rule}, got {value}")
        if not self.validation and not 0.0 < self.validation_split < 1.0:
            raise UserError(f"--validation-split must be between 0 and 1, got {self.validation_split}")
        if self.cache not in CACHE_MODES:
            raise UserError(f"--cache must be one of {', '.join(CACHE_MODES)}, got {self.cache!r}")

    def as_json(self) -> dict:
        """The settings as JSON values (tuples as lists), as metrics.json records them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def flag_name(field: dataclasses.Field) -> str:
    """`--batch-size` for `batch_size`; `--no-cache` for a switch that is on by default."""
    name = field.name.replace("_", "-")
    return f"--no-{name}" if field.default is True else f"--{name}"


def _flag_options(field: dataclasses.Field, kind) -> dict:
    """`add_argument` keywords for one field of type `kind`."""
    options = {"dest": field.name, "help": field.metadata["help"]}
    if field.metadata["metavar"]:
        options["metavar"] = field.metadata["metavar"]
    if field.metadata["choices"]:
        options["choices"] = field.metadata["choices"]
    required = field.default is dataclasses.MISSING
    if kind is bool:
        options["action"] = "store_false" if field.default else "store_true"
    elif typing.get_origin(kind) is tuple:
        options.update({"action": "append", "required": True} if required else {"action": "append", "default": []})
    elif required:
        options.update(type=kind, required=True)
    elif field.default == "":
        options.update(type=kind, default="")
    else:
        options.update(type=kind, default=field.default, help=options["help"] + " (default: %(default)s)")
    return options


class _NoCache(argparse.Action):
    """`--no-cache`, the switch `--cache` replaced: `--cache none`, with a warning."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        logging.getLogger(__name__).warning("--no-cache is deprecated and will go: it means --cache none")
        setattr(namespace, self.dest, "none")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m model.train` parser: one flag per TrainConfig field, in field order."""
    parser = argparse.ArgumentParser(
        prog="python -m model.train",
        description="Train the video classifier on feature records and write a model directory.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = typing.get_type_hints(TrainConfig)
    groups = {}
    for field in dataclasses.fields(TrainConfig):
        target = parser
        if group := field.metadata["exclusive"]:
            if group not in groups:
                groups[group] = parser.add_mutually_exclusive_group()
            target = groups[group]
        target.add_argument(flag_name(field), **_flag_options(field, kinds[field.name]))
    parser.add_argument("--no-cache", dest="cache", action=_NoCache, help=argparse.SUPPRESS)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed flags (repeated flags become tuples); a bad value is a UserError."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{name: tuple(v) if isinstance(v, list) else v for name, v in values.items()})


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    return config_from_args(build_parser().parse_args(argv))
