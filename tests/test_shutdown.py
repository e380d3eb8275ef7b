"""common.shutdown: a process's objects are frozen as it exits, so that Python's finalisation does not collect
every object Beam made (0.25-0.35 s of each command's and SDK worker's exit). Who asks for it: every command
(common.cli.main) and the DoFns every video job's workers run (decoding, embedding)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# An exit handler registered first runs last: it sees whether the objects were frozen by then.
_REPORT = ("import atexit, gc, sys\n"
           "atexit.register(lambda: sys.stderr.write(f'frozen at exit: {gc.get_freeze_count() > 0}\\n'))\n")


def _frozen_at_exit(code: str) -> bool:
    done = subprocess.run([sys.executable, "-c", _REPORT + code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return "frozen at exit: True" in done.stderr.splitlines()


def test_nothing_is_frozen_unless_asked():
    assert not _frozen_at_exit("import common.shutdown")


def test_freeze_at_exit_freezes_as_the_process_exits_not_before():
    assert _frozen_at_exit("import gc\n"
                           "from common.shutdown import freeze_at_exit\n"
                           "freeze_at_exit(); freeze_at_exit()\n"
                           "assert gc.get_freeze_count() == 0  # the process goes on collecting until it exits\n")


def test_every_command_asks_for_it():
    assert _frozen_at_exit("from common.cli import main\n"
                           "assert main(lambda argv: None, []) == 0\n")


@pytest.mark.parametrize("dofn", [
    "from beam_jobs.decode import DecodeFramesDoFn, FrameOptions\n"
    "dofn = DecodeFramesDoFn(FrameOptions(4, 32, decode_timeout_s=60))\n",
    "from beam_jobs.embed import EmbedFramesDoFn\n"
    "dofn = EmbedFramesDoFn('random', image_size=32)\n",
], ids=["decoding", "embedding"])
def test_the_workers_video_dofns_ask_for_it(dofn):
    assert _frozen_at_exit(dofn + "dofn.setup()\n"
                                  "dofn.teardown()\n")
