r"""How a training run's sets are kept apart: the held-out share of the training videos, and sets that share
no video (or, with `--split-by`, no group of videos).

    in_validation_split(ids, 0.15)                       # by a hash of each video id
    in_validation_split(ids, 0.15, split_by=r"_g(\d+)_")  # by a hash of each video's group: UCF101's clips
                                                         # of one group (same actors, same scene) stay together
    check_disjoint({"training": train_files, "test": test_files}, split_by)

A `--split-by` rule is a regular expression (RE2 syntax, as TensorFlow matches it in the input pipeline) whose
first group names a video's group; a video id that does not match it is a group of its own. The split is a
hash of the group alone, so it is the same whatever the file order, sharding or seed, and a group is never on
both sides.
"""

from __future__ import annotations

import logging
import re
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from common.errors import UserError
from tfrecords_schema.dataset import (
    SPLIT_BUCKETS,
    read_record_contexts,
    split_buckets,
    split_keys,
    split_matches,
)

logger = logging.getLogger(__name__)


def validation_threshold(fraction: float) -> int:
    """The held-out buckets are those below this (of SPLIT_BUCKETS)."""
    return int(round(fraction * SPLIT_BUCKETS))


def in_validation_split(video_ids: tf.Tensor, fraction: float, split_by: str = "") -> tf.Tensor:
    """Whether each video id falls in the held-out share `fraction`; depends on the id (or, with `split_by`,
    on its group) alone (FarmHash)."""
    return split_buckets(split_keys(video_ids, split_by)) < validation_threshold(fraction)


def check_split_rule(split_by: str) -> None:
    """Refuse a `--split-by` that is not a regular expression with a group, in Python's syntax and RE2's."""
    if not split_by:
        return
    try:
        groups = re.compile(split_by).groups
    except re.error as exc:
        raise UserError(f"--split-by {split_by!r} is not a regular expression: {exc}") from None
    if groups < 1:
        raise UserError(f"--split-by {split_by!r} has no group: its first group names a video's group, e.g. "
                        r"'_g(\d+)_' for UCF101")
    try:
        split_keys(tf.constant(["x"]), split_by).numpy()
    except tf.errors.InvalidArgumentError as exc:
        raise UserError(f"--split-by {split_by!r} is not a regular expression TensorFlow (RE2) reads: "
                        f"{exc.message.splitlines()[0]}") from None


def unmatched(video_ids: tf.Tensor, split_by: str) -> np.ndarray:
    """The indices of the ids in `video_ids` ([B] strings) that `split_by` does not match."""
    return np.flatnonzero(~split_matches(video_ids, split_by).numpy())


def check_disjoint(sets: Mapping[str, Sequence[str]], split_by: str = "") -> None:
    """Refuse sets (name -> record files) that share a video id, or with `split_by` a group: one line naming
    it. Reads the records' contexts (ids only, no frame): the ids of every set but the largest are held (as
    64-bit fingerprints), the largest is streamed past them."""
    names = sorted(sets, key=lambda name: len(sets[name]))
    seen: dict[int, tuple[str, str]] = {}  # fingerprint -> (set, id)
    for position, name in enumerate(names):
        last = position == len(names) - 1
        for batch in read_record_contexts(sets[name]):
            ids = batch["video_id"]
            keys = tf.strings.to_hash_bucket_fast(split_keys(ids, split_by), 2**63 - 1).numpy()
            for key, video_id in zip(keys.tolist(), ids.numpy()):
                other = seen.get(key)
                if other is not None and other[0] != name:
                    if split_by:
                        raise UserError(f"the {other[0]} and {name} sets share group "
                                        f"{_group(video_id.decode(), split_by)!r} (--split-by {split_by}): "
                                        f"{other[1]!r} and {video_id.decode()!r}; a group must be in one set only")
                    raise UserError(f"the {other[0]} and {name} sets share video id {other[1]!r}; a video must be "
                                    f"in one set only")
                if not last:
                    seen.setdefault(key, (name, video_id.decode()))


def _group(video_id: str, split_by: str) -> str:
    match = re.search(split_by, video_id, re.DOTALL)
    return match.group(1) if match else video_id


def describe_split(fraction: float, split_by: str) -> str:
    """How a held-out share was chosen, for the model card and the log."""
    if split_by:
        return (f"{fraction:.0%} of the training videos, held out by a hash of each video's group (`--split-by "
                f"{split_by}`: the first group of that expression in the video id), so that no group is in two "
                f"sets (`--validation-split {fraction}`)")
    return (f"{fraction:.0%} of the training videos, held out by a hash of the video id (`--validation-split "
            f"{fraction}`)")
