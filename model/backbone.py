"""The frame embedder: DenseNet121 (no top, global average pooling) and how its weights are resolved.

`--weights` takes one of:
- `imagenet`: Keras downloads the ImageNet weights once and caches them under ~/.keras/models;
- a local (or gs://) weights file for `keras.applications.DenseNet121(include_top=False)`;
- `random` or `random:SEED`: seeded random initialisation, identical on every run and machine. The features
  are not ImageNet features: use it for demos, tests and synthetic data only.

The backbone id recorded in every feature record names the weights, so records and models made with
different weights are never mixed: `densenet121/imagenet`, `densenet121/random-seed1337`,
`densenet121/file-<sha256 prefix>`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import threading

import numpy as np

from model.cli import UserError

_LOG = logging.getLogger(__name__)

BACKBONE_NAME = "densenet121"
FEATURE_DIM = 1024
DEFAULT_RANDOM_SEED = 1337
_RANDOM_BUILD_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class BackboneWeights:
    """Where the DenseNet121 weights come from: `kind` is imagenet, random or file."""

    kind: str
    seed: int = DEFAULT_RANDOM_SEED
    path: str = ""
    digest: str = ""

    @property
    def backbone_id(self) -> str:
        if self.kind == "imagenet":
            return f"{BACKBONE_NAME}/imagenet"
        if self.kind == "random":
            return f"{BACKBONE_NAME}/random-seed{self.seed}"
        return f"{BACKBONE_NAME}/file-{self.digest}"


def _file_digest(path: str) -> str:
    import tensorflow as tf

    sha = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
    return sha.hexdigest()[:16]


def resolve_weights(weights: str) -> BackboneWeights:
    """Parse a `--weights` value; a missing file is a UserError."""
    import tensorflow as tf

    if weights == "imagenet":
        return BackboneWeights("imagenet")
    if weights == "random" or weights.startswith("random:"):
        seed_text = weights.partition(":")[2] or str(DEFAULT_RANDOM_SEED)
        if not seed_text.isdigit():
            raise UserError(f"--weights random:SEED needs a whole-number seed, got {weights!r}")
        return BackboneWeights("random", seed=int(seed_text))
    if not tf.io.gfile.exists(weights):
        raise UserError(
            f"--weights {weights!r} is not 'imagenet', 'random' or an existing weights file"
        )
    return BackboneWeights("file", path=weights, digest=_file_digest(weights))


def weights_for_backbone_id(backbone_id: str, weights_path: str | None = None) -> BackboneWeights:
    """The weights that produce `backbone_id` (as recorded in records and models).

    A file-based backbone needs the same file again (`weights_path`); its digest must match.
    """
    name, _, identity = backbone_id.partition("/")
    if name != BACKBONE_NAME:
        raise UserError(f"unknown backbone {backbone_id!r}; this code embeds with {BACKBONE_NAME}")
    if weights_path:
        weights = resolve_weights(weights_path)
        if weights.backbone_id != backbone_id:
            raise UserError(f"--weights {weights_path} gives backbone {weights.backbone_id}, the model needs {backbone_id}")
        return weights
    if identity == "imagenet":
        return BackboneWeights("imagenet")
    if identity.startswith("random-seed") and identity[len("random-seed"):].isdigit():
        return BackboneWeights("random", seed=int(identity[len("random-seed"):]))
    if identity.startswith("file-"):
        raise UserError(f"the model was trained on features of backbone {backbone_id}: pass its weights file with --weights PATH")
    raise UserError(f"unknown backbone weights {backbone_id!r}")


def _offline_error(exc: Exception) -> UserError:
    return UserError(
        "could not download the ImageNet DenseNet121 weights "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); "
        "offline, pass a local weights file with --weights PATH, or --weights random for demos and tests"
    )


def ensure_available(weights: BackboneWeights) -> None:
    """Fail early, with one clear line, when ImageNet weights are neither cached nor downloadable."""
    if weights.kind != "imagenet":
        return
    from keras.src.applications import densenet
    from keras.utils import get_file

    try:
        get_file(
            "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
            densenet.DENSENET121_WEIGHT_PATH_NO_TOP,
            cache_subdir="models",
            file_hash="30ee3e1110167f948a6b9946edeeb738",
        )
    except Exception as exc:  # urllib, socket and "URL fetch failure" errors all mean: no download
        raise _offline_error(exc) from None


def build_densenet(weights: BackboneWeights, image_size: int):
    """DenseNet121 without its top, average-pooled: `[B, S, S, 3]` preprocessed floats -> `[B, 1024]`."""
    import keras

    kwargs = dict(include_top=False, pooling="avg", input_shape=(image_size, image_size, 3))
    if weights.kind == "imagenet":
        try:
            return keras.applications.DenseNet121(weights="imagenet", **kwargs)
        except Exception as exc:  # urllib, socket and "URL fetch failure" errors all mean: no download
            raise _offline_error(exc) from None
    if weights.kind == "random":
        _LOG.warning(
            "DenseNet121 uses RANDOM weights (seed %d): features are not ImageNet features; "
            "use this for demos, tests and synthetic data only", weights.seed,
        )
        # The seed is process-global: builds on other threads must not draw from it meanwhile.
        with _RANDOM_BUILD_LOCK:
            keras.utils.set_random_seed(weights.seed)
            return keras.applications.DenseNet121(weights=None, **kwargs)
    model = keras.applications.DenseNet121(weights=None, **kwargs)
    path = weights.path
    if path.startswith("gs://"):
        import tensorflow as tf

        local = os.path.join(tempfile.mkdtemp(prefix="densenet-weights-"), os.path.basename(path))
        tf.io.gfile.copy(path, local, overwrite=True)
        path = local
    try:
        model.load_weights(path)
    except Exception as exc:
        raise UserError(f"--weights {weights.path} does not hold DenseNet121 (no top) weights: {exc}") from None
    return model


class FrameEmbedder:
    """Embeds RGB frames with DenseNet121: `[N, S, S, 3]` uint8 -> `[N, 1024]` float32.

    Build it where it will be used (a DoFn's `setup()`, a worker): it holds a Keras model. Frames go through
    DenseNet's own `preprocess_input` (scale to [0, 1], ImageNet mean and std) inside one traced function
    whose batch dimension is dynamic, so batches of any size never retrace.
    """

    def __init__(self, weights: BackboneWeights, image_size: int):
        import keras
        import tensorflow as tf

        self.weights = weights
        self.image_size = image_size
        self.backbone_id = weights.backbone_id
        self._model = build_densenet(weights, image_size)
        preprocess = keras.applications.densenet.preprocess_input
        model = self._model

        @tf.function(
            input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8)],
            reduce_retracing=True,
        )
        def embed(frames):
            return model(preprocess(tf.cast(frames, tf.float32)), training=False)

        self._embed = embed

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        expected = (self.image_size, self.image_size, 3)
        if frames.ndim != 4 or frames.shape[1:] != expected or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [N, {self.image_size}, {self.image_size}, 3], got {frames.dtype} {frames.shape}")
        if len(frames) == 0:
            return np.zeros((0, FEATURE_DIM), np.float32)
        return self._embed(frames).numpy()
