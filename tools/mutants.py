"""Mutation testing (`make mutants`): mutmut mutates the modules that guard users' data and results, one
module at a time, and runs that module's own tests against each mutant; a mutant no test fails on survived.

    python -m tools.mutants                      # every module of MODULES, one after the other
    python -m tools.mutants video/frames.py      # one module
    python -m tools.mutants --survivors video/frames.py   # its last run's survivors, against the tests as they are now

mutmut reads its settings from the `[mutmut]` section of setup.cfg in the folder it runs in, and mutates
`mutants/` there. Each module therefore runs in a scratch copy of the checkout, build/mutants/<module>/, whose
setup.cfg names the module and its tests (MODULES); the checkout's own setup.cfg and pytest settings stay as
they are. A run prints, per module, the mutants killed, survived, timed out and otherwise, and each
survivor's diff, and writes build/mutants/<module>/summary.json. docs/TESTING.md keeps the results and why
each survivor may stay.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRATCH = REPO / "build" / "mutants"
# Each module and the test files that are its own (the ones that run in minutes, not the whole suite), as
# pytest arguments. The isolated decoder's test is video/isolated.py's: its spawned child imports the module
# outside mutmut's switchboard.
MODULES = {
    "tfrecords_schema/schema.py": ["tests/test_schema.py"],
    "video/frames.py": ["tests/test_frames.py", "--deselect",
                        "tests/test_frames.py::test_isolated_decoder_matches_in_process_decoding_and_times_out"],
    "common/publish.py": ["tests/test_publish.py", "tests/test_publish_marks.py", "tests/test_publish_retries.py"],
    "common/lease.py": ["tests/test_lease.py", "tests/test_lease_stores.py"],
    # Issue 35's re-plan: the launcher's plan (which videos a re-run carries over, reads again, removes) and
    # publishing's carry-over, each with its lean tests; test_plan.py's end-to-end re-runs (predict pipelines,
    # minutes a mutant) stay out.
    "beam_jobs/incremental.py": ["tests/test_incremental.py"],
    "beam_jobs/plan.py": ["tests/test_incremental.py", "tests/test_plan_steps.py"],
    "beam_jobs/carry.py": ["tests/test_carry.py"],
    "common/sorting.py": ["tests/test_sorting.py"],
    # test_predict's pipeline-building test only constructs FinishPredict (half a minute building a model).
    "beam_jobs/publish_labels.py": ["tests/test_publish_labels.py", "tests/test_predict.py", "--deselect",
                                    "tests/test_predict.py::test_publishing_takes_every_output_it_publishes_as_an_input",
                                    "tests/test_publish_retries.py"],
}
# What the scratch copy holds: the packages (all of them, so every import finds the checkout's code), the
# tests and what they use.
PACKAGES = ["common", "tfrecords_schema", "video", "model", "beam_jobs"]
ALSO_COPY = ["tools", "setup.py", "pytest.ini"]
STATUSES = ("killed", "survived", "timeout", "suspicious", "no tests", "skipped", "segfault", "check was interrupted by user")


def scratch_copy(module: str, deselect: list[str]) -> Path:
    """A fresh copy of the checkout's files (tracked, and untracked ones git does not ignore) for `module`."""
    folder = SCRATCH / module.replace("/", "_").removesuffix(".py")
    shutil.rmtree(folder, ignore_errors=True)
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() and name.split("/")[0] in (*PACKAGES, *ALSO_COPY, "tests"):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    write_settings(folder, module, deselect)
    return folder


def write_settings(folder: Path, module: str, deselect: list[str]) -> None:
    """mutmut's settings for `module` in its scratch copy: what to mutate, and the tests to run (MODULES)."""
    lines = ["[mutmut]", "source_paths =", *(f"    {p}/" for p in PACKAGES), f"only_mutate = {module}",
             "also_copy =", *(f"    {p}" for p in ALSO_COPY),
             "pytest_add_cli_args_test_selection =", *(f"    {t}" for t in MODULES[module]),
             *(f"    --deselect\n    {test}" for test in deselect if test.split("::")[0] in MODULES[module]),
             "pytest_add_cli_args =", "    -p", "    no:cacheprovider",
             # Tests decode and train: a mutant that makes one slower than this is a timeout, not a hang.
             "timeout_multiplier = 5.0", "timeout_constant = 30.0",
             # Forked from a process that ran TensorFlow and PyAV, a mutant's worker can inherit a lock another
             # thread held and wait forever (a timeout that says nothing of the mutant): fork from a clean one.
             "process_isolation = forkserver"]
    (folder / "setup.cfg").write_text("\n".join(lines) + "\n")


