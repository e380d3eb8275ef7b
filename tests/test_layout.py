"""The rooms of the code and which may import which: data flows one way,
videos -> frames -> features -> records -> classifier -> labels (see README's Layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = ("common", "video", "tfrecords_schema", "model", "beam_jobs", "tools", "bench")
# What each product room may import of this project (itself always).
ALLOWED = {
    "common": set(),
    "video": {"common"},
    "tfrecords_schema": set(),
    "model": {"common", "video", "tfrecords_schema"},
    "beam_jobs": {"common", "video", "tfrecords_schema", "model"},
    # tools/ sits above the product, as bench/ does: the review screenshot runs the labelling job to show it.
    "tools": {"common", "video", "tfrecords_schema", "model", "beam_jobs"},
}


def project_imports(path: Path) -> set[str]:
    """The project packages a module imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in PROJECT)
    return found


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_rooms_import_only_the_rooms_below_them(room):
    modules = sorted((REPO / room).glob("*.py"))
    assert modules, f"{room}/ has no modules"
    wrong = {m.name: sorted(project_imports(m) - ALLOWED[room] - {room}) for m in modules}
    assert not {name: rooms for name, rooms in wrong.items() if rooms}


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from beam_jobs import predict\n    import model.export\n")
    assert project_imports(module) == {"beam_jobs", "model"}


def test_no_module_quiets_tensorflow_at_import():
    """Quieting TensorFlow redirects stderr: it belongs in `__main__` blocks, never at import time."""
    offenders = []
    for room in ALLOWED:
        for module in (REPO / room).glob("*.py"):
            tree = ast.parse(module.read_text())
            for node in tree.body:  # top-level statements only; `if __name__ == "__main__":` is an If
                calls = [n for n in ast.walk(node) if isinstance(n, ast.Call)] if not isinstance(node, (
                    ast.If, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) else []
                if any(getattr(c.func, "id", getattr(c.func, "attr", "")) == "quiet_tensorflow" for c in calls):
                    offenders.append(module.relative_to(REPO).as_posix())
    assert offenders == []


def test_the_commands_load_tensorflow_only_once_they_run():
    """`python -m` runs a command module's top level before its `__main__` block quiets TensorFlow, so no
    command module may import TensorFlow (or Keras) at its top level; `--help` stays instant too."""
    import subprocess
    import sys

    commands = ("beam_jobs.featurize", "beam_jobs.predict", "model.train", "model.evaluate", "model.preview")
    code = (f"import sys; import {', '.join(commands)}; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
