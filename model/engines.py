"""The frame embedder's engines, chosen by `EmbedderOptions` and built by `make_embedder`.

    options = EmbedderOptions("random:7", 128, engine="auto", precision="auto").resolved()  # the launcher
    embedder = make_embedder(options, batch_size=32)                      # a worker: DoFn.setup()
    features = embedder(frames)        # [N, 128, 128, 3] uint8 -> [N, 1024] float32

- `tensorflow` (`model.backbone.FrameEmbedder`): float32, the reference, and the engine for GPUs.
- `openvino`: the same network, converted from the same traced function (`backbone.embedding_function`:
  same weights, same `preprocess_input`), run in `f32`, `bf16` (`INFERENCE_PRECISION_HINT`) or `int8`
  (post-training quantisation by NNCF on calibration frames, the rest in bf16 where the CPU has it).

`auto` picks OpenVINO on a CPU (bf16 where the CPU has it, else f32) and TensorFlow when a GPU is visible or
OpenVINO cannot be imported (said in one logged line). f32 and bf16 features agree with TensorFlow's within
the bounds tests/test_engines.py checks, so they share its backbone id; int8 features do not, and their
backbone id ends in `+int8` (tfrecords_schema.schema.INT8_BACKBONE_SUFFIX).

The converted network is cached on local disk (`$VIDEO_ANNOTATION_CACHE`, else ~/.cache/video-annotation),
keyed by backbone id, image size, OpenVINO version and, for int8, the digest of the calibration frames, so a
worker converts (and calibrates) once. It is compiled once per process for a static batch of `batch_size`
frames; a shorter batch is padded to it, so no call compiles anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import logging
import os
import shutil
import sys
import tempfile
import threading

import numpy as np

from common.errors import UserError
from model import backbone
from tfrecords_schema.schema import INT8_BACKBONE_SUFFIX

_LOG = logging.getLogger(__name__)

ENGINES = ("auto", "openvino", "tensorflow")
PRECISIONS = ("auto", "f32", "bf16", "int8")
CACHE_ENV = "VIDEO_ANNOTATION_CACHE"
CONVERSION_VERSION = 1  # bump when conversion or quantisation changes what a cached network holds
OPENVINO_PIN = "openvino==2026.4.1"  # what setup.py installs, for the error message


@dataclasses.dataclass(frozen=True)
class EmbedderOptions:
    """Which network embeds frames and how: picklable, so a Beam DoFn can carry it to workers.

    `weights` is a `--weights` value; `calibration` (int8 only) a `.npy` file of uint8 frames `[N, S, S, 3]`,
    local or gs://, that every worker calibrates on alike; `threads` 0 means every core this process may use.
    `engine` and `precision` may be `auto` until `resolved()`.
    """

    weights: str
    image_size: int
    engine: str = "tensorflow"
    precision: str = "f32"
    calibration: str = ""
    threads: int = 0

    def __post_init__(self):
        check_choice(self.engine, self.precision, self.threads, bool(self.calibration))

    def resolved(self) -> "EmbedderOptions":
        """These options with `auto` replaced by what this machine runs (see the module docstring)."""
        engine, precision = resolve(self.engine, self.precision)
        return dataclasses.replace(self, engine=engine, precision=precision)

    @property
    def quantised(self) -> bool:
        return self.precision == "int8"


# --- What this machine has --------------------------------------------------------------------------------


def check_choice(engine: str, precision: str, threads: int = 0, calibration: bool = False) -> None:
    """A UserError (one line) for engine flags that cannot go together, whatever the machine."""
    if engine not in ENGINES:
        raise UserError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if threads < 0:
        raise UserError(f"--embed-threads must be 0 (every core) or more, got {threads}")
    if calibration and precision != "int8":
        raise UserError(f"--calibration is for --precision int8, not --precision {precision}")
    if engine == "tensorflow" and precision not in ("auto", "f32"):
        raise UserError(f"--engine tensorflow embeds in f32 only; --precision {precision} needs --engine "
                        "openvino or auto")


@functools.lru_cache(maxsize=1)
def openvino_import_error() -> str:
    """Why OpenVINO cannot be imported here, or "" when it can."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


