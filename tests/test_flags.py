"""beam_jobs.flags: the frame flags the featurize and predict jobs share."""

from __future__ import annotations

import argparse

import pytest

from beam_jobs.flags import add_frame_flags, parse_extensions, validate_frame_args
from common.errors import UserError
from video.frames import DEFAULT_VIDEO_EXTENSIONS


def parser(input_required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_frame_flags(p, input_required=input_required)
    return p


def test_defaults():
    args = parser().parse_args(["--input", "videos"])
    assert args.input == ["videos"]
    assert args.extensions == ",".join(DEFAULT_VIDEO_EXTENSIONS)
    assert (args.batch_size, args.decode_timeout, args.overwrite) == (32, 120.0, False)
    assert parse_extensions(args.extensions) == DEFAULT_VIDEO_EXTENSIONS


def test_input_is_repeatable_and_values_are_typed():
    args = parser().parse_args(["--input", "a", "--input", "gs://b/*.mp4", "--batch-size", "8",
                                "--decode-timeout", "2.5", "--overwrite", "--extensions", "mp4"])
    assert args.input == ["a", "gs://b/*.mp4"]
    assert (args.batch_size, args.decode_timeout, args.overwrite, args.extensions) == (8, 2.5, True, "mp4")


def test_input_required_or_not(capsys):
    with pytest.raises(SystemExit) as caught:
        parser().parse_args([])
    assert caught.value.code == 2
    assert "--input" in capsys.readouterr().err
    assert parser(input_required=False).parse_args([]).input is None


def test_unknown_flags_are_left_for_beam():
    args, rest = parser().parse_known_args(["--input", "v", "--runner", "DirectRunner", "--temp_location=/t"])
    assert args.input == ["v"] and rest == ["--runner", "DirectRunner", "--temp_location=/t"]


@pytest.mark.parametrize("text, expected", [
    ("mp4,.AVI", (".mp4", ".avi")),
    (" .Mkv , webm ,", (".mkv", ".webm")),
    ("..mov", (".mov",)),
])
def test_parse_extensions(text, expected):
    assert parse_extensions(text) == expected


@pytest.mark.parametrize("text", ["", " , ,", ","])
def test_no_extensions_is_a_user_error(text):
    with pytest.raises(UserError, match=r"^--extensions names no file endings$"):
        parse_extensions(text)


def test_validate_frame_args():
    validate_frame_args(parser().parse_args(["--input", "v", "--batch-size", "1", "--decode-timeout", "0.1"]))
    with pytest.raises(UserError, match=r"^--batch-size must be at least 1, got 0$"):
        validate_frame_args(parser().parse_args(["--input", "v", "--batch-size", "0"]))
    with pytest.raises(UserError, match=r"^--decode-timeout must be positive, got 0.0$"):
        validate_frame_args(parser().parse_args(["--input", "v", "--decode-timeout", "0"]))
    with pytest.raises(UserError, match=r"^--decode-timeout must be positive, got -1.0$"):
        validate_frame_args(parser().parse_args(["--input", "v", "--decode-timeout", "-1"]))


def test_the_jobs_wait_for_a_portable_runner_as_long_as_the_job_runs():
    """Beam gives the launcher's stream of a portable job's state (Prism, Flink, Spark) a deadline of
    --job_server_timeout, 300 s by default: a job running longer failed with DEADLINE_EXCEEDED (seen on Prism,
    bench/runners.py). The jobs lift it to a week unless told otherwise."""
    from apache_beam.options.pipeline_options import PortableOptions

    from beam_jobs.flags import JOB_SERVER_TIMEOUT_S, pipeline_options

    assert JOB_SERVER_TIMEOUT_S >= 7 * 24 * 3600
    options = pipeline_options(["--runner", "PrismRunner"])
    assert options.view_as(PortableOptions).job_server_timeout == JOB_SERVER_TIMEOUT_S
    for given in (["--job_server_timeout", "60"], ["--job_server_timeout=60"], ["--job-server-timeout", "60"]):
        assert pipeline_options(given).view_as(PortableOptions).job_server_timeout == 60


def test_the_jobs_keep_prism_from_splitting_running_bundles():
    """beam_jobs.flags.PRISM_EXPERIMENTS reach every job's options, beside the user's own experiments
    (tests/test_prism.py checks that Prism then runs the decode-and-embed stage as one bundle)."""
    from apache_beam.options.pipeline_options import DebugOptions

    from beam_jobs.flags import pipeline_options

    assert pipeline_options([]).view_as(DebugOptions).experiments == ["prism_disable_sdf_split"]
    given = pipeline_options(["--experiments", "mine", "--experiments=prism_disable_sdf_split"])
    assert given.view_as(DebugOptions).experiments == ["mine", "prism_disable_sdf_split"]


@pytest.mark.parametrize("python", ["/home/a user/venv/bin/python", "/opt/v(1)/bin/python"])
def test_multi_processing_from_a_python_path_a_shell_splits_is_one_line(monkeypatch, python):
    """Beam starts multi_processing's SDK workers through a shell with the interpreter's path unquoted: from such
    a path they die at once and the runner waits forever (a venv in a folder with a space). Refused instead."""
    import sys

    from beam_jobs.flags import pipeline_options

    multi = ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    monkeypatch.setattr(sys, "executable", python)
    with pytest.raises(UserError, match="multi_processing cannot start its workers") as refused:
        pipeline_options(multi)
    assert python in str(refused.value) and "\n" not in str(refused.value)
    pipeline_options(["--runner", "DirectRunner", "--direct_running_mode", "multi_threading"])  # no shell there
    monkeypatch.setattr(sys, "executable", "/home/user/venv/bin/python")
    pipeline_options(multi)
