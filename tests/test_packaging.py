"""Worker packaging: what `--setup_file ./setup.py` ships to Beam workers installs and runs on its own.

The sdist is built by Beam's own stager (`Stager.create_job_resources` with `--setup_file`), as DataflowRunner
and PortableRunner do at submission, from a copy of the source tree so the checkout is left untouched. It is
installed into a fresh venv with `--no-deps --no-index`; that venv sees the project venv's site-packages
through a plain `.pth` line (TensorFlow, Beam, OpenCV, without downloading them again), but not its editable
install of this project, so the jobs run from the installed copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "video", "tfrecords_schema", "model", "beam_jobs")
COMMAND_TIMEOUT_S = 120


def _copy_sources(destination: Path) -> Path:
    shutil.copytree(REPO, destination, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", "demo_output", "_work",
        ".pytest_cache", "tests"))
    return destination


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.stager import Stager

    work = tmp_path_factory.mktemp("sdist")
    source = _copy_sources(work / "source")
    staged = work / "staged"
    staged.mkdir()
    Stager.create_job_resources(PipelineOptions(["--setup_file", str(source / "setup.py")]), str(staged))
    (tarball,) = staged.glob("video-annotation-*.tar.gz")
    return tarball


def test_the_sdist_holds_every_module_and_the_pinned_requirements(sdist):
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        root = names[0].split("/")[0]
        requires = tar.extractfile(f"{root}/video_annotation.egg-info/requires.txt").read().decode()
    shipped = {n.split("/", 1)[1] for n in names if n.endswith(".py") and "/" in n}
    for package in PACKAGES:
        expected = {p.relative_to(REPO).as_posix() for p in (REPO / package).glob("*.py")}
        assert expected and expected <= shipped, f"missing from the sdist: {sorted(expected - shipped)}"
    assert not [n for n in shipped if n.startswith(("tests/", "bench/", "tools/"))]
    runtime = requires.split("\n\n")[0].split()
    setup_py = (REPO / "setup.py").read_text()
    for requirement in runtime:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.]*", requirement), requirement
        assert f'"{requirement}"' in setup_py
    assert {r.split("==")[0].split("[")[0] for r in runtime} >= {
        "tensorflow", "keras", "apache-beam", "opencv-python-headless", "numpy", "google-cloud-storage"}


@pytest.fixture(scope="module")
def fresh_venv(sdist, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=COMMAND_TIMEOUT_S)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # A plain path line: the project venv's packages become importable, its .pth files (the editable install
    # of this project) are not run.
    Path(site, "_project_venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--no-build-isolation", "--disable-pip-version-check", str(sdist)],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return venv


def _run_installed(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    done = subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("job, flags", [
    ("beam_jobs.featurize", ("--input", "--output", "--weights", "--max-seq-length", "--num-shards")),
    ("beam_jobs.predict", ("--input", "--features", "--model", "--output", "--large-model")),
])
def test_the_jobs_help_works_from_the_installed_package(fresh_venv, tmp_path, job, flags):
    # One interpreter: say where the package comes from, then run the job as `python -m job --help` does.
    code = ("import runpy, sys, beam_jobs, model, tfrecords_schema as t; "
            "print(beam_jobs.__file__, model.__file__, t.__file__); "
            f"sys.argv = ['{job}', '--help']; runpy.run_module('{job}', run_name='__main__', alter_sys=True)")
    first, _, text = _run_installed(fresh_venv, "-c", code, cwd=tmp_path).stdout.partition("\n")
    for path in first.split():
        assert Path(path).resolve().is_relative_to(fresh_venv.resolve()), f"{path} is not the installed copy"
    assert len(first.split()) == 3
    assert text.startswith(f"usage: python -m {job}")
    for flag in flags:
        assert flag in text
    assert "examples:" in text and "--runner DataflowRunner" in text and "--setup_file ./setup.py" in text