@functools.lru_cache(maxsize=1)
def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU. Asked only where a GPU driver is present: importing TensorFlow costs a
    job's launcher and each of its worker processes 4 s and 650 MB, and on a machine without a GPU nothing
    else in featurize needs it (the OpenVINO network is cached, records are encoded without it)."""
    if not gpu_driver_present():
        return False
    tf = _tensorflow()
    return bool(tf.config.list_physical_devices("GPU"))


def _tensorflow():
    """TensorFlow, imported without its native start-up notes on stderr (`common.cli.quiet_tensorflow`)."""
    from common.cli import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    return tf


def gpu_driver_present() -> bool:
    """What TensorFlow needs to see any GPU is here: an NVIDIA kernel driver, WSL2's GPU device, or macOS (a
    Metal plugin shows no driver file; ask TensorFlow there)."""
    return (sys.platform == "darwin" or os.path.exists("/proc/driver/nvidia/version")
            or os.path.exists("/dev/dxg"))


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this CPU (`BF16`, `INT8`, `FP32`, ...)."""
    import openvino as ov

    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _openvino_or_error(why: str) -> None:
    if error := openvino_import_error():
        raise UserError(f"{why} needs OpenVINO, which cannot be imported here ({error}); install {OPENVINO_PIN} "
                        "or use --engine tensorflow")


def resolve(engine: str, precision: str) -> tuple[str, str]:
    """(`engine`, `precision`) with `auto` decided for this machine; a choice it cannot run is a UserError."""
    if engine == "auto":
        if precision in ("bf16", "int8"):
            engine = "openvino"  # only OpenVINO runs those
        elif gpu_visible():
            engine = "tensorflow"
        elif error := openvino_import_error():
            _LOG.warning("OpenVINO cannot be imported (%s): embedding with TensorFlow in f32", error)
            engine = "tensorflow"
        else:
            engine = "openvino"
    if engine == "tensorflow":
        if precision not in ("auto", "f32"):
            raise UserError(f"--engine tensorflow embeds in f32 only, not {precision}")
        return engine, "f32"
    _openvino_or_error(f"--engine openvino{f' (for --precision {precision})' if precision != 'auto' else ''}")
    has_bf16 = "BF16" in cpu_capabilities()
    if precision == "auto":
        precision = "bf16" if has_bf16 else "f32"
    elif precision == "bf16" and not has_bf16:
        raise UserError(f"--precision bf16: this CPU has no bf16 (OpenVINO finds {', '.join(cpu_capabilities())}); "
                        "use --precision f32 or auto")
    if precision == "int8":
        try:
            import nncf  # noqa: F401
        except ImportError as exc:
            raise UserError(f"--precision int8 calibrates with NNCF, which cannot be imported here ({exc})") from None
    return engine, precision


def feature_backbone_id(weights_backbone_id: str, precision: str) -> str:
    """The backbone id records carry for features of these weights in this precision."""
    return weights_backbone_id + (INT8_BACKBONE_SUFFIX if precision == "int8" else "")


def options_for_backbone(backbone_id: str, image_size: int, engine: str = "auto", precision: str = "auto",
                         weights_path: str | None = None, calibration: str = "", threads: int = 0) -> EmbedderOptions:
    """The options whose features match records of `backbone_id` (a model's, for predict and preview):
    int8 for an `+int8` id, a float precision otherwise; a `precision` that contradicts it is a UserError."""
    model_int8 = backbone_id.endswith(INT8_BACKBONE_SUFFIX)
    if precision == "auto" and model_int8:
        precision = "int8"
    if model_int8 != (precision == "int8"):
        made = "int8" if model_int8 else "float (f32 or bf16)"
        raise UserError(f"the model was trained on {made} features (backbone {backbone_id}); --precision "
                        f"{precision} would give it another feature space")
    weights = backbone.weights_for_backbone_id(backbone_id, weights_path)
    return EmbedderOptions(weights.flag, image_size, engine, precision, calibration, threads).resolved()


# --- Calibration frames -------------------------------------------------------------------------------------


