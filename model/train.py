"""Train the video classifier on feature records and write a model directory (see model.export).

    python -m model.train --train 'features/train-*.tfrecord' --test 'features/test-*.tfrecord' \\
        --output models/run-1
    python -m model.train --train a/ --train b/ --validation val/ --output models/run-2 --seed 3
    python -m model.train --train features/ --output models/reference --epochs 5 --patience 0 --lr-patience 0 \\
        --ema-momentum 0 --start-from-epoch 0 --num-heads 1

Defaults (model.config): Adam starting at 1e-3, halved whenever the validation loss has not improved for 10
epochs (`--lr-patience`, down to 1e-5), batch 32, up to 200 epochs with early stopping once the validation
loss has not improved for 30 epochs, and the weights of the best epoch (lowest validation loss) kept. The
first 60 epochs are a warm-up (`--start-from-epoch`, as in Keras's EarlyStopping): validated and logged but
not judged, so the rate stays at its start, the run goes on, and the best epoch is one after them. The
weights validated, kept and exported are an exponential moving average of the training weights
(`--ema-momentum 0.99`, warmed up so that short runs average only their recent steps; `--ema-momentum 0`
uses the raw weights). The attention has 8 heads (`--num-heads`), each of key_dim feature_dim / 8: the same
weights as the reference's one head of key_dim feature_dim. `--patience 0` turns early stopping off: all
`--epochs` run and the best epoch's weights are still kept; `--epochs 5 --patience 0 --lr-patience 0
--ema-momentum 0 --start-from-epoch 0 --num-heads 1` is the keras-io reference recipe.

Without `--validation`, a `--validation-split` share (0.15) of the training videos is held out, chosen by a
hash of the video id: the same videos are held out whatever the file order, sharding or seed.

The records are streamed, never all held at once (model.datasets): each epoch reads the shards in parallel
in an order drawn from the seed and the epoch, shuffles them in bounded blocks and prefetches; `--cache`
(auto, memory, disk, none) says where later epochs read them from (memory: all of them decoded, permuted
whole every epoch). How many videos of each label every
set holds comes from featurize's manifest.json beside the shards where it says so, else from a pass over the
records' contexts, so the epoch length is known before the first step (model.data).

The vocabulary is the `labels.txt` next to the training records (featurize writes one), else the sorted
labels found in them; records of a label outside it, or whose feature dim, frame count, backbone, image
size or sampling differ from the first training record's, are refused, and so is a manifest that does not
describe its shards (model.data).

The run is staged in `<output>.partial` (a local temp dir for gs:// outputs; TensorBoard logs under `logs/`
there while it runs) and published to `<output>` only when finished, `metrics.json` last (common.publish). The
run holds `<output>`'s lease (common.lease) while it runs: a second run on the same output is skipped (exit 75).
`--resume` continues an interrupted run from its last finished epoch (same data and settings; the epochs
after the restart read the records in the order an uninterrupted run's would, with the same dropout masks,
so on the same machine it ends with the uninterrupted run's model), or publishes a finished run whose upload to
gs:// failed. A finished model in `<output>` is replaced only with `--overwrite`. The same `--seed` gives the
same weights and metrics on the same machine and thread settings (model.loop).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
from typing import Sequence

from common import fs
from common.errors import UserError
from common.lease import Lease, assert_held
from common.publish import check_not_a_file, check_output, is_bookkeeping, publish
from model.config import parse_args

logger = logging.getLogger(__name__)


def staging_dir(output: str) -> str:
    """Where a run is built before it becomes `output`: beside it, or in the local temp dir for gs://."""
    if fs.is_remote(output):
        key = hashlib.sha256(output.rstrip("/").encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), "video-annotation-train", f"{key}.partial")
    return os.path.normpath(output) + ".partial"


def check_training_output(output: str, overwrite: bool, resume: bool = False) -> None:
    """Refuse to replace a finished model, or a directory of something else, unless told to. With `resume`,
    an unfinished output (an interrupted upload to gs://) may be replaced."""
    from model.export import METRICS_FILE

    finished = check_output(output, METRICS_FILE, overwrite, "a trained model")
    if not finished and not (overwrite or resume) and _entries(output):
        raise UserError(f"--output {output} exists and is not empty; pass --overwrite to replace it")


