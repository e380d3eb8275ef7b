"""The frame embedder: DenseNet121 (no top, global average pooling) and how its weights are resolved.

`--weights` takes one of:
- `imagenet`: Keras downloads the ImageNet weights once and caches them under ~/.keras/models;
- a local (or gs://) weights file for `keras.applications.DenseNet121(include_top=False)`;
- `random` or `random:SEED`: seeded random initialisation, identical on every run, machine, process and
  thread: every weight is drawn from a private generator seeded with SEED alone (see `random_weights`). The
  features are not ImageNet features: use it for demos, tests and synthetic data only.

The backbone id recorded in every feature record names the weights, so records and models made with
different weights are never mixed: `densenet121/imagenet`, `densenet121/random-seed1337`,
`densenet121/file-<sha256 prefix>`. Features of an int8-quantised network (model.engines) are another feature
space and carry the suffix `+int8` (`densenet121/imagenet+int8`).

`FrameEmbedder` here is the TensorFlow engine, the reference the other engines are measured against;
`model.engines.make_embedder` builds whichever engine a job asks for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import tempfile

import numpy as np

from common.errors import UserError
from tfrecords_schema.schema import INT8_BACKBONE_SUFFIX

_LOG = logging.getLogger(__name__)

BACKBONE_NAME = "densenet121"
FEATURE_DIM = 1024
DEFAULT_RANDOM_SEED = 1337


@dataclasses.dataclass(frozen=True)
class BackboneWeights:
    """Where the DenseNet121 weights come from: `kind` is imagenet, random or file."""

    kind: str
    seed: int = DEFAULT_RANDOM_SEED
    path: str = ""
    digest: str = ""

    @property
    def flag(self) -> str:
        """The --weights value that rebuilds these weights (in a worker, say)."""
        if self.kind == "random":
            return f"random:{self.seed}"
        return self.path or self.kind

    @property
    def backbone_id(self) -> str:
        if self.kind == "imagenet":
            return f"{BACKBONE_NAME}/imagenet"
        if self.kind == "random":
            return f"{BACKBONE_NAME}/random-seed{self.seed}"
        return f"{BACKBONE_NAME}/file-{self.digest}"


def _file_digest(path: str) -> str:
    from common import fs

    sha = hashlib.sha256()
    with fs.open_read(path) as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
    return sha.hexdigest()[:16]


def resolve_weights(weights: str) -> BackboneWeights:
    """Parse a `--weights` value; a missing file is a UserError. No TensorFlow: a labelling run checks its
    `--weights` against the model before it touches the output."""
    from common import fs

    if weights == "imagenet":
        return BackboneWeights("imagenet")
    if weights == "random" or weights.startswith("random:"):
        seed_text = weights.partition(":")[2] or str(DEFAULT_RANDOM_SEED)
        if not seed_text.isdigit():
            raise UserError(f"--weights random:SEED needs a whole-number seed, got {weights!r}")
        return BackboneWeights("random", seed=int(seed_text))
    if not fs.exists(weights):
        raise UserError(
            f"--weights {weights!r} is not 'imagenet', 'random' or an existing weights file"
        )
    return BackboneWeights("file", path=weights, digest=_file_digest(weights))


def weights_for_backbone_id(backbone_id: str, weights_path: str | None = None) -> BackboneWeights:
    """The weights that produce `backbone_id` (as recorded in records and models).

    A file-based backbone needs the same file again (`weights_path`); its digest must match. The int8 suffix
    names how the features were computed, not the weights: the weights of `X+int8` are those of `X` (which
    precision to embed with is `model.engines.options_for_backbone`'s business).
    """
    backbone_id = backbone_id.removesuffix(INT8_BACKBONE_SUFFIX)
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


def _fans(shape: tuple[int, ...], input_axes=None, output_axes=None) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shape, as Keras's VarianceScaling counts them."""
    if input_axes is not None and output_axes is not None:
        return math.prod(shape[a] for a in input_axes), math.prod(shape[a] for a in output_axes)
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _draw(initializer, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """What `initializer(shape)` draws, drawn from `rng` instead of Keras's (process-global) seed state.

    Covers the initializers DenseNet121 uses: VarianceScaling (Glorot, He, LeCun: uniform, normal, truncated
    normal) and constants. Any other is an error, so a Keras change cannot silently make a different network."""
    import keras

    if isinstance(initializer, keras.initializers.VarianceScaling):
        fan_in, fan_out = _fans(shape, initializer.input_axes, initializer.output_axes)
        fan = {"fan_in": fan_in, "fan_out": fan_out}.get(initializer.mode, (fan_in + fan_out) / 2.0)
        scale = initializer.scale / max(1.0, fan)
        if initializer.distribution == "uniform":
            limit = math.sqrt(3.0 * scale)
            return rng.uniform(-limit, limit, shape)
        if initializer.distribution == "untruncated_normal":
            return rng.normal(0.0, math.sqrt(scale), shape)
        # Keras's truncated normal: a normal cut at two standard deviations, its stddev corrected for the cut.
        stddev = math.sqrt(scale) / 0.87962566103423978
        values = rng.normal(0.0, 1.0, shape)
        while (outside := np.abs(values) > 2.0).any():
            values[outside] = rng.normal(0.0, 1.0, int(outside.sum()))
        return values * stddev
    if isinstance(initializer, keras.initializers.Zeros):
        return np.zeros(shape)
    if isinstance(initializer, keras.initializers.Ones):
        return np.ones(shape)
    if isinstance(initializer, keras.initializers.Constant):
        return np.full(shape, initializer.value)
    raise TypeError(f"no seeded draw for initializer {type(initializer).__name__}")


def _initializer_of(layer, variable):
    """The initializer `layer` created `variable` with (`kernel_initializer` for `kernel`, and so on)."""
    name = variable.path.rsplit("/", 1)[-1]
    initializer = getattr(layer, f"{name}_initializer", None)
    if initializer is None:
        raise TypeError(f"{layer.name}: no initializer known for its variable {name!r}")
    return initializer


def random_weights(model, seed: int) -> None:
    """Overwrite every variable of `model` with a draw from its layer's own initializer, all from one private
    generator seeded with `seed` alone, in the model's (fixed) variable order.

    Nothing here reads Python's, NumPy's or Keras's global random state, so every process and thread that
    builds the same architecture with the same seed gets the same weights, whatever else runs meanwhile
    (`keras.utils.set_random_seed` is process-global and raced by other threads' builds)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if getattr(layer, "layers", None):  # its variables would be drawn out of the model's order
            raise TypeError(f"{layer.name}: nested models are not expected in DenseNet121")
        for variable in layer.weights:
            value = _draw(_initializer_of(layer, variable), tuple(variable.shape), rng)
            variable.assign(value.astype(variable.dtype))


def warn_if_random(weights: BackboneWeights) -> None:
    if weights.kind == "random":
        _LOG.warning(
            "DenseNet121 uses RANDOM weights (seed %d): features are not ImageNet features; "
            "use this for demos, tests and synthetic data only", weights.seed,
        )


def build_densenet(weights: BackboneWeights, image_size: int):
    """DenseNet121 without its top, average-pooled: `[B, S, S, 3]` preprocessed floats -> `[B, 1024]`."""
    import keras

    kwargs = dict(include_top=False, pooling="avg", input_shape=(image_size, image_size, 3))
    if weights.kind == "imagenet":
        try:
            return keras.applications.DenseNet121(weights="imagenet", **kwargs)
        except Exception as exc:  # urllib, socket and "URL fetch failure" errors all mean: no download
            raise _offline_error(exc) from None
    model = keras.applications.DenseNet121(weights=None, **kwargs)
    if weights.kind == "random":
        warn_if_random(weights)
        random_weights(model, weights.seed)
        return model
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


def embedding_function(model, image_size: int):
    """The traced embedding: `[N, S, S, 3]` uint8 -> DenseNet's own `preprocess_input` (scale to [0, 1],
    ImageNet mean and std) -> `model` -> `[N, 1024]` float32. Its batch dimension is dynamic, so batches of any
    size never retrace. The OpenVINO engine converts this same function (model.engines)."""
    import keras
    import tensorflow as tf

    preprocess = keras.applications.densenet.preprocess_input

    @tf.function(
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="frames")],
        reduce_retracing=True,
    )
    def embed(frames):
        return model(preprocess(tf.cast(frames, tf.float32)), training=False)

    return embed


def check_frames(frames, image_size: int) -> np.ndarray:
    """`frames` as a uint8 `[N, S, S, 3]` array, or ValueError naming what it is instead."""
    frames = np.asarray(frames)
    expected = (image_size, image_size, 3)
    if frames.ndim != 4 or frames.shape[1:] != expected or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [N, {image_size}, {image_size}, 3], got {frames.dtype} {frames.shape}")
    return frames


class FrameEmbedder:
    """The TensorFlow engine: embeds RGB frames with DenseNet121, `[N, S, S, 3]` uint8 -> `[N, 1024]` float32,
    in float32. The reference every other engine is measured against, and the engine for GPUs.

    Build it where it will be used (a DoFn's `setup()`, a worker): it holds a Keras model. Frames go through
    `embedding_function`, traced once. `engine`, `engine_version`, `precision` and `calibration` say what
    made the features (records carry them; see model.engines).
    """

    engine = "tensorflow"
    precision = "f32"
    calibration = ""

    def __init__(self, weights: BackboneWeights, image_size: int):
        import tensorflow as tf

        self.weights = weights
        self.image_size = image_size
        self.backbone_id = weights.backbone_id
        self.engine_version = tf.__version__
        self._model = build_densenet(weights, image_size)
        self._embed = embedding_function(self._model, image_size)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = check_frames(frames, self.image_size)
        if len(frames) == 0:
            return np.zeros((0, FEATURE_DIM), np.float32)
        return self._embed(frames).numpy()