def calibration_digest(frames: np.ndarray) -> str:
    """A short content digest of calibration frames (their shape and bytes), recorded with int8 features."""
    sha = hashlib.sha256(repr(frames.shape).encode())
    sha.update(np.ascontiguousarray(frames, np.uint8).tobytes())
    return sha.hexdigest()[:16]


def save_calibration(path: str, frames: np.ndarray) -> str:
    """Write calibration frames as `.npy` (local or gs://); return their digest."""
    tf = _tensorflow()

    frames = np.ascontiguousarray(frames, np.uint8)
    with tf.io.gfile.GFile(path, "wb") as f:
        np.save(f, frames, allow_pickle=False)
    return calibration_digest(frames)


def load_calibration(path: str, image_size: int) -> np.ndarray:
    """The calibration frames in `path` (written by `save_calibration`): uint8 `[N, S, S, 3]`."""
    tf = _tensorflow()

    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            frames = np.load(io.BytesIO(f.read()), allow_pickle=False)
    except (OSError, ValueError, tf.errors.OpError) as exc:
        raise UserError(f"calibration frames {path}: {exc}") from None
    try:
        frames = backbone.check_frames(frames, image_size)
    except ValueError as exc:
        raise UserError(f"calibration frames {path}: {exc}") from None
    if not len(frames):
        raise UserError(f"calibration frames {path} hold no frames")
    return frames


# --- The OpenVINO engine ------------------------------------------------------------------------------------


def cache_root() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "video-annotation")


def _cached_model(name: str, build):
    """The OpenVINO model cached as `<cache>/openvino/<name>/model.xml`, made by `build()` when missing.

    Written into a scratch folder beside it and renamed into place, so a reader never sees half a model and
    processes that race each keep a whole one."""
    import openvino as ov

    folder = os.path.join(cache_root(), "openvino", name)
    xml = os.path.join(folder, "model.xml")
    core = ov.Core()
    if os.path.exists(xml):
        try:
            return core.read_model(xml)
        except RuntimeError as exc:
            _LOG.warning("cached OpenVINO model %s is unreadable (%s); converting again", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
    model = build()
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{name}-", dir=os.path.dirname(folder))
    try:
        ov.save_model(model, os.path.join(scratch, "model.xml"), compress_to_fp16=False)
        os.rename(scratch, folder)
    except OSError:  # another process put it there first
        shutil.rmtree(scratch, ignore_errors=True)
    return core.read_model(xml) if os.path.exists(xml) else model


def _version() -> str:
    import openvino as ov

    return ov.__version__.split("-")[0]


def _converted(weights: backbone.BackboneWeights, image_size: int):
    """DenseNet121 with its preprocessing as an OpenVINO model, `[?, S, S, 3]` uint8 -> `[?, 1024]` float32."""
    import openvino as ov

    def convert():
        _LOG.info("converting DenseNet121 (%s, %dx%d) to OpenVINO %s", weights.backbone_id, image_size,
                  image_size, _version())
        _tensorflow()
        model = backbone.build_densenet(weights, image_size)
        return ov.convert_model(backbone.embedding_function(model, image_size))

    name = f"{weights.backbone_id.replace('/', '_')}-{image_size}px-ov{_version()}-c{CONVERSION_VERSION}"
    if os.path.exists(os.path.join(cache_root(), "openvino", name)):
        backbone.warn_if_random(weights)  # said by build_densenet otherwise
    return _cached_model(name, convert), name


def _quantised(model, name: str, frames: np.ndarray, digest: str):
    """`model` quantised to int8 by NNCF's post-training quantisation on `frames`, one frame per sample, in
    their order (so every worker calibrating on the same frames makes the same network)."""

    def quantise():
        import nncf

        nncf.set_log_level(logging.ERROR)
        _LOG.info("calibrating int8 DenseNet121 on %d frames (digest %s)", len(frames), digest)
        dataset = nncf.Dataset([frames[i : i + 1] for i in range(len(frames))])
        # NNCF draws a progress bar on the console; a job's log has its own progress lines.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return nncf.quantize(model, dataset, subset_size=len(frames), fast_bias_correction=True)

    return _cached_model(f"{name}-int8-{digest}", quantise)


class OpenVINOEmbedder:
    """The OpenVINO engine: `[N, S, S, 3]` uint8 -> `[N, 1024]` float32, like `backbone.FrameEmbedder`.

    Compiled once, for batches of `batch_size` frames; a call with more frames runs several batches and a
    shorter last batch is padded, so nothing is compiled after construction. Thread-safe: each calling thread
    gets its own inference request on the one compiled network.
    """

    engine = "openvino"

    def __init__(self, weights: backbone.BackboneWeights, image_size: int, precision: str = "bf16",
                 batch_size: int = 32, threads: int = 0, calibration_frames: np.ndarray | None = None):
        import openvino as ov

        if precision not in ("f32", "bf16", "int8"):
            raise ValueError(f"OpenVINO precision must be f32, bf16 or int8, got {precision!r}")
        self.weights, self.image_size, self.batch_size = weights, image_size, batch_size
        self.precision = precision
        self.engine_version = _version()
        self.backbone_id = feature_backbone_id(weights.backbone_id, precision)
        self.calibration = ""
        model, name = _converted(weights, image_size)
        if precision == "int8":
            if calibration_frames is None or not len(calibration_frames):
                raise UserError("--precision int8 needs calibration frames")
            frames = backbone.check_frames(calibration_frames, image_size)
            self.calibration = calibration_digest(frames)
            model = _quantised(model, name, frames, self.calibration)
        model.reshape([batch_size, image_size, image_size, 3])
        # int8 layers run in int8; the rest in bf16 where the CPU has it.
        hint = "f32" if precision == "f32" or "BF16" not in cpu_capabilities() else "bf16"
        cores = len(os.sched_getaffinity(0))
        self.threads = threads or cores
        # OpenVINO pins its threads to cores, the first cores first: right for an embedder that has every core
        # its process may use, wrong for one that shares them with other worker processes (two processes of one
        # thread each both ran on core 0, at half the speed of one process of two threads).
        config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1,
                  "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": self.threads >= cores}
        self._compiled = ov.Core().compile_model(model, "CPU", config)
        self._local = threading.local()

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = backbone.check_frames(frames, self.image_size)
        out = np.empty((len(frames), backbone.FEATURE_DIM), np.float32)
        request = self._request()
        for start in range(0, len(frames), self.batch_size):
            batch = frames[start : start + self.batch_size]
            n = len(batch)
            if n < self.batch_size:
                batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]), np.uint8)])
            out[start : start + n] = request.infer({0: np.ascontiguousarray(batch)})[0][:n]
        return out