def _entries(output: str) -> list[str]:
    """What is in `output` now: the folder's entries locally, the objects under the prefix on gs://."""
    if fs.is_remote(output):
        found = fs.files_under(output)
    else:
        found = [os.path.join(output, name) for name in sorted(os.listdir(output))] if os.path.isdir(output) else []
    return [path for path in found if not is_bookkeeping(fs.relative(path, output))]  # this run's lease is not


def check_heads(num_heads: int, feature_dim: int) -> None:
    """Refuse a --num-heads that does not divide the records' feature dim."""
    from model.classifier import attention_key_dim

    try:
        attention_key_dim(feature_dim, num_heads)
    except ValueError:
        raise UserError(f"--num-heads must divide the records' feature dim ({feature_dim}), got {num_heads}") from None


def open_staging(staging: str, resume: bool, fingerprint: dict) -> dict | None:
    """The interrupted run's state with `resume` (which must share `fingerprint`); else a fresh, empty folder."""
    from model.callbacks import resume_state

    if resume:
        return resume_state(staging, fingerprint)
    if os.path.exists(staging):
        logger.info("discarding the unfinished run in %s (--resume continues it)", staging)
        shutil.rmtree(staging)
    os.makedirs(staging)
    return None


def promote(staging: str, output: str, metrics_text: str, fence=None) -> None:
    """Publish the finished run in `staging` as `output`, `metrics.json` last, replacing what `output` holds;
    the checkpoints and the resumption state stay behind and are removed with the staging folder. `fence` (the
    lease check) runs before each step that changes `output`.

    To gs:// the files are uploaded from a local copy, so that if the upload fails the staging folder is still
    whole and `--resume` uploads it again instead of training again.
    """
    from model.callbacks import CHECKPOINTS_DIR, STATE_FILE
    from model.export import METRICS_FILE

    resumption = {CHECKPOINTS_DIR, STATE_FILE, METRICS_FILE}
    staged = [path for path in fs.files_under(staging) if fs.relative(path, staging).split("/")[0] not in resumption]
    if not fs.is_remote(output):
        publish(output, staging, staged, METRICS_FILE, metrics_text, replace=_entries(output), fence=fence)
        return
    with tempfile.TemporaryDirectory(prefix="train-upload-") as upload:
        copies = [os.path.join(upload, fs.relative(path, staging)) for path in staged]
        for path, copy in zip(staged, copies):
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            shutil.copyfile(path, copy)
        publish(output, upload, copies, METRICS_FILE, metrics_text, replace=_entries(output), fence=fence)
    shutil.rmtree(staging)


def run(argv: Sequence[str] | None = None) -> dict:
    """Train as the command line says and write the model directory; returns the metrics (metrics.json).

    The run holds the output's lease (common.lease) from before it looks at the output until it ends: a second
    run on the same output is skipped (LeaseHeld, exit 75), and a run whose lease was taken over while it
    trained does not publish (LeaseLost)."""
    config = parse_args(argv)
    check_not_a_file(config.output)
    created = not fs.exists(config.output)
    try:
        with Lease.acquire(config.output, job="train") as lease:
            return _train(config, fence=lambda: assert_held(config.output, lease.run_id))
    finally:
        if created and not fs.is_remote(config.output):
            try:
                os.rmdir(config.output)  # made for the lease, and left empty: a failed run leaves nothing
            except OSError:
                pass


def _train(config, fence) -> dict:
    # TensorFlow and Keras load from here on, not at import, so that `__main__` can quiet them first.
    check_training_output(config.output, config.overwrite, config.resume)
    from model import loop
    from model.data import load_training_data

    data = load_training_data(config.train, config.validation, config.test, config.validation_split, config.split_by)
    check_heads(config.num_heads, data.train.spec.feature_dim)
    staging = staging_dir(config.output)
    fingerprint = loop.fingerprint(config, data)
    state = open_staging(staging, config.resume, fingerprint)
    metrics = loop.train_model(config, data, staging, fingerprint, state)
    check_training_output(config.output, config.overwrite, config.resume)  # nothing appeared there meanwhile
    promote(staging, config.output, fs.json_text(metrics), fence=fence)
    logger.info("wrote %s: val accuracy %.3f%s (best epoch %d of %d)", config.output, metrics["val_accuracy"],
                f", test accuracy {metrics['test_accuracy']:.3f}" if data.test else "", metrics["best_epoch"],
                metrics["epochs_run"])
    return metrics


if __name__ == "__main__":
    from common.cli import main, quiet_tensorflow
    from tfrecords_schema import RecordError

    quiet_tensorflow()
    sys.exit(main(run, user_errors=(RecordError,)))