def mutmut(folder: Path, *args: str, log: Path | None = None) -> str:
    """mutmut's output (also written to `log` as it comes, when given)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the copy, not the checkout
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log or os.devnull, "w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "mutmut", *args], cwd=folder, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = []
        for line in process.stdout:
            lines.append(line)
            sink.write(line)
            sink.flush()
    output = "".join(lines)
    if process.wait() != 0 and log is None:
        raise SystemExit(f"mutmut {' '.join(args)} failed in {folder} ({process.returncode}):\n{output[-5000:]}")
    return output


def run_module(module: str, max_children: int, deselect: list[str]) -> dict:
    folder = scratch_copy(module, deselect)
    print(f"== {module}: mutmut run against {' '.join(MODULES[module])}", flush=True)
    log = mutmut(folder, "run", "--max-children", str(max_children), log=folder / "run.log")
    if "failed to collect stats" in log or "Stopping early" in log:
        raise SystemExit(f"mutmut could not run {module}'s tests; its log is {folder / 'run.log'}:\n{log[-3000:]}")
    return results(module, folder)


def rerun_survivors(module: str, max_children: int, deselect: list[str]) -> dict:
    """The mutants the last run of `module` did not kill, run again against the checkout's tests as they are now
    (copied into its scratch copy; the product code stays as that run mutated it)."""
    folder = SCRATCH / module.replace("/", "_").removesuffix(".py")
    try:
        names = list(json.loads((folder / "summary.json").read_text())["not_killed"])
    except FileNotFoundError:
        raise SystemExit(f"{module} has no earlier run to take the survivors of ({folder / 'summary.json'})")
    settings = (folder / "setup.cfg").read_text()
    write_settings(folder, module, deselect)
    if (folder / "setup.cfg").read_text() != settings:  # mutmut would forget every verdict of the last run
        (folder / "setup.cfg").write_text(settings)
        raise SystemExit(f"{module}'s tests (MODULES, --deselect) changed since its last run: run it in full")
    shutil.copy2(folder / "summary.json", folder / "summary.before-survivors.json")
    for test in (REPO / "tests").iterdir():
        if test.is_file():
            for where in (folder / "tests", folder / "mutants" / "tests"):
                shutil.copy2(test, where / test.name)
    print(f"== {module}: its {len(names)} survivors run again against {' '.join(MODULES[module])}", flush=True)
    if names:
        log = mutmut(folder, "run", "--max-children", str(max_children), *names, log=folder / "rerun.log")
        if "failed to collect stats" in log or "Stopping early" in log:
            raise SystemExit(f"mutmut could not run {module}'s tests; its log is {folder / 'rerun.log'}:\n{log[-3000:]}")
    return results(module, folder)


def results(module: str, folder: Path) -> dict:
    statuses = {}
    for line in mutmut(folder, "results", "--all", "true").splitlines():
        if match := re.fullmatch(r"\s*(\S+): (.+)", line):
            statuses[match.group(1)] = match.group(2).strip()
    if not statuses:
        raise SystemExit(f"mutmut made no mutants of {module}; its log is {folder / 'run.log'}")
    counts = {status: sum(s == status for s in statuses.values()) for status in STATUSES}
    survivors = {name: mutmut(folder, "show", name) for name, s in statuses.items() if s != "killed"}
    summary = {"module": module, "tests": MODULES[module], "mutants": len(statuses),
               "counts": {k: v for k, v in counts.items() if v},
               "killed_share": round(counts["killed"] / len(statuses), 3), "not_killed": survivors}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"modules to mutate (default: all of {', '.join(MODULES)})")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default: 2)")
    parser.add_argument("--survivors", action="store_true",
                        help="run only the mutants the last run of each module did not kill, against the tests as "
                             "they are now (after adding tests for them)")
    parser.add_argument("--deselect", action="append", default=[], metavar="NODEID",
                        help="a test to leave out (one that fails without a mutant: mutmut needs them all to pass)")
    args = parser.parse_args(argv)
    if unknown := [m for m in args.modules if m not in MODULES]:
        parser.error(f"not a module of MODULES: {', '.join(unknown)}")
    summaries, failed = [], []
    for module in args.modules or MODULES:
        try:
            summaries.append(rerun_survivors(module, args.max_children, args.deselect) if args.survivors
                             else run_module(module, args.max_children, args.deselect))
        except SystemExit as exc:  # one module's tests not passing as they are: say so, go on with the others
            print(exc, file=sys.stderr, flush=True)
            failed.append(module)
    for s in summaries:
        for name, diff in s["not_killed"].items():
            print(diff if diff.startswith("#") else f"# {name}\n{diff}")
    print(f"\n{'module':32} {'mutants':>7} {'killed':>7} {'survived':>8} {'timeout':>7}  killed share")
    for s in summaries:
        c = s["counts"]
        print(f"{s['module']:32} {s['mutants']:7} {c.get('killed', 0):7} {c.get('survived', 0):8} "
              f"{c.get('timeout', 0):7}  {s['killed_share']:.1%}")
    for module in failed:
        print(f"{module:32} not measured: its tests fail without a mutant (see above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