def make_embedder(options: EmbedderOptions, batch_size: int = 32, calibration_frames: np.ndarray | None = None):
    """The embedder `options` ask for (resolved here if still `auto`). int8 calibrates on
    `calibration_frames`, else on the frames in `options.calibration`."""
    options = options.resolved()
    weights = backbone.resolve_weights(options.weights)
    if options.engine == "tensorflow":
        _tensorflow()
        return backbone.FrameEmbedder(weights, options.image_size)
    if options.quantised and calibration_frames is None:
        if not options.calibration:
            raise UserError("--precision int8 needs calibration frames")
        calibration_frames = load_calibration(options.calibration, options.image_size)
    return OpenVINOEmbedder(weights, options.image_size, options.precision, batch_size, options.threads,
                            calibration_frames if options.quantised else None)


def engine_version(engine: str) -> str:
    """The version of `engine` ("tensorflow" or "openvino") installed here."""
    if engine == "openvino":
        return _version()
    return _tensorflow().__version__


def describe(embedder) -> dict:
    """What made an embedder's features: the keyword arguments of `VideoRecord` that record it."""
    return {"engine": embedder.engine, "engine_version": embedder.engine_version, "precision": embedder.precision,
            "calibration": embedder.calibration}


def describe_options(options: EmbedderOptions, calibration_digest: str = "") -> dict:
    """What resolved `options` will make (for the launcher's records and manifest, before any worker runs):
    the same keys as `describe`, which the embedder built from them reports."""
    if "auto" in (options.engine, options.precision):
        raise ValueError(f"resolve the options first: {options}")
    return {"engine": options.engine, "engine_version": engine_version(options.engine),
            "precision": options.precision, "calibration": calibration_digest if options.quantised else ""}
