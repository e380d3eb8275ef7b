"""The flags the featurize and predict jobs share: which files are videos, how they are decoded and embedded,
and whether a finished output may be replaced."""

from __future__ import annotations

import argparse

from common.errors import UserError
from video.frames import DEFAULT_VIDEO_EXTENSIONS


def add_frame_flags(parser: argparse.ArgumentParser, input_required: bool = True) -> None:
    """--input, --extensions, --batch-size, --decode-timeout and --overwrite."""
    parser.add_argument("--input", action="append", required=input_required, metavar="PATH",
                        help="videos: a directory (searched recursively), a glob, a file, or a gs:// pattern; "
                             "repeatable")
    parser.add_argument("--extensions", default=",".join(DEFAULT_VIDEO_EXTENSIONS),
                        help="comma-separated file endings that count as videos, case-insensitive "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="frames per DenseNet121 call, gathered across videos (default: %(default)s)")
    parser.add_argument("--decode-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="longest time one video may take to decode before it is reported as a failure "
                             "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished run in --output (refused otherwise)")


def parse_extensions(text: str) -> tuple[str, ...]:
    """"mp4,.AVI" -> (".mp4", ".avi"); an empty list is a UserError."""
    extensions = tuple("." + e.strip().lower().lstrip(".") for e in text.split(",") if e.strip())
    if not extensions:
        raise UserError("--extensions names no file endings")
    return extensions


def validate_frame_args(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.decode_timeout <= 0:
        raise UserError(f"--decode-timeout must be positive, got {args.decode_timeout}")


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """--engine, --precision, --calibration and --embed-threads: which engine runs DenseNet121 (model.engines);
    --decoders and --worker-processes: how a worker process's cores are shared (beam_jobs.cores)."""
    from model.engines import ENGINES, PRECISIONS

    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="what runs DenseNet121: openvino (CPUs), tensorflow (GPUs, and the reference); auto "
                             "picks TensorFlow when a GPU is visible, else OpenVINO (default: %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="f32, bf16 (OpenVINO; features agree with f32's, same backbone id) or int8 (OpenVINO, "
                             "calibrated on frames of the videos; another feature space: backbone id +int8); auto "
                             "is bf16 where the CPU has it, else f32 (default: %(default)s)")
    parser.add_argument("--calibration", metavar="PATH", action="append", default=None,
                        help="--precision int8 only: videos to calibrate on (a directory, glob, file or gs:// "
                             "pattern; repeatable); default: the job's own videos")
    parser.add_argument("--embed-threads", type=int, default=0, metavar="N",
                        help="threads OpenVINO runs DenseNet121 on in each worker process; 0: the process's share "
                             "of the machine's cores (beam_jobs.cores) (default: %(default)s)")
    from beam_jobs.cores import add_core_flags

    add_core_flags(parser)


def validate_engine_args(args: argparse.Namespace) -> None:
    """The engine flags make sense together (whether this machine can run them is checked when resolved)."""
    from model.engines import check_choice

    check_choice(args.engine, args.precision, args.embed_threads, bool(args.calibration))


def embedder_options(args: argparse.Namespace, weights: str, image_size: int, calibration: str = ""):
    """The resolved `EmbedderOptions` the engine flags ask for (`auto` decided on this machine): a UserError
    names a choice this machine cannot run. `calibration` is the frames file int8 calibrates on."""
    from model.engines import EmbedderOptions

    validate_engine_args(args)
    return EmbedderOptions(weights, image_size, args.engine, args.precision, calibration,
                           args.embed_threads).resolved()


# Beam's portable runners (Prism, which `--runner DirectRunner` runs on wherever Beam finds it; Flink and Spark
# through their job servers) give the stream the launcher watches the job's state on a deadline of
# --job_server_timeout seconds (300 by default): a job still running after it fails with DEADLINE_EXCEEDED
# and is torn down. The jobs take as long as the videos do, so the launcher waits a week unless told.
JOB_SERVER_TIMEOUT_S = 7 * 24 * 3600
_JOB_SERVER_TIMEOUT_FLAGS = ("--job_server_timeout", "--job-server-timeout")


# Prism (the runner `--runner DirectRunner` picks where it finds it) asks a bundle for progress every 0.1 s and
# splits it in half whenever its input has not moved since: it did so to the decode-and-embed stage while the
# embedder compiled or a batch ran, until 4-8 bundles of it ran at once, each with its own decoder children and
# batches, on the cores one bundle plans for (300 short clips: 0.39x the in-process runner's videos/s,
# bench/runners.py). The experiment turns that splitting off; other runners ignore it.
PRISM_EXPERIMENTS = ("prism_disable_sdf_split",)


def pipeline_options(beam_args: list[str]):
    """Beam's PipelineOptions from the flags a job does not know, with --job_server_timeout
    JOB_SERVER_TIMEOUT_S unless given, and PRISM_EXPERIMENTS."""
    from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions

    if not any(arg.split("=", 1)[0] in _JOB_SERVER_TIMEOUT_FLAGS for arg in beam_args):
        beam_args = [*beam_args, f"--job_server_timeout={JOB_SERVER_TIMEOUT_S}"]
    options = PipelineOptions(beam_args)
    for experiment in PRISM_EXPERIMENTS:
        options.view_as(DebugOptions).add_experiment(experiment)
    _check_worker_command(options)
    return options


def _check_worker_command(options) -> None:
    """Beam's in-process runner in `multi_processing` mode starts each SDK worker through a shell as
    `<sys.executable> -m ...`, the interpreter's path unquoted: under a path with a space or a shell character
    the workers die at once (exit 127) and the runner waits for them forever. Say so in one line instead."""
    import shlex
    import sys

    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    mode = options.view_as(DirectOptions).direct_running_mode
    if mode == "multi_processing" and runner in ("DirectRunner", "FnApiRunner") \
            and shlex.quote(sys.executable) != sys.executable:
        raise UserError(f"--direct_running_mode multi_processing cannot start its workers from the Python at "
                        f"{sys.executable!r}: Beam runs that path through a shell unquoted; use an interpreter (venv) "
                        "whose path has no spaces or shell characters, or --direct_running_mode multi_threading")
